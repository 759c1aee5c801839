import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite(
    "BYOK keys in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct BYOKTests {
    static let secret = "test-secret-of-the-gateway"

    private func byokUser(_ connection: PostgresConnection) throws -> (name: String, key: String, byok: String) {
        let (name, key) = try TestDatabase.userWithKey(connection, quota: 100)
        let byok = "sk-own-" + APIKey.generate().dropFirst(3)
        #expect(
            try AdminStore(connection: connection).setBYOKKey(for: name, key: byok, secret: Self.secret)
                == String(byok.suffix(4)))
        return (name, key, byok)
    }

    @Test("a BYOK user is served with their decrypted key, without reservation or quota")
    func admitted() throws {
        let connection = try TestDatabase.migrated()
        let (name, key, byok) = try byokUser(connection)
        let metering = try TestDatabase.metering(secret: Self.secret)
        // Far above the quota of 100: BYOK usage is recorded, not limited.
        let request = generationRequest(key: key, reserve: 50_000)

        let ticket = try #require(metering.admit(request).ticket)

        #expect(ticket.upstreamKey == byok)
        #expect(ticket.keySource == .byok)
        #expect(ticket.reservedTokens == 0)
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.reservations WHERE request_id = $1", [request.requestID])
                == "0")
        metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 900, outputTokens: 100)))
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT key_source FROM tollgate.ledger WHERE request_id = $1", [request.requestID])
                == "byok")
        #expect(try TestDatabase.counters(connection, user: name) == (used: 0, reserved: 0))
        #expect(metering.admitListing(from: request.client).ticket?.upstreamKey == byok)
    }

    @Test("without TOLLGATE_SECRET, or with the wrong one, a BYOK user gets a 500 and nothing leaks")
    func secretMissingOrWrong() throws {
        let connection = try TestDatabase.migrated()
        let (_, key, byok) = try byokUser(connection)

        for secret in [nil, "not-the-secret"] {
            let error = try #require(try TestDatabase.metering(secret: secret).admit(generationRequest(key: key)).error)
            #expect(error.status == 500)
            #expect(error.code == "byok_unavailable")
            #expect(!String(decoding: error.body(), as: UTF8.self).contains(byok))
        }
    }

    @Test("clearing the BYOK key puts the user back on the platform key and quota")
    func cleared() throws {
        let connection = try TestDatabase.migrated()
        let (name, key, _) = try byokUser(connection)
        #expect(try AdminStore(connection: connection).clearBYOKKey(for: name))
        #expect(try AdminStore(connection: connection).clearBYOKKey(for: name) == false)

        let ticket = try #require(try TestDatabase.metering().admit(generationRequest(key: key, reserve: 60)).ticket)

        #expect(ticket.keySource == .platform)
        #expect(ticket.upstreamKey == "sk-platform-test")
        #expect(try TestDatabase.counters(connection, user: name) == (used: 0, reserved: 60))
    }
}
