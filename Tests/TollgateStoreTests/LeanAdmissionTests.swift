import Testing
import TollgateCore

@testable import TollgateStore

/// tollgate.admit_batch_fast answers a usual batch in one statement (a batch of one in a few
/// single-row ones) and leaves the rest to tollgate.admit_batch (sql/006). Two users set up
/// alike get the same batch, one through each function: the answers and what is left in the
/// database must be the same.
@Suite(
    "Admission batches on the one-statement path", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct LeanAdmissionTests {
    static let exactSignature =
        "tollgate.admit_batch(uuid[], bytea[], text[], bigint[], bigint[], text[], text[], boolean[], text, text)"

    /// One batch in header mode (user names, no keys) through `function`, in a transaction of its
    /// own: every answer row as text (the user id only as known or not), and how many times that
    /// transaction called admit_batch (005's request-by-request path).
    private func admit(
        _ connection: PostgresConnection, function: String, names: [String?], reserves: [Int], worker: String
    ) throws -> (answers: [String], exactCalls: Int) {
        try connection.transaction { () throws(StoreError) -> ([String], Int) in
            // Calls counted in this backend and not yet reported: they only grow within a transaction.
            func exactCalls() throws(StoreError) -> Int {
                let calls = try connection.execute(
                    "SELECT coalesce(pg_stat_get_xact_function_calls($1::regprocedure), 0)",
                    parameters: [Self.exactSignature]
                ).scalar
                return Int(calls ?? "") ?? -1
            }
            _ = try connection.execute("SET LOCAL track_functions = 'pl'")
            let before = try exactCalls()
            let count = names.count
            let rows = try connection.execute(
                """
                SELECT concat_ws('|', a.ordinal, a.outcome, a.user_id IS NOT NULL, coalesce(a.key_id::text, '-'),
                                 coalesce(a.byok_key, '-'), coalesce(a.quota::text, '-'), coalesce(a.used::text, '-'),
                                 coalesce(a.reserved::text, '-'), coalesce(a.period_end::text, '-'))
                FROM tollgate.\(function)(
                    ARRAY(SELECT gen_random_uuid() FROM generate_series(1, \(count))),
                    array_fill(NULL::bytea, ARRAY[\(count)]), $1::text[], $2::bigint[],
                    array_fill(10::bigint, ARRAY[\(count)]), array_fill('chat.completions'::text, ARRAY[\(count)]),
                    array_fill('gpt-test'::text, ARRAY[\(count)]), array_fill(false, ARRAY[\(count)]), $3, NULL) a
                ORDER BY a.ordinal
                """,
                parameters: [
                    PostgresArray.literal(names), "{\(reserves.map(String.init).joined(separator: ","))}", worker,
                ]
            ).rows.map { $0.first.flatMap { $0 } ?? "" }
            return (rows, try exactCalls() - before)
        }
    }

    @Test("a batch that fits is answered in one statement, exactly as request by request; one that does not falls back")
    func sameAnswersOnBothPaths() throws {
        let connection = try TestDatabase.migrated()
        let (lean, _) = try TestDatabase.userWithKey(connection, quota: 1000)
        let (exact, _) = try TestDatabase.userWithKey(connection, quota: 1000)
        let (unlimited, _) = try TestDatabase.userWithKey(connection)
        let worker = TestDatabase.uniqueName("lean-host") + ":1"

        // A worker's first batch creates its row: the exact path. Then both users hold 100.
        let first = try admit(connection, function: "admit_batch_fast", names: [lean], reserves: [100], worker: worker)
        #expect(first.exactCalls == 1)
        #expect(first.answers.count == 1)
        _ = try admit(connection, function: "admit_batch", names: [exact], reserves: [100], worker: worker)

        // Fits together (100 held, 200 + 300 + 150 more of 1000): one statement.
        func batch(_ user: String) -> [String?] { [user, unlimited, "nobody-\(user)", user, user] }
        let reserves = [200, 5000, 100, 300, 150]
        let fast = try admit(
            connection, function: "admit_batch_fast", names: batch(lean), reserves: reserves, worker: worker)
        let slow = try admit(
            connection, function: "admit_batch", names: batch(exact), reserves: reserves, worker: worker)
        #expect(fast.exactCalls == 0)
        #expect(fast.answers.count == 5)
        #expect(fast.answers == slow.answers)
        #expect(fast.answers[1] == "2|admitted|t|-|-|-|-|-|-")
        #expect(fast.answers[2] == "3|unknown_user|f|-|-|-|-|-|-")
        #expect(fast.answers[4].hasPrefix("5|admitted|t|-|-|1000|0|750|"))
        #expect(try TestDatabase.counters(connection, user: lean) == (used: 0, reserved: 750))
        #expect(try TestDatabase.counters(connection, user: exact) == (used: 0, reserved: 750))
        #expect(
            try TestDatabase.reservations(connection, user: lean) == TestDatabase.reservations(connection, user: exact))

        // 750 held: 200 fits, 100 more does, 300 would not; decided one by one, on the exact path.
        let edge = [200, 300, 50]
        let fallback = try admit(
            connection, function: "admit_batch_fast", names: [lean, lean, lean], reserves: edge,
            worker: worker)
        let reference = try admit(
            connection, function: "admit_batch", names: [exact, exact, exact], reserves: edge, worker: worker)
        #expect(fallback.exactCalls == 1)
        #expect(fallback.answers == reference.answers)
        #expect(
            fallback.answers.map { $0.split(separator: "|", omittingEmptySubsequences: false)[1] }
                == ["admitted", "insufficient_quota", "admitted"])
        #expect(try TestDatabase.counters(connection, user: lean) == (used: 0, reserved: 1000))
        #expect(try TestDatabase.counters(connection, user: exact) == (used: 0, reserved: 1000))
    }

    @Test("a batch of one that fits takes single-row statements; any other gets admit_batch's answer")
    func batchOfOne() throws {
        let connection = try TestDatabase.migrated()
        let (lean, _) = try TestDatabase.userWithKey(connection, quota: 1000)
        let (exact, _) = try TestDatabase.userWithKey(connection, quota: 1000)
        let worker = TestDatabase.uniqueName("lean-host") + ":1"
        // The worker's row and both counters, 100 held by each user.
        _ = try admit(connection, function: "admit_batch_fast", names: [lean], reserves: [100], worker: worker)
        _ = try admit(connection, function: "admit_batch", names: [exact], reserves: [100], worker: worker)

        let fits = try admit(connection, function: "admit_batch_fast", names: [lean], reserves: [500], worker: worker)
        let fitsReference = try admit(
            connection, function: "admit_batch", names: [exact], reserves: [500], worker: worker)
        #expect(fits.exactCalls == 0)
        #expect(fits.answers == fitsReference.answers)
        #expect(fits.answers.first?.hasPrefix("1|admitted|t|-|-|1000|0|600|") == true)

        // 600 held: 500 more does not fit.
        let over = try admit(connection, function: "admit_batch_fast", names: [lean], reserves: [500], worker: worker)
        let overReference = try admit(
            connection, function: "admit_batch", names: [exact], reserves: [500], worker: worker)
        #expect(over.exactCalls == 1)
        #expect(over.answers == overReference.answers)
        #expect(over.answers.first?.hasPrefix("1|insufficient_quota|t|") == true)

        let unknown = try admit(
            connection, function: "admit_batch_fast", names: ["nobody-\(lean)"], reserves: [1], worker: worker)
        #expect(unknown.exactCalls == 1)
        #expect(unknown.answers == ["1|unknown_user|f|-|-|-|-|-|-"])
        #expect(try TestDatabase.counters(connection, user: lean) == (used: 0, reserved: 600))
        #expect(try TestDatabase.counters(connection, user: exact) == (used: 0, reserved: 600))
        #expect(
            try TestDatabase.reservations(connection, user: lean) == TestDatabase.reservations(connection, user: exact))
    }
}
