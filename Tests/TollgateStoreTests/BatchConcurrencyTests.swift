import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// Batches from many threads and several workers at once, on shared counter rows.
@Suite(
    "Concurrent batches in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct BatchConcurrencyTests {
    /// Tokens of every ledger row of `user`, summed.
    private func ledgerTokens(_ connection: PostgresConnection, user: String) throws -> Int {
        let text = try TestDatabase.scalar(
            connection,
            "SELECT coalesce(sum(l.total_tokens), 0) FROM tollgate.ledger l JOIN tollgate.users u ON u.id = l.user_id "
                + "WHERE u.name = $1", [user])
        return Int(text ?? "") ?? -1
    }

    @Test("threads sending mixed batches for two limited users never overshoot; counters equal the ledger")
    func noOvershoot() throws {
        let connection = try TestDatabase.migrated()
        let reserve = 100
        let (first, firstKey) = try TestDatabase.userWithKey(connection, quota: 25 * reserve + reserve / 2)
        let (second, secondKey) = try TestDatabase.userWithKey(connection, quota: 10 * reserve)
        let (free, freeKey) = try TestDatabase.userWithKey(connection)
        // Two "workers" with 4 connections each.
        let workers = try (0..<2).map { _ in try TestDatabase.metering(poolSize: 4) }
        let admitted = Collected<String>()
        let statuses = Collected<Int>()

        ThreadGroup.run(8) { thread in
            let metering = workers[thread % workers.count]
            for _ in 0..<4 {
                var keys = [firstKey, secondKey, firstKey, freeKey, firstKey, secondKey, firstKey, freeKey]
                // Half the threads list the users the other way round: lock order must not depend on it.
                if thread % 2 == 1 { keys.reverse() }
                let requests = keys.map { generationRequest(key: $0, reserve: reserve) }
                var settlements: [Settlement] = []
                for (request, answer) in zip(requests, metering.admit(requests)) {
                    switch answer {
                    case .admitted(let ticket):
                        admitted.append(request.requestID)
                        // All it reserved, so the number admitted does not depend on the interleaving.
                        settlements.append(
                            completedSettlement(request, ticket, usage: Usage(inputTokens: 90, outputTokens: 10)))
                    case .rejected(let error): statuses.append(error.status)
                    }
                }
                metering.settle(settlements)
            }
        }

        #expect(admitted.all.count == 25 + 10 + 64)
        #expect(statuses.all.count == 128 - 25 + 64 - 10)
        #expect(statuses.all.allSatisfy { $0 == 429 })
        #expect(try TestDatabase.counters(connection, user: first) == (used: 25 * reserve, reserved: 0))
        #expect(try TestDatabase.counters(connection, user: second) == (used: 10 * reserve, reserved: 0))
        for user in [first, second] {
            #expect(try ledgerTokens(connection, user: user) == TestDatabase.counters(connection, user: user).used)
        }
        #expect(try ledgerTokens(connection, user: free) == 64 * reserve)
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.ledger WHERE request_id = ANY($1::uuid[])",
                [PostgresArray.literal(admitted.all)]) == String(admitted.all.count))
    }

    @Test("settle batches racing the release of their worker never deadlock, and each request counts once")
    func settleWhileReleasing() throws {
        let connection = try TestDatabase.migrated()
        let (first, firstKey) = try TestDatabase.userWithKey(connection, quota: 1_000_000)
        let (second, secondKey) = try TestDatabase.userWithKey(connection, quota: 1_000_000)
        let url = try #require(TestDatabase.url)
        let failures = Collected<String>()
        var admitted: [String] = []

        for _ in 0..<10 {
            let worker = try TestDatabase.metering(poolSize: 2)
            let keys = [firstKey, secondKey, secondKey, firstKey, firstKey, secondKey]
            let requests = keys.map { generationRequest(key: $0, reserve: 500, estimatedInput: 30) }
            let tickets = try worker.admit(requests).map { try #require($0.ticket) }
            admitted += requests.map(\.requestID)
            let settlements = zip(requests, tickets).map { request, ticket in
                completedSettlement(request, ticket, usage: Usage(inputTokens: 60, outputTokens: 40))
            }
            // Both lock the worker's reservations in request-id order, then the counters in user order.
            ThreadGroup.run(2) { thread in
                if thread == 0 {
                    for case .failure(let error) in PostgresMetering.record(settlements, pool: worker.pool) {
                        failures.append(error.description)
                    }
                } else {
                    do {
                        try StoreMaintenance(databaseURL: url).releaseWorker(worker.settings.workerID)
                    } catch {
                        failures.append(String(describing: error))
                    }
                }
            }
        }

        #expect(failures.all.isEmpty)
        for user in [first, second] {
            let counters = try TestDatabase.counters(connection, user: user)
            #expect(counters.reserved == 0)
            #expect(try ledgerTokens(connection, user: user) == counters.used)
        }
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.ledger WHERE request_id = ANY($1::uuid[])",
                [PostgresArray.literal(admitted)]) == "60")
    }
}
