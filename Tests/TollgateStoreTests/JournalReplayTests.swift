import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// Settlements journaled by a worker that could not reach the database, replayed into it.
@Suite(
    "The settlement journal replayed into PostgreSQL",
    .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason), .timeLimit(.minutes(1)))
struct JournalReplayTests {
    /// A worker whose database is unreachable, journaling into `directory`.
    private func downWorker(_ directory: JournalDirectory, policy: OutagePolicy.Mode = .refuse) throws
        -> PostgresMetering
    {
        var settings = MeteringSettings(databaseURL: OutagePolicyTests.unreachable, platformKey: "sk-platform-test")
        settings.outagePolicy = policy
        settings.workerID = TestDatabase.uniqueName("down") + ":1"
        return PostgresMetering(
            settings: settings, journal: try SettlementJournal(directory: directory.path, workerID: settings.workerID))
    }

    /// A worker on the test database with a journal on `directory`.
    private func upWorker(_ directory: JournalDirectory) throws -> PostgresMetering {
        let plain = try TestDatabase.metering()
        return PostgresMetering(
            settings: plain.settings,
            journal: try SettlementJournal(directory: directory.path, workerID: plain.settings.workerID))
    }

    @Test("a settlement that cannot reach the database is journaled, then replayed: one row, counters exact")
    func replayedOnce() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let admitting = try TestDatabase.metering()
        let request = generationRequest(key: key, reserve: 600)
        let ticket = try #require(admitting.admit(request).ticket)
        let down = try downWorker(directory)
        let settlement = completedSettlement(request, ticket, usage: Usage(inputTokens: 70, outputTokens: 30))

        down.settle(settlement)

        #expect(directory.journalFiles.count == 1)
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 600))
        // The worker dies with the settlement on disk; another one adopts and replays it twice.
        down.journal?.close()
        let up = try upWorker(directory)
        let report = try #require(up.replayer).replayOnce()
        #expect(report.adopted == 1)
        #expect(report.settled == 1)
        #expect(directory.names.isEmpty)
        try up.journal?.append(settlement)
        #expect(try #require(up.replayer).replayOnce().duplicates == 1)

        let row = try connection.execute(
            "SELECT outcome, input_tokens, output_tokens, total_tokens, key_source FROM tollgate.ledger "
                + "WHERE request_id = $1", parameters: [request.requestID])
        #expect(row.rows == [["completed", "70", "30", "100", "platform"]])
        #expect(try TestDatabase.counters(connection, user: user) == (used: 100, reserved: 0))
    }

    @Test("while the database is down a replay stops at once and keeps everything for later")
    func replayWaits() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let down = try downWorker(directory)
        let settlement = JournalSamples.settlement()
        down.settle(settlement)

        let report = try #require(down.replayer).replayOnce()

        #expect(report.failure?.code == .connectionFailed)
        #expect(report.settled == 0)
        #expect(directory.journalFiles.count == 1)
        #expect(down.journal?.hasEntries == true)
    }

    @Test("a settlement the database refuses is not journaled: replaying it could never succeed")
    func refusedNotJournaled() throws {
        _ = try TestDatabase.migrated()
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let up = try upWorker(directory)
        var settlement = JournalSamples.settlement()
        settlement.requestID = "not-a-uuid"

        up.settle(settlement)

        #expect(directory.names.isEmpty)
    }

    @Test("allow policy end to end: served during the outage, journaled, replayed into the user's counter")
    func allowedThenReplayed() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let admitting = try TestDatabase.metering()
        let before = try #require(admitting.admit(generationRequest(key: key, reserve: 100)).ticket)
        let down = try downWorker(directory, policy: .allow)
        // What the database said before the outage, as this worker would have heard it.
        let answer = try AdmissionAnswer(
            QueryResult(
                columns: ["outcome", "user_id", "key_id"], rows: [["admitted", before.userID, before.keyID]],
                affectedRows: 0))
        down.outage.learn(answer, caller: .keyHash(APIKey.hash(key)))

        let request = generationRequest(key: key, reserve: 300)
        let ticket = try #require(down.admit(request).ticket)
        down.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 200, outputTokens: 50)))
        down.journal?.close()
        let report = try #require(try upWorker(directory).replayer).replayOnce()

        #expect(report.settled == 1)
        #expect(try TestDatabase.counters(connection, user: user) == (used: 250, reserved: 100))
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT key_id::text FROM tollgate.ledger WHERE request_id = $1", [request.requestID])
                == before.keyID)
    }
}
