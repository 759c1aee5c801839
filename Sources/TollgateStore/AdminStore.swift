/// The operations behind the admin commands (`tollgate user …`, `key …`, `byok …`, `usage`), on
/// one connection of the operator's. Every call is one statement or one transaction.
///
/// API keys are generated here and returned once; only their SHA-256 and prefix are stored. A
/// BYOK key is encrypted by the database (pgcrypto) before it is stored, and never read back.
public struct AdminStore {
    let connection: PostgresConnection

    public init(connection: PostgresConnection) {
        self.connection = connection
    }

    /// A key as issued: `key` is shown to the operator once and never stored.
    public struct IssuedKey: Sendable {
        public let id: Int
        public let key: String
        public let prefix: String
    }

    /// Creates a user, with a quota when given (both or neither); returns the user id.
    public func addUser(_ name: String, quota: (tokens: Int, period: QuotaPeriod)? = nil) throws(StoreError) -> Int {
        try connection.transaction { () throws(StoreError) -> Int in
            let result: QueryResult
            do throws(StoreError) {
                result = try connection.execute(
                    "INSERT INTO tollgate.users (name) VALUES ($1) RETURNING id", parameters: [name])
            } catch let error where error.sqlState == "23505" {
                throw StoreError(.conflict, "a user named '\(name)' already exists")
            }
            if let quota { try setQuota(name, tokens: quota.tokens, period: quota.period) }
            guard let id = result.integer("id") else { throw StoreError(.unexpectedResult, "no user id returned") }
            return id
        }
    }

    /// Sets (or replaces) a user's quota; a nil period keeps the current one (`month` for a user
    /// without a quota). A quota new in the current period starts from what the ledger already
    /// holds for it.
    public func setQuota(_ name: String, tokens: Int, period: QuotaPeriod?) throws(StoreError) {
        let current = try connection.execute(
            "SELECT q.period FROM tollgate.quotas q JOIN tollgate.users u ON u.id = q.user_id WHERE u.name = $1",
            parameters: [name])
        let chosen = period?.rawValue ?? current.value("period") ?? QuotaPeriod.month.rawValue
        do throws(StoreError) {
            _ = try connection.execute(
                "SELECT tollgate.set_quota($1, $2::bigint, $3)", parameters: [name, String(tokens), chosen])
        } catch let error where error.sqlState == "P0002" {
            throw Self.noUser(name)
        }
    }

    /// Removes a user's quota: they become unlimited (and still metered). False when they had none.
    public func removeQuota(_ name: String) throws(StoreError) -> Bool {
        let result = try connection.execute(
            "DELETE FROM tollgate.quotas q USING tollgate.users u WHERE q.user_id = u.id AND u.name = $1",
            parameters: [name])
        if result.affectedRows == 0 {
            try requireUser(name)
            return false
        }
        return true
    }

    /// Disables a user: their keys stop working at once. False when they already were disabled.
    public func disableUser(_ name: String) throws(StoreError) -> Bool {
        let result = try connection.execute(
            "UPDATE tollgate.users SET disabled_at = now() WHERE name = $1 AND disabled_at IS NULL", parameters: [name])
        if result.affectedRows == 0 {
            try requireUser(name)
            return false
        }
        return true
    }

    /// Issues a new API key for a user.
    public func issueKey(for name: String) throws(StoreError) -> IssuedKey {
        let key = APIKey.generate()
        let prefix = APIKey.prefix(of: key)
        let result = try connection.execute(
            """
            INSERT INTO tollgate.api_keys (user_id, key_hash, prefix)
            SELECT id, $2::bytea, $3 FROM tollgate.users WHERE name = $1 RETURNING id
            """,
            parameters: [name, APIKey.byteaLiteral(APIKey.hash(key)), prefix])
        guard let id = result.integer("id") else { throw Self.noUser(name) }
        return IssuedKey(id: id, key: key, prefix: prefix)
    }

    /// Revokes a key by id. False when it already was revoked.
    public func revokeKey(id: Int) throws(StoreError) -> Bool {
        let result = try connection.execute(
            "UPDATE tollgate.api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            parameters: [String(id)])
        guard result.affectedRows == 0 else { return true }
        let known = try connection.execute("SELECT 1 FROM tollgate.api_keys WHERE id = $1", parameters: [String(id)])
        guard !known.rows.isEmpty else { throw StoreError(.notFound, "no API key with id \(id)") }
        return false
    }

    /// Stores (or replaces) a user's own provider key, encrypted under `secret`; returns its hint
    /// (the last 4 characters), the only part ever shown again.
    public func setBYOKKey(for name: String, key: String, secret: String) throws(StoreError) -> String {
        let hint = String(key.suffix(4))
        let result = try connection.execute(
            """
            INSERT INTO tollgate.byok_keys (user_id, ciphertext, hint)
            SELECT id, tollgate.byok_encrypt($2, $3), $4 FROM tollgate.users WHERE name = $1
            ON CONFLICT (user_id) DO UPDATE
                SET ciphertext = excluded.ciphertext, hint = excluded.hint, updated_at = now()
            """,
            parameters: [name, key, secret, hint])
        guard result.affectedRows == 1 else { throw Self.noUser(name) }
        return hint
    }

    /// Removes a user's BYOK key: their requests use the platform key again. False when there was none.
    public func clearBYOKKey(for name: String) throws(StoreError) -> Bool {
        let result = try connection.execute(
            "DELETE FROM tollgate.byok_keys b USING tollgate.users u WHERE b.user_id = u.id AND u.name = $1",
            parameters: [name])
        if result.affectedRows == 0 {
            try requireUser(name)
            return false
        }
        return true
    }

    func requireUser(_ name: String) throws(StoreError) {
        let found = try connection.execute("SELECT 1 FROM tollgate.users WHERE name = $1", parameters: [name])
        guard !found.rows.isEmpty else { throw Self.noUser(name) }
    }

    static func noUser(_ name: String) -> StoreError {
        StoreError(.notFound, "no user named '\(name)'")
    }
}
