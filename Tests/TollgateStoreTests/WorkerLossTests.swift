import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite(
    "Lost workers in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct WorkerLossTests {
    private func maintenance() throws -> StoreMaintenance {
        StoreMaintenance(databaseURL: try #require(TestDatabase.url))
    }

    @Test("release_worker turns a worker's reservations into worker_lost rows and frees the quota")
    func releaseWorker() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1000)
        let lost = try TestDatabase.metering()
        let survivor = try TestDatabase.metering()
        let first = generationRequest(key: key, reserve: 400, estimatedInput: 30)
        let second = generationRequest(key: key, reserve: 400, estimatedInput: 20)
        let lostTicket = try #require(lost.admit(first).ticket)
        #expect(lost.admit(second).ticket != nil)
        #expect(survivor.admit(generationRequest(key: key, reserve: 400)).error?.status == 429)

        try maintenance().releaseWorker(lost.settings.workerID)

        let rows = try connection.execute(
            """
            SELECT outcome, usage_source, input_tokens, output_tokens, total_tokens, http_status
            FROM tollgate.ledger WHERE request_id = ANY($1::uuid[]) ORDER BY input_tokens DESC
            """, parameters: ["{\(first.requestID),\(second.requestID)}"])
        #expect(
            rows.rows == [
                ["worker_lost", "estimated", "30", "0", "30", "0"], ["worker_lost", "estimated", "20", "0", "20", "0"],
            ])
        #expect(try TestDatabase.counters(connection, user: user) == (used: 50, reserved: 0))
        #expect(survivor.admit(generationRequest(key: key, reserve: 400)).ticket != nil)
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.workers WHERE worker_id = $1",
                [lost.settings.workerID]) == "0")

        // The lost worker's late settlement finds the row written and changes nothing.
        lost.settle(completedSettlement(first, lostTicket, usage: Usage(inputTokens: 500, outputTokens: 500)))
        #expect(try TestDatabase.counters(connection, user: user) == (used: 50, reserved: 400))
    }

    @Test("a sweep releases workers whose heartbeat is stale, and only those")
    func sweep() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1000)
        let stale = try TestDatabase.metering()
        let alive = try TestDatabase.metering()
        #expect(stale.admit(generationRequest(key: key, reserve: 100)).ticket != nil)
        #expect(alive.admit(generationRequest(key: key, reserve: 200)).ticket != nil)
        let upkeep = try maintenance()
        try upkeep.heartbeat([stale.settings.workerID, alive.settings.workerID])
        // As if the stale worker's machine had stopped heartbeating an hour ago.
        _ = try connection.execute(
            "UPDATE tollgate.workers SET heartbeat_at = now() - interval '1 hour' WHERE worker_id = $1",
            parameters: [stale.settings.workerID])

        try upkeep.sweepStaleWorkers(olderThan: .seconds(600))

        // The stale worker's request is charged its estimated input (40), its hold released.
        #expect(try TestDatabase.counters(connection, user: user) == (used: 40, reserved: 200))
        let remaining = try connection.execute(
            "SELECT worker_id FROM tollgate.workers WHERE worker_id = ANY($1::text[])",
            parameters: [StoreMaintenance.textArray([stale.settings.workerID, alive.settings.workerID])])
        #expect(remaining.rows == [[alive.settings.workerID]])
    }

    @Test("a heartbeat refreshes a worker's row")
    func heartbeat() throws {
        let connection = try TestDatabase.migrated()
        let worker = TestDatabase.uniqueName("host") + ":7"
        let upkeep = try maintenance()
        try upkeep.heartbeat([worker])
        _ = try connection.execute(
            "UPDATE tollgate.workers SET heartbeat_at = now() - interval '1 hour' WHERE worker_id = $1",
            parameters: [worker])

        try upkeep.heartbeat([worker, worker])

        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT heartbeat_at > now() - interval '1 minute' FROM tollgate.workers WHERE worker_id = $1",
                [worker]) == "t")
    }
}
