import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// tollgate.settle for requests admitted without a reservation (sql/004).
@Suite(
    "Settlements without a reservation in PostgreSQL",
    .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason), .timeLimit(.minutes(1)))
struct OutageSettlementTests {
    /// A settlement for `user` that no admission reserved anything for, started `daysAgo` days ago.
    private func unreserved(
        _ connection: PostgresConnection, user: String, total: Int, keySource: KeySource = .platform, daysAgo: Int = 0
    ) throws -> Settlement {
        let userID = try #require(
            try TestDatabase.scalar(connection, "SELECT id FROM tollgate.users WHERE name = $1", [user]))
        let ticket = AdmissionTicket(upstreamKey: "", keySource: keySource, userID: userID)
        return Settlement(
            requestID: RequestID.make(), ticket: ticket, api: .responses, model: "gpt-test", stream: false,
            outcome: .completed, status: 200, usage: Usage(inputTokens: total - 5, outputTokens: 5),
            usageIsEstimated: false,
            startedAtMicroseconds: WallClock.nowMicroseconds() - Int64(daysAgo) * 86_400_000_000,
            timeToFirstByte: nil, duration: .milliseconds(20))
    }

    private func used(_ connection: PostgresConnection, user: String, daysAgo: Int) throws -> String? {
        try TestDatabase.scalar(
            connection,
            """
            SELECT c.used_tokens FROM tollgate.usage_counters c JOIN tollgate.users u ON u.id = c.user_id
            WHERE u.name = $1 AND c.period_start = (now() AT TIME ZONE 'UTC')::date - $2::integer
            """, [user, String(daysAgo)])
    }

    @Test("a platform settlement without a reservation adds its usage to the user's counter, once")
    func counted() throws {
        let connection = try TestDatabase.migrated()
        let (user, _) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try TestDatabase.metering()
        let settlement = try unreserved(connection, user: user, total: 120)

        metering.settle(settlement)
        metering.settle(settlement)

        #expect(try TestDatabase.counters(connection, user: user) == (used: 120, reserved: 0))
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.ledger WHERE request_id = $1", [settlement.requestID]) == "1"
        )
    }

    @Test("it counts in the period its request started in, not the current one")
    func periodOfStart() throws {
        let connection = try TestDatabase.migrated()
        let (user, _) = try TestDatabase.userWithKey(connection, quota: 10_000, period: .day)
        let metering = try TestDatabase.metering()

        metering.settle(try unreserved(connection, user: user, total: 70, daysAgo: 1))
        metering.settle(try unreserved(connection, user: user, total: 30))

        #expect(try used(connection, user: user, daysAgo: 1) == "70")
        #expect(try used(connection, user: user, daysAgo: 0) == "30")
    }

    @Test("with an existing counter the usage is added to what admissions already hold and used")
    func existingCounter() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try TestDatabase.metering()
        #expect(metering.admit(generationRequest(key: key, reserve: 500)).ticket != nil)

        metering.settle(try unreserved(connection, user: user, total: 80))

        #expect(try TestDatabase.counters(connection, user: user) == (used: 80, reserved: 500))
    }

    @Test("BYOK settlements and users without a quota leave the counters alone")
    func notCounted() throws {
        let connection = try TestDatabase.migrated()
        let (limited, _) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let (unlimited, _) = try TestDatabase.userWithKey(connection)
        let metering = try TestDatabase.metering()

        metering.settle(try unreserved(connection, user: limited, total: 50, keySource: .byok))
        metering.settle(try unreserved(connection, user: unlimited, total: 50))

        #expect(try TestDatabase.counters(connection, user: limited) == (used: 0, reserved: 0))
        #expect(
            try TestDatabase.scalar(
                connection,
                """
                SELECT count(*) FROM tollgate.usage_counters c JOIN tollgate.users u ON u.id = c.user_id
                WHERE u.name = $1
                """, [unlimited]) == "0")
        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT sum(total_tokens) FROM tollgate.ledger l JOIN tollgate.users u ON u.id = l.user_id "
                    + "WHERE u.name = ANY($1::text[])", ["{\(limited),\(unlimited)}"]) == "100")
    }

    @Test("a settlement after its reservation was released as worker_lost adds nothing")
    func afterRelease() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try TestDatabase.metering()
        let request = generationRequest(key: key, reserve: 400, estimatedInput: 30)
        let ticket = try #require(metering.admit(request).ticket)
        try StoreMaintenance(databaseURL: try #require(TestDatabase.url)).releaseWorker(metering.settings.workerID)

        metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 100, outputTokens: 100)))

        #expect(try TestDatabase.counters(connection, user: user) == (used: 30, reserved: 0))
    }
}
