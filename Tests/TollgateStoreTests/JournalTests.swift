import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

#if canImport(Glibc)
    import Glibc
#endif

@Suite("The settlement journal on disk", .timeLimit(.minutes(1)))
struct JournalTests {
    @Test("nothing is written before the first append; each append is one synced line in a 0600 file")
    func append() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "host/1/0/1")
        #expect(directory.names.isEmpty)
        #expect(!journal.hasEntries)

        let settlements = (0..<3).map { JournalSamples.settlement($0) }
        for settlement in settlements { try journal.append(settlement) }

        #expect(journal.hasEntries)
        let files = directory.names
        #expect(files.count == 1)
        let name = try #require(files.first)
        #expect(name.hasPrefix(SettlementJournal.fileName(forWorker: "host/1/0/1") + "."))
        #expect(name.hasSuffix(".journal"))
        let lines = directory.contents(name).split(separator: "\n")
        #expect(
            lines.compactMap { SettlementJournalEntry(line: $0)?.settlement.requestID } == settlements.map(\.requestID))
        var status = stat()
        #expect(stat(directory.path + "/" + name, &status) == 0)
        #expect(status.st_mode & 0o777 == 0o600)
    }

    @Test("a replay settles every line once, in order, then deletes the file; the next finds nothing")
    func replay() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let ledger = FakeLedger()
        let settlements = (0..<5).map { JournalSamples.settlement($0) }
        for settlement in settlements { try journal.append(settlement) }

        let report = journal.replay(using: ledger.settle)

        #expect(report.settled == 5)
        #expect(report.failure == nil)
        #expect(report.filesDone == 1)
        #expect(ledger.calls == settlements.map(\.requestID))
        #expect(ledger.rows[settlements[4].requestID]?.usage == settlements[4].usage)
        #expect(directory.names.isEmpty)
        #expect(!journal.hasEntries)
        #expect(journal.replay(using: ledger.settle) == SettlementJournal.Report())
        #expect(ledger.calls.count == 5)
    }

    @Test("lines replayed twice (a crash after the database took them) are counted as already there")
    func idempotent() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let ledger = FakeLedger()
        let settlement = JournalSamples.settlement()
        _ = try ledger.record(settlement)
        try journal.append(settlement)
        try journal.append(settlement)

        let report = journal.replay(using: ledger.settle)

        #expect(report.settled == 0)
        #expect(report.duplicates == 2)
        #expect(ledger.rows.count == 1)
        #expect(directory.names.isEmpty)
    }

    @Test("a replay that meets the outage keeps the sealed file locked and resumes after the last line taken")
    func interrupted() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let other = try SettlementJournal(directory: directory.path, workerID: "w2")
        let ledger = FakeLedger()
        let first = (0..<3).map { JournalSamples.settlement($0) }
        for settlement in first { try journal.append(settlement) }
        ledger.fail(with: JournalSamples.down)

        let stopped = journal.replay(using: ledger.settle)

        #expect(stopped.failure == JournalSamples.down)
        #expect(stopped.settled == 0)
        #expect(directory.journalFiles.count == 1)
        #expect(directory.journalFiles.first?.hasSuffix(".replay") == true)
        // Sealed but still ours: another worker does not adopt it.
        #expect(other.replay(using: ledger.settle).adopted == 0)

        // Appends go to a new file meanwhile.
        let later = JournalSamples.settlement(9)
        try journal.append(later)
        #expect(directory.journalFiles.count == 2)

        ledger.fail(with: nil)
        let resumed = journal.replay(using: ledger.settle)
        #expect(resumed.settled == 4)
        #expect(resumed.filesDone == 2)
        #expect(Set(ledger.rows.keys) == Set((first + [later]).map(\.requestID)))
        #expect(directory.journalFiles.isEmpty)
    }

    @Test("a replay cut by an outage mid-file does not send the lines already taken again")
    func resumesWhereItStopped() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let ledger = FakeLedger()
        let settlements = (0..<4).map { JournalSamples.settlement($0) }
        for settlement in settlements { try journal.append(settlement) }
        var taken = 0
        let flaky: (Settlement) throws(StoreError) -> Bool = { settlement throws(StoreError) in
            taken += 1
            if taken == 3 { throw StoreError(.connectionLost, "server closed the connection") }
            return try ledger.record(settlement)
        }

        let stopped = journal.replay(using: oneByOne(flaky))
        let resumed = journal.replay(using: ledger.settle)

        #expect(stopped.settled == 2)
        #expect(stopped.failure?.code == .connectionLost)
        #expect(resumed.settled == 2)
        #expect(resumed.duplicates == 0)
        #expect(ledger.calls == settlements.map(\.requestID))
        #expect(directory.journalFiles.isEmpty)
    }

    @Test("a line the database refuses goes to a .rejected file and the rest is replayed")
    func rejected() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let ledger = FakeLedger()
        let settlements = (0..<3).map { JournalSamples.settlement($0) }
        for settlement in settlements { try journal.append(settlement) }
        ledger.refuse(settlements[1].requestID)

        let report = journal.replay(using: ledger.settle)

        #expect(report.settled == 2)
        #expect(report.rejected == 1)
        #expect(report.failure == nil)
        #expect(directory.journalFiles.isEmpty)
        let rejectedName = SettlementJournal.fileName(forWorker: "w1") + ".rejected"
        #expect(directory.names == [rejectedName])
        #expect(directory.contents(rejectedName).contains(settlements[1].requestID))
    }

    @Test("the files of a dead worker are adopted, a torn last line set aside, and deleted once replayed")
    func orphans() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let dead = try SettlementJournal(directory: directory.path, workerID: "dead/1")
        let alive = try SettlementJournal(directory: directory.path, workerID: "alive/1")
        let survivor = try SettlementJournal(directory: directory.path, workerID: "survivor/1")
        let ledger = FakeLedger()
        let lost = (0..<3).map { JournalSamples.settlement($0) }
        for settlement in lost { try dead.append(settlement) }
        try alive.append(JournalSamples.settlement(5))
        dead.close()
        let torn = String(SettlementJournalEntry(JournalSamples.settlement(7)).line.prefix(50))
        try directory.write("crashed-00000000.17.journal", SettlementJournalEntry(lost[0]).line + torn)

        let report = survivor.replay(using: ledger.settle)

        #expect(report.adopted == 2)
        #expect(report.settled == 3)
        #expect(report.duplicates == 1)
        #expect(report.rejected == 1)
        #expect(Set(ledger.rows.keys) == Set(lost.map(\.requestID)))
        // The live worker's file is untouched: its lock is held.
        #expect(directory.journalFiles.count == 1)
        #expect(directory.journalFiles.first?.hasPrefix(SettlementJournal.fileName(forWorker: "alive/1")) == true)
        #expect(directory.names.contains("crashed-00000000.rejected"))
        #expect(alive.hasEntries)
    }

    @Test("before a release, the supervisor replays exactly the exited worker's files, or waits for their replayer")
    func leftovers() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let exited = try SettlementJournal(directory: directory.path, workerID: "host/9/0/1")
        let busy = try SettlementJournal(directory: directory.path, workerID: "host/9/1/2")
        let other = try SettlementJournal(directory: directory.path, workerID: "host/9/2/3")
        let ledger = FakeLedger()
        let lost = [JournalSamples.settlement(0), JournalSamples.settlement(1)]
        for settlement in lost { try exited.append(settlement) }
        exited.close()
        try busy.append(JournalSamples.settlement(2))
        try other.append(JournalSamples.settlement(3))

        let report = try SettlementJournal.replayLeftovers(
            ofWorker: "host/9/0/1", directory: directory.path, using: ledger.settle)
        let nothing = try SettlementJournal.replayLeftovers(
            ofWorker: "host/9/0/1", directory: directory.path, using: ledger.settle)

        #expect(report.settled == 2)
        #expect(Set(ledger.rows.keys) == Set(lost.map(\.requestID)))
        #expect(nothing == SettlementJournal.Report())
        #expect(directory.journalFiles.count == 2)
        #expect(throws: StoreError.self) {
            try SettlementJournal.replayLeftovers(
                ofWorker: "host/9/1/2", directory: directory.path, using: ledger.settle)
        }
        ledger.fail(with: JournalSamples.down)
        busy.close()
        #expect(throws: JournalSamples.down) {
            try SettlementJournal.replayLeftovers(
                ofWorker: "host/9/1/2", directory: directory.path, using: ledger.settle)
        }
        #expect(directory.journalFiles.count == 2)
    }

    @Test("appends from many threads are whole lines, each replayed exactly once")
    func concurrentAppends() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let ledger = FakeLedger()
        let appended = Collected<String>()

        ThreadGroup.run(8) { thread in
            for index in 0..<40 {
                let settlement = JournalSamples.settlement(thread * 100 + index)
                do {
                    try journal.append(settlement)
                    appended.append(settlement.requestID)
                } catch {
                    Issue.record("append failed: \(error)")
                }
                // A replay racing the appends must lose none and take none twice.
                if index == 20 && thread == 0 { _ = journal.replay(using: ledger.settle) }
            }
        }
        let report = journal.replay(using: ledger.settle)

        #expect(report.failure == nil)
        #expect(appended.all.count == 320)
        #expect(Set(ledger.rows.keys) == Set(appended.all))
        #expect(ledger.calls.count == 320)
        #expect(directory.names.isEmpty)
    }

    @Test("the background replayer replays on its own, and stops when asked")
    func replayer() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        let journal = try SettlementJournal(directory: directory.path, workerID: "w1")
        let ledger = FakeLedger()
        let replayer = SettlementJournalReplayer(journal: journal, interval: .milliseconds(50), settle: ledger.settle)
        ledger.fail(with: JournalSamples.down)
        #expect(replayer.start())
        defer { replayer.stop() }

        let settlement = JournalSamples.settlement()
        try journal.append(settlement)
        #expect(JournalSamples.eventually { ledger.calls.contains(settlement.requestID) })
        #expect(ledger.rows.isEmpty)
        ledger.fail(with: nil)
        #expect(JournalSamples.eventually { directory.names.isEmpty })

        #expect(ledger.rows[settlement.requestID] != nil)
        replayer.stop()
        try journal.append(JournalSamples.settlement(1))
        let callsAfterStop = ledger.calls.count
        #expect(journal.replay(using: oneByOne { _ throws(StoreError) in false }).duplicates == 1)
        #expect(ledger.calls.count == callsAfterStop)
    }

    @Test("a directory that cannot be created is refused at once")
    func unusableDirectory() throws {
        let directory = try JournalDirectory()
        defer { directory.remove() }
        try directory.write("plain-file", "not a directory")

        #expect(throws: StoreError.self) {
            try SettlementJournal(directory: directory.path + "/plain-file/journal", workerID: "w1")
        }
        #expect(throws: StoreError.self) {
            try SettlementJournal(directory: directory.path + "/plain-file", workerID: "w1")
        }
    }
}
