import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite(
    "Concurrent admissions in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct ConcurrencyTests {
    @Test("50 concurrent admissions at a quota that fits 10 admit exactly 10 and never overshoot")
    func noOvershoot() throws {
        let connection = try TestDatabase.migrated()
        let reserve = 1000
        let quota = 10 * reserve + reserve / 2
        let (user, key) = try TestDatabase.userWithKey(connection, quota: quota)
        // Three "workers" with 10 connections each: 30 sessions contend for one counter row.
        let workers = try (0..<3).map { _ in try TestDatabase.metering(poolSize: 10) }
        let admitted = Collected<AdmissionRequest>()
        let refusals = Collected<Int>()

        ThreadGroup.run(50) { index in
            let request = generationRequest(key: key, reserve: reserve)
            switch workers[index % workers.count].admit(request) {
            case .admitted: admitted.append(request)
            case .rejected(let error): refusals.append(error.status)
            }
        }

        #expect(admitted.all.count == 10)
        #expect(refusals.all.count == 40)
        #expect(refusals.all.allSatisfy { $0 == 429 })
        let counters = try TestDatabase.counters(connection, user: user)
        #expect(counters.used + counters.reserved <= quota)
        #expect(counters.reserved == 10 * reserve)
        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT coalesce(sum(r.tokens), 0) FROM tollgate.reservations r "
                    + "JOIN tollgate.users u ON u.id = r.user_id WHERE u.name = $1", [user]) == String(10 * reserve))
    }

    @Test("concurrent settlements and admissions keep the counters equal to the ledger")
    func settleWhileAdmitting() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1_000_000)
        let metering = try TestDatabase.metering(poolSize: 8)

        ThreadGroup.run(24) { _ in
            for _ in 0..<5 {
                let request = generationRequest(key: key, reserve: 500)
                guard let ticket = metering.admit(request).ticket else { continue }
                metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 10, outputTokens: 7)))
            }
        }

        let counters = try TestDatabase.counters(connection, user: user)
        #expect(counters == (used: 24 * 5 * 17, reserved: 0))
        #expect(try AdminStore(connection: connection).usage(user: user).first?.totalTokens == counters.used)
    }
}
