import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite(
    "Secrets at rest in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct SecrecyTests {
    @Test("no table or view of the schema returns an API key or a BYOK key in clear")
    func nothingInClear() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1000)
        let byok = "sk-own-" + APIKey.generate().dropFirst(3)
        _ = try AdminStore(connection: connection).setBYOKKey(for: user, key: byok, secret: "a-secret")
        let metering = try TestDatabase.metering(secret: "a-secret")
        let request = generationRequest(key: key)
        let ticket = try #require(metering.admit(request).ticket)
        #expect(ticket.upstreamKey == byok)
        metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 1, outputTokens: 1)))

        let relations = try connection.execute(
            """
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'tollgate' AND c.relkind IN ('r', 'v', 'm') ORDER BY 1
            """)
        #expect(relations.rows.count >= 12)
        let needles = [key, byok, SHA256.hex(Array(byok.utf8)), SHA256.hex(Array(key.utf8)).uppercased()]
        for relation in relations.rows.compactMap(\.first).compactMap({ $0 }) {
            let dump = try connection.execute(
                "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM tollgate.\(relation) t")
            let text = try #require(dump.scalar)
            for needle in needles {
                #expect(!text.contains(needle), "\(relation) holds a secret in clear")
            }
        }
        let stored = try connection.execute(
            "SELECT encode(k.key_hash, 'hex') AS hash, k.prefix FROM tollgate.api_keys k JOIN tollgate.users u "
                + "ON u.id = k.user_id WHERE u.name = $1", parameters: [user])
        #expect(stored.value("hash") == SHA256.hex(SHA256.hash(key)))
        #expect(stored.value("prefix") == APIKey.prefix(of: key))
    }

    /// Hex of the UTF-8 bytes, as a bytea column would print a key stored unencrypted.
    @Test("a BYOK key is stored as PGP ciphertext, not as its bytes")
    func ciphertext() throws {
        let connection = try TestDatabase.migrated()
        let (user, _) = try TestDatabase.userWithKey(connection)
        let byok = "sk-own-" + APIKey.generate().dropFirst(3)
        _ = try AdminStore(connection: connection).setBYOKKey(for: user, key: byok, secret: "a-secret")

        let hex = try TestDatabase.scalar(
            connection,
            "SELECT encode(b.ciphertext, 'hex') FROM tollgate.byok_keys b JOIN tollgate.users u ON u.id = b.user_id "
                + "WHERE u.name = $1", [user])
        let plainHex = SHA256.hex(Array(byok.utf8))
        #expect(try #require(hex).contains(plainHex) == false)
        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT hint FROM tollgate.byok_keys b JOIN tollgate.users u ON u.id = b.user_id "
                    + "WHERE u.name = $1", [user]) == String(byok.suffix(4)))
    }
}
