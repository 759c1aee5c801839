import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// A settle batch cut off by an outage: journaled whole, with one sync, then replayed once.
@Suite(
    "Settle batches during an outage in PostgreSQL",
    .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason), .timeLimit(.minutes(1)))
struct BatchOutageTests {
    @Test("a batch the database cancels half-way lands whole in the journal with one sync; replay records each once")
    func journaledThenReplayed() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 100_000)
        let directory = try JournalDirectory()
        defer { directory.remove() }
        var settings = try TestDatabase.metering().settings
        // The statement timeout is what cancels the batch while it waits on the lock below.
        settings.timeout = .seconds(1)
        let metering = PostgresMetering(
            settings: settings, journal: try SettlementJournal(directory: directory.path, workerID: settings.workerID))
        let journal = try #require(metering.journal)
        let requests = (0..<5).map { generationRequest(key: key, reserve: 1000 + $0) }
        let tickets = try metering.admit(requests).map { try #require($0.ticket) }
        let batch = zip(requests, tickets).map { request, ticket in
            completedSettlement(request, ticket, usage: Usage(inputTokens: 90, outputTokens: 10))
        }

        // Another session holds the user's counter row: the batch deletes the reservations and writes
        // the ledger rows, then waits on that row until the statement timeout cancels it all.
        _ = try connection.execute("BEGIN")
        _ = try connection.execute(
            "SELECT 1 FROM tollgate.usage_counters c JOIN tollgate.users u ON u.id = c.user_id WHERE u.name = $1 "
                + "FOR UPDATE OF c", parameters: [user])
        metering.settle(batch)
        _ = try connection.execute("ROLLBACK")

        #expect(journal.syncCount == 1)
        let lines = directory.journalFiles.map { directory.contents($0) }.joined().split(separator: "\n")
        #expect(
            Set(lines.compactMap { SettlementJournalEntry(line: $0)?.settlement.requestID })
                == Set(batch.map(\.requestID)))
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 5010))
        #expect(try TestDatabase.ledgerRows(connection, batch) == "0")

        let report = try #require(metering.replayer).replayOnce()
        try journal.append(batch)
        let again = try #require(metering.replayer).replayOnce()

        #expect(report.settled == 5)
        #expect(again.settled == 0)
        #expect(again.duplicates == 5)
        #expect(try TestDatabase.counters(connection, user: user) == (used: 500, reserved: 0))
        #expect(try TestDatabase.ledgerRows(connection, batch) == "5")
        #expect(directory.journalFiles.isEmpty)
    }

}
