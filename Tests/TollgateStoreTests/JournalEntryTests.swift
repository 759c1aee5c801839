import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite("Settlement journal lines")
struct JournalEntryTests {
    private func roundTrip(_ settlement: Settlement) throws -> Settlement {
        let line = SettlementJournalEntry(settlement).line
        #expect(line.hasSuffix("\n"))
        #expect(line.dropLast().contains("\n") == false)
        return try #require(SettlementJournalEntry(line: line.dropLast()[...])).settlement
    }

    @Test("every field of a settlement survives a line, ticket ids and reservation included")
    func everyField() throws {
        let original = JournalSamples.settlement(3)
        let read = try roundTrip(original)

        #expect(read.requestID == original.requestID)
        #expect(read.ticket.userID == "42")
        #expect(read.ticket.keyID == "7")
        #expect(read.ticket.keySource == .platform)
        #expect(read.ticket.reservedTokens == 303)
        #expect(read.api == .responses)
        #expect(read.model == "gpt-4o-mini")
        #expect(read.stream)
        #expect(read.outcome == .completed)
        #expect(read.status == 200)
        #expect(read.usage == original.usage)
        #expect(read.usageIsEstimated == false)
        #expect(read.startedAtMicroseconds == original.startedAtMicroseconds)
        #expect(read.timeToFirstByte == .microseconds(1_234))
        #expect(read.duration == .microseconds(56_792))
    }

    @Test("absent key id and first byte, BYOK, estimated usage and other outcomes come back as they were")
    func optionalFields() throws {
        var original = JournalSamples.settlement(0, keyID: nil)
        original.timeToFirstByte = nil
        original.ticket.keySource = .byok
        original.usageIsEstimated = true
        original.outcome = .clientAborted
        original.status = 499
        let read = try roundTrip(original)

        #expect(read.ticket.keyID == nil)
        #expect(read.timeToFirstByte == nil)
        #expect(read.ticket.keySource == .byok)
        #expect(read.usageIsEstimated)
        #expect(read.outcome == .clientAborted)
        #expect(read.status == 499)
        #expect(read.api == .chatCompletions)
        #expect(read.stream == false)
    }

    @Test(
        "a model name with tabs, newlines or backslashes stays on one line and reads back unchanged",
        arguments: ["a\tb", "line\nbreak", "back\\slash\\t", "cr\r\n", "\\", "ünïcødé-模型"])
    func escaping(model: String) throws {
        let read = try roundTrip(JournalSamples.settlement(1, model: model))
        #expect(read.model == model)
    }

    @Test("the upstream key is never written")
    func noKey() {
        let line = SettlementJournalEntry(JournalSamples.settlement()).line
        #expect(!line.contains("sk-platform-never-journaled"))
        #expect(
            line.split(separator: "\t", omittingEmptySubsequences: false).count == SettlementJournalEntry.fieldCount)
    }

    @Test("a torn, foreign or damaged line is refused rather than misread")
    func damaged() {
        let line = String(SettlementJournalEntry(JournalSamples.settlement()).line.dropLast())
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        func replacing(_ index: Int, _ value: String) -> String {
            var changed = fields
            changed[index] = value
            return changed.joined(separator: "\t")
        }

        #expect(SettlementJournalEntry(line: line[...]) != nil)
        #expect(SettlementJournalEntry(line: line.dropLast(3)) == nil)
        #expect(SettlementJournalEntry(line: line.prefix(40)) == nil)
        #expect(SettlementJournalEntry(line: ""[...]) == nil)
        #expect(SettlementJournalEntry(line: (line + "\textra")[...]) == nil)
        #expect(SettlementJournalEntry(line: replacing(0, "v2")[...]) == nil)
        #expect(SettlementJournalEntry(line: replacing(2, "")[...]) == nil)
        #expect(SettlementJournalEntry(line: replacing(4, "embeddings")[...]) == nil)
        #expect(SettlementJournalEntry(line: replacing(6, "yes")[...]) == nil)
        #expect(SettlementJournalEntry(line: replacing(10, "ten")[...]) == nil)
        #expect(SettlementJournalEntry(line: replacing(17, "soon")[...]) == nil)
    }

    @Test("file names come from the worker id: safe characters only, no leading dot, distinct per id")
    func fileNames() {
        let slashed = SettlementJournal.fileName(forWorker: "host/123/0/1")
        let underscored = SettlementJournal.fileName(forWorker: "host_123_0_1")
        #expect(slashed.hasPrefix("host_123_0_1-"))
        #expect(slashed != underscored)
        #expect(SettlementJournal.fileName(forWorker: "../etc").hasPrefix("_._etc-"))
        #expect(SettlementJournal.fileName(forWorker: "host/123/0/1") == slashed)
        let long = SettlementJournal.fileName(forWorker: String(repeating: "x", count: 500))
        #expect(long.utf8.count == SettlementJournal.maximumNameBytes + 9)
        for name in [slashed, underscored, long, SettlementJournal.fileName(forWorker: "a b\u{7}ç")] {
            #expect(
                name.utf8.allSatisfy { byte in
                    (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                        || byte == 0x2E || byte == 0x5F || byte == 0x2D
                })
        }
    }
}
