import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// The journal's side of batches: appends of many settlements, replays in chunks.
@Suite("The settlement journal in batches")
struct JournalBatchTests {
    @Test("a batch append writes every line with one fdatasync, and a replay takes each once")
    func batchAppend() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let ledger = FakeLedger()
        let settlements = (0..<10).map { JournalSamples.settlement($0) }

        try journal.append(settlements)
        try journal.append([])

        #expect(journal.syncCount == 1)
        let lines = directory.contents(try #require(directory.journalFiles.first)).split(separator: "\n")
        #expect(
            lines.compactMap { SettlementJournalEntry(line: $0)?.settlement.requestID } == settlements.map(\.requestID))
        let report = journal.replay(using: ledger.settle)
        #expect(report.settled == 10)
        #expect(ledger.batchSizes == [10])
    }

    @Test("a replay sends the journal in chunks of 64, resumes at the line an outage stopped, and counts each once")
    func chunks() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let ledger = FakeLedger()
        let settlements = (0..<150).map { JournalSamples.settlement($0) }
        try journal.append(Array(settlements[..<100]))
        try journal.append(Array(settlements[100...]))
        var taken = 0
        let flaky = oneByOne { settlement throws(StoreError) in
            taken += 1
            if taken == 70 { throw StoreError(.connectionLost, "server closed the connection") }
            return try ledger.record(settlement)
        }

        let stopped = journal.replay(using: flaky)
        let resumed = journal.replay(using: ledger.settle)

        #expect(stopped.settled == 69)
        #expect(stopped.failure?.code == .connectionLost)
        #expect(resumed.settled == 81)
        #expect(resumed.duplicates == 0)
        #expect(ledger.batchSizes == [64, 17])
        #expect(Set(ledger.rows.keys) == Set(settlements.map(\.requestID)))
        #expect(directory.journalFiles.isEmpty)
    }

    @Test("an unreadable line between chunks is set aside once, and the lines around it are replayed")
    func unreadableLine() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let before = (0..<3).map { JournalSamples.settlement($0) }
        let after = (3..<5).map { JournalSamples.settlement($0) }
        let text =
            (before.map { SettlementJournalEntry($0).line } + ["v1\tnot a settlement\n"]
            + after.map { SettlementJournalEntry($0).line }).joined()
        try directory.write("crashed-00000000.1.journal", text)
        let survivor = try SettlementJournal(directory: directory.path, workerID: "survivor")
        let ledger = FakeLedger()

        let report = survivor.replay(using: ledger.settle)

        #expect(report.settled == 5)
        #expect(report.rejected == 1)
        #expect(ledger.batchSizes == [3, 2])
        #expect(directory.contents("crashed-00000000.rejected") == "v1\tnot a settlement\n")
    }
}
