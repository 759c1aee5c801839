import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// Quota leases against PostgreSQL (sql/007): a worker admits from quota it holds, records the
/// requests still in flight, and gives back what is left; the counters always add up.
@Suite(
    "Quota leases in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct QuotaLeaseStoreTests {
    let clock = ManualClock()

    /// A worker whose leases last two seconds of `clock`.
    func leasedMetering() throws -> PostgresMetering {
        let base = try TestDatabase.metering()
        let leases = QuotaLeases(lifetime: .seconds(2), requestsPerLease: 4) { [clock] in clock.now }
        return PostgresMetering(settings: base.settings, journal: nil, leases: leases)
    }

    /// Admits `request` the usual way, then lets the lease thread's turn take the lease it asked for.
    func admitAndLease(_ metering: PostgresMetering, _ request: AdmissionRequest) throws -> AdmissionTicket {
        let ticket = try #require(metering.admit(request).ticket)
        metering.keepLeases()
        return ticket
    }

    @Test("a lease holds half of what is left at most; requests admitted from it are recorded, settled and given back")
    func leaseLifecycle() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try leasedMetering()

        let first = generationRequest(key: key, reserve: 100)
        let firstTicket = try admitAndLease(metering, first)
        // 4 requests' worth: 400 tokens, held beside the first request's 100.
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 500))

        let second = generationRequest(key: key, reserve: 100)
        let (secondTicket, secondRecord) = try #require(metering.admitFromLease(second))
        #expect(secondTicket.keySource == .platform && secondTicket.upstreamKey == "sk-platform-test")
        #expect(secondTicket.userID == firstTicket.userID && secondTicket.keyID == firstTicket.keyID)
        #expect(secondTicket.reservedTokens == 100)
        metering.record([try #require(secondRecord)])
        let start = try periodStart(connection)
        #expect(try TestDatabase.reservations(connection, user: user) == ["100/\(start)", "100/\(start)"])
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 500))

        // Settled before it was recorded: forgotten, counted by its settlement alone.
        let third = generationRequest(key: key, reserve: 100)
        let (thirdTicket, thirdRecord) = try #require(metering.admitFromLease(third))
        metering.forget(try #require(thirdRecord))

        let settlements = [
            completedSettlement(first, firstTicket, usage: Usage(inputTokens: 30, outputTokens: 20)),
            completedSettlement(second, secondTicket, usage: Usage(inputTokens: 30, outputTokens: 10)),
            completedSettlement(third, thirdTicket, usage: Usage(inputTokens: 5, outputTokens: 5)),
        ]
        metering.settle(settlements)
        #expect(try TestDatabase.ledgerRows(connection, settlements) == "3")
        // used 50 + 40 + 10; held: the lease's 400, less the second request's 100 (released at its
        // settlement); the third's 100 stays in the lease until it goes back.
        #expect(try TestDatabase.counters(connection, user: user) == (used: 100, reserved: 300))

        clock.advance(by: .seconds(3))
        #expect(metering.admitFromLease(generationRequest(key: key, reserve: 100)) == nil)
        metering.keepLeases()
        #expect(try TestDatabase.counters(connection, user: user) == (used: 100, reserved: 0))
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.quota_leases WHERE user_id = $1", [firstTicket.userID])
                == "0")
        #expect(try TestDatabase.reservations(connection, user: user).isEmpty)
    }

    @Test("a worker that dies leaves worker_lost rows for the recorded requests, and its leases go back")
    func lostWorker() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try leasedMetering()
        let first = generationRequest(key: key, reserve: 100)
        _ = try admitAndLease(metering, first)
        let leased = generationRequest(key: key, reserve: 100, estimatedInput: 25)
        let record = try #require(metering.admitFromLease(leased)?.1)
        metering.record([record])

        try StoreMaintenance(databaseURL: try #require(TestDatabase.url)).releaseWorker(metering.settings.workerID)

        let rows = try connection.execute(
            "SELECT outcome, total_tokens FROM tollgate.ledger WHERE request_id = ANY($1::uuid[]) ORDER BY 2",
            parameters: [PostgresArray.literal([first.requestID, leased.requestID])])
        #expect(rows.rows == [["worker_lost", "25"], ["worker_lost", "40"]])
        #expect(try TestDatabase.counters(connection, user: user) == (used: 65, reserved: 0))
    }

    @Test("leases go only to callers with quota to spare, and never past the quota")
    func leasesRespectTheQuota() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1_000)
        let metering = try leasedMetering()
        // 1000 - 100 left: the lease is min(4 × 100, 900 / 2) = 400.
        _ = try admitAndLease(metering, generationRequest(key: key, reserve: 100))
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 500))
        // Another worker leaves 300 after its own request: half of it, 150, is under two such
        // requests, so it asks for no lease.
        let other = try leasedMetering()
        _ = try admitAndLease(other, generationRequest(key: key, reserve: 200))
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 700))
        #expect(other.admitFromLease(generationRequest(key: key, reserve: 10)) == nil)

        var admitted = 0
        while metering.admitFromLease(generationRequest(key: key, reserve: 100)) != nil { admitted += 1 }
        #expect(admitted == 4)
        #expect(other.admit(generationRequest(key: key, reserve: 301)).error?.status == 429)
        #expect(other.admit(generationRequest(key: key, reserve: 300)).ticket != nil)
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 1_000))
    }

    @Test("a refused caller loses their lease at once; BYOK and unlimited callers get leases of who they are")
    func refusalsAndUnlimited() throws {
        let connection = try TestDatabase.migrated()
        let (_, unlimitedKey) = try TestDatabase.userWithKey(connection)
        let metering = try leasedMetering()
        _ = try admitAndLease(metering, generationRequest(key: unlimitedKey, reserve: 1 << 30))
        let request = generationRequest(key: unlimitedKey, reserve: 1 << 30)
        let (ticket, record) = try #require(metering.admitFromLease(request))
        #expect(ticket.reservedTokens == 0 && record?.leaseID == nil && record?.heldTokens == 0)
        metering.record([try #require(record)])
        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT tokens || '/' || (period_start IS NULL) FROM tollgate.reservations "
                    + "WHERE request_id = $1", [request.requestID]) == "0/true")

        let (_, key) = try TestDatabase.userWithKey(connection, quota: 100_000)
        _ = try admitAndLease(metering, generationRequest(key: key, reserve: 100))
        #expect(metering.admitFromLease(generationRequest(key: key, reserve: 100)) != nil)
        // Too large for the lease: the database decides, and refuses it; the lease is dropped.
        #expect(metering.admit(generationRequest(key: key, reserve: 1_000_000)).error?.status == 429)
        #expect(metering.admitFromLease(generationRequest(key: key, reserve: 100)) == nil)
    }

    private func periodStart(_ connection: PostgresConnection) throws -> String {
        try #require(try TestDatabase.scalar(connection, "SELECT tollgate.period_start_of('day', now())::text"))
    }
}
