import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// The lock order that keeps batches, releases and sweeps from deadlocking (sql/005): reservations
/// by request id, counter rows by user. Each test holds the lock a batch takes FIRST, waits until
/// the batch is blocked on it, then checks that the lock it would take SECOND is still free.
@Suite(
    "Lock order of the batch functions in PostgreSQL",
    .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason), .timeLimit(.minutes(1)))
struct LockOrderTests {
    /// A connection handed to the one thread that uses it while `ThreadGroup.run` lasts.
    /// `@unchecked Sendable`: the creating thread does not touch it until the group is joined.
    private final class Handed: @unchecked Sendable {
        let connection: PostgresConnection
        init(_ connection: PostgresConnection) { self.connection = connection }
    }

    /// Runs `call` on one thread while `holder` (in an open transaction) holds a lock it needs; on
    /// another, waits until `call` is blocked by `holder`, then answers whether `probe` (a
    /// `FOR UPDATE NOWAIT` on the row the call should lock later) got its lock, and lets go.
    private func probeWhileBlocked(
        holder: PostgresConnection, probe: String, _ parameters: [String?], _ call: @escaping @Sendable () -> Void
    ) throws -> Bool {
        let holding = Handed(holder)
        let probing = Handed(try TestDatabase.migrated())
        let holderPID = try #require(try TestDatabase.scalar(holder, "SELECT pg_backend_pid()"))
        let outcomes = Collected<Bool>()

        ThreadGroup.run(2) { thread in
            guard thread == 1 else { return call() }
            let blocked = JournalSamples.eventually {
                (try? TestDatabase.scalar(
                    probing.connection,
                    "SELECT count(*) FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))",
                    [holderPID])) == "1"
            }
            _ = try? probing.connection.execute("BEGIN")
            let free = (try? probing.connection.execute(probe, parameters: parameters)) != nil
            _ = try? probing.connection.execute("ROLLBACK")
            _ = try? holding.connection.execute("ROLLBACK")
            outcomes.append(blocked && free)
        }
        return outcomes.all == [true]
    }

    @Test("settle_batch locks reservations in request-id order, whatever the order of the batch")
    func reservations() throws {
        let connection = try TestDatabase.migrated()
        let (_, key) = try TestDatabase.userWithKey(connection, quota: 100_000)
        let metering = try TestDatabase.metering()
        let requests = [generationRequest(key: key), generationRequest(key: key)]
        let tickets = try metering.admit(requests).map { try #require($0.ticket) }
        let settlements = zip(requests, tickets).map { request, ticket in
            completedSettlement(request, ticket, usage: Usage(inputTokens: 1, outputTokens: 1))
        }.sorted { $0.requestID > $1.requestID }
        let (last, first) = (settlements[0].requestID, settlements[1].requestID)
        let holder = try TestDatabase.migrated()
        _ = try holder.execute("BEGIN")
        _ = try holder.execute(
            "SELECT 1 FROM tollgate.reservations WHERE request_id = $1 FOR UPDATE", parameters: [first])

        let free = try probeWhileBlocked(
            holder: holder, probe: "SELECT 1 FROM tollgate.reservations WHERE request_id = $1 FOR UPDATE NOWAIT", [last]
        ) {
            _ = PostgresMetering.record(settlements, pool: metering.pool)
        }

        #expect(free)
        #expect(try TestDatabase.ledgerRows(connection, settlements) == "2")
    }

    @Test("admit_batch and settle_batch lock counter rows in user order, whatever the order of the batch")
    func counters() throws {
        let connection = try TestDatabase.migrated()
        let (low, lowKey) = try TestDatabase.userWithKey(connection, quota: 100_000)
        let (high, highKey) = try TestDatabase.userWithKey(connection, quota: 100_000)
        let metering = try TestDatabase.metering()
        let counter = """
            SELECT 1 FROM tollgate.usage_counters c JOIN tollgate.users u ON u.id = c.user_id
            WHERE u.name = $1 FOR UPDATE OF c
            """
        let requests = [generationRequest(key: highKey), generationRequest(key: lowKey)]
        let tickets = try metering.admit(requests).map { try #require($0.ticket) }
        let settlements = zip(requests, tickets).map { request, ticket in
            completedSettlement(request, ticket, usage: Usage(inputTokens: 1, outputTokens: 1))
        }

        for step in ["admit", "settle"] {
            let holder = try TestDatabase.migrated()
            _ = try holder.execute("BEGIN")
            _ = try holder.execute(counter, parameters: [low])
            let free = try probeWhileBlocked(holder: holder, probe: counter + " NOWAIT", [high]) {
                if step == "admit" {
                    _ = metering.admit([generationRequest(key: highKey), generationRequest(key: lowKey)])
                } else {
                    metering.settle(settlements)
                }
            }
            #expect(free, "\(step)")
        }
        #expect(try TestDatabase.ledgerRows(connection, settlements) == "2")
    }
}
