import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite(
    "Admission and settlement in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct AdmissionTests {
    @Test("an admitted request settles into exactly one ledger row, and the counters follow")
    func admitAndSettle() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try TestDatabase.metering()
        let request = generationRequest(key: key, reserve: 300, estimatedInput: 40)

        let ticket = try #require(metering.admit(request).ticket)
        #expect(ticket.upstreamKey == "sk-platform-test")
        #expect(ticket.keySource == .platform)
        #expect(ticket.reservedTokens == 300)
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 300))
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT tokens || '/' || worker_id FROM tollgate.reservations WHERE request_id = $1",
                [request.requestID]) == "300/\(metering.settings.workerID)")

        metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 42, outputTokens: 58)))

        let row = try connection.execute(
            "SELECT * FROM tollgate.ledger WHERE request_id = $1", parameters: [request.requestID])
        #expect(row.rows.count == 1)
        #expect(row.value("user_id") == ticket.userID)
        #expect(row.value("key_id") == ticket.keyID)
        #expect(row.value("endpoint") == "chat.completions")
        #expect(row.value("outcome") == "completed")
        #expect(row.value("key_source") == "platform")
        #expect(row.integer("total_tokens") == 100)
        #expect(row.value("usage_source") == "reported")
        #expect(row.value("ttfb_ms") == "12")
        #expect(try TestDatabase.counters(connection, user: user) == (used: 100, reserved: 0))
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.reservations WHERE request_id = $1", [request.requestID])
                == "0")
    }

    @Test("a settlement retried does not count twice")
    func settleTwice() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000, period: .month)
        let metering = try TestDatabase.metering()
        let request = generationRequest(key: key, reserve: 200)
        let ticket = try #require(metering.admit(request).ticket)
        let settlement = completedSettlement(request, ticket, usage: Usage(inputTokens: 30, outputTokens: 20))

        metering.settle(settlement)
        metering.settle(settlement)

        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.ledger WHERE request_id = $1",
                [request.requestID]) == "1")
        #expect(try TestDatabase.counters(connection, user: user) == (used: 50, reserved: 0))
    }

    @Test("a request that does not fit the quota is refused with the standing, and nothing is reserved")
    func insufficientQuota() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1000)
        let metering = try TestDatabase.metering()
        #expect(metering.admit(generationRequest(key: key, reserve: 700)).ticket != nil)

        let refused = generationRequest(key: key, reserve: 400)
        let error = try #require(metering.admit(refused).error)

        #expect(error.status == 429)
        #expect(error.code == "insufficient_quota")
        #expect(error.headers.contains { $0 == ("x-tollgate-quota-remaining", "300") })
        #expect(error.headers.contains { $0 == ("x-tollgate-quota-limit", "1000") })
        let reset = try #require(error.headers.first { $0.0 == "x-tollgate-quota-reset" }?.1)
        #expect(reset.hasSuffix("T00:00:00Z"))
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 700))
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.reservations WHERE request_id = $1", [refused.requestID])
                == "0")
    }

    @Test("a user without a quota is admitted without limit and still metered")
    func unlimited() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection)
        let metering = try TestDatabase.metering()
        let request = generationRequest(key: key, reserve: 5_000_000)

        let ticket = try #require(metering.admit(request).ticket)
        #expect(ticket.reservedTokens == 0)
        metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 3, outputTokens: 4)))

        let totals = try AdminStore(connection: connection).usage(user: user)
        #expect(totals.map(\.totalTokens) == [7])
        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT count(*) FROM tollgate.usage_counters c JOIN tollgate.users u ON u.id = c.user_id "
                    + "WHERE u.name = $1",
                [user]) == "0")
    }

    @Test("header mode admits a user by name, and refuses unknown names")
    func headerMode() throws {
        let connection = try TestDatabase.migrated()
        let (user, _) = try TestDatabase.userWithKey(connection, quota: 500)
        let metering = try TestDatabase.metering(authMode: .header)

        let ticket = try #require(
            metering.admit(generationRequest(headers: ["x-tollgate-user": user], reserve: 100)).ticket)
        #expect(ticket.keyID == nil)
        #expect(ticket.userID != nil)
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 100))

        let unknown = metering.admit(generationRequest(headers: ["x-tollgate-user": TestDatabase.uniqueName("nobody")]))
        #expect(unknown.error?.status == 401)
        #expect(metering.admit(generationRequest(headers: [:])).error?.status == 401)
    }

    @Test("listing models authenticates but reserves nothing")
    func listing() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 500)
        let metering = try TestDatabase.metering()
        let client = generationRequest(key: key).client

        let ticket = try #require(metering.admitListing(from: client).ticket)

        #expect(ticket.upstreamKey == "sk-platform-test")
        #expect(ticket.reservedTokens == 0)
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 0))
        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT last_used_at IS NOT NULL FROM tollgate.api_keys k JOIN tollgate.users u ON u.id = k.user_id "
                    + "WHERE u.name = $1", [user]) == "t")
    }
}
