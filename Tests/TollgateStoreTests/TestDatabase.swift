import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

#if canImport(Glibc)
    import Glibc
#endif

/// The PostgreSQL the integration suites run against: TOLLGATE_TEST_DATABASE_URL (a libpq
/// connection string). When it is unset, those suites are disabled and say why.
enum TestDatabase {
    static let url: String? = {
        guard let value = getenv("TOLLGATE_TEST_DATABASE_URL") else { return nil }
        let text = String(cString: value)
        return text.isEmpty ? nil : text
    }()

    static var isConfigured: Bool { url != nil }

    static let disabledReason: Comment =
        "TOLLGATE_TEST_DATABASE_URL is not set: start PostgreSQL and set it to run the store integration tests"

    /// The repository's sql/ directory.
    static let sqlDirectory: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]) }
        return path + "/sql"
    }()

    /// A new connection to the test database, with its schema migrated (every test calls this,
    /// so concurrent tests also exercise concurrent migrators).
    static func migrated() throws -> PostgresConnection {
        let connection = try PostgresConnection(conninfo: try #require(url))
        try Migrator(connection: connection).migrate(Migration.load(directory: sqlDirectory))
        return connection
    }

    /// A name no other test, run or earlier run uses.
    static func uniqueName(_ prefix: String) -> String {
        var generator = SystemRandomNumberGenerator()
        return "\(prefix)-\(String(generator.next() as UInt64, radix: 36))"
    }

    /// Metering against the test database, as a worker with a fresh id.
    static func metering(
        authMode: AuthMode = .bearer, secret: String? = nil, poolSize: Int = 4, workerID: String? = nil
    ) throws -> PostgresMetering {
        var settings = MeteringSettings(databaseURL: try #require(url), platformKey: "sk-platform-test")
        settings.authMode = authMode
        settings.secret = secret
        settings.poolSize = poolSize
        settings.workerID = workerID ?? uniqueName("test-host") + ":1"
        return PostgresMetering(settings: settings)
    }

    /// A user with one API key (and a quota when given); returns the name and the key.
    static func userWithKey(
        _ connection: PostgresConnection, quota: Int? = nil, period: QuotaPeriod = .day
    ) throws -> (name: String, key: String) {
        let store = AdminStore(connection: connection)
        let name = uniqueName("user")
        _ = try store.addUser(name, quota: quota.map { ($0, period) })
        return (name, try store.issueKey(for: name).key)
    }

    /// One scalar of a query, for checks.
    static func scalar(_ connection: PostgresConnection, _ sql: String, _ parameters: [String?] = []) throws -> String?
    {
        try connection.execute(sql, parameters: parameters).scalar
    }

    /// How many of `settlements` have their ledger row, as text.
    static func ledgerRows(_ connection: PostgresConnection, _ settlements: [Settlement]) throws -> String? {
        try scalar(
            connection, "SELECT count(*) FROM tollgate.ledger WHERE request_id = ANY($1::uuid[])",
            [PostgresArray.literal(settlements.map(\.requestID))])
    }

    /// Reservations of `user`, as "tokens/period_start or -" in order of tokens.
    static func reservations(_ connection: PostgresConnection, user: String) throws -> [String] {
        try connection.execute(
            """
            SELECT r.tokens || '/' || coalesce(r.period_start::text, '-') FROM tollgate.reservations r
            JOIN tollgate.users u ON u.id = r.user_id WHERE u.name = $1 ORDER BY r.tokens
            """, parameters: [user]
        ).rows.map { $0.first.flatMap { $0 } ?? "" }
    }

    /// used_tokens and reserved_tokens of a user's current counter (0, 0 when there is none).
    static func counters(_ connection: PostgresConnection, user: String) throws -> (used: Int, reserved: Int) {
        let result = try connection.execute(
            """
            SELECT used, reserved FROM tollgate.quota_standing WHERE user_name = $1
            """, parameters: [user])
        return (result.integer("used") ?? 0, result.integer("reserved") ?? 0)
    }
}

/// A generation request as the proxy would hand it to admission.
func generationRequest(
    key: String? = nil, headers: [String: String] = [:], reserve: Int = 100, estimatedInput: Int = 40,
    model: String = "gpt-test", stream: Bool = false
) -> AdmissionRequest {
    var allHeaders = headers
    if let key { allHeaders["authorization"] = "Bearer \(key)" }
    let id = RequestID.make()
    let client = ProxyRequest(id: id, method: "POST", path: "/v1/chat/completions", headers: allHeaders)
    return AdmissionRequest(
        requestID: id, api: .chatCompletions, model: model, stream: stream, reservedTokens: reserve,
        estimatedInputTokens: estimatedInput, client: client)
}

/// The settlement of an admitted request that completed with `usage`.
func completedSettlement(_ request: AdmissionRequest, _ ticket: AdmissionTicket, usage: Usage) -> Settlement {
    Settlement(
        requestID: request.requestID, ticket: ticket, api: request.api, model: request.model, stream: request.stream,
        outcome: .completed, status: 200, usage: usage, usageIsEstimated: false,
        startedAtMicroseconds: WallClock.nowMicroseconds(), timeToFirstByte: .milliseconds(12),
        duration: .milliseconds(34))
}

extension Admission {
    var ticket: AdmissionTicket? {
        guard case .admitted(let ticket) = self else { return nil }
        return ticket
    }

    var error: OpenAIError? {
        guard case .rejected(let error) = self else { return nil }
        return error
    }
}
