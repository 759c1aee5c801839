import Testing

@testable import TollgateCore

@Suite("SSE parser")
struct SSEParserTests {
    static let endings = ["\n", "\r\n", "\r"]

    /// Feeds `bytes` cut at the given offsets, then finishes.
    private func items(of bytes: [UInt8], cuts: [Int]) throws -> [SSEItem] {
        var parser = SSEParser()
        var result: [SSEItem] = []
        var start = 0
        for cut in cuts + [bytes.count] {
            result += try parser.feed(Array(bytes[start..<cut]))
            start = cut
        }
        return result + parser.finish()
    }

    @Test("frames a chat stream into its events and comment", arguments: endings)
    func framesChatStream(ending: String) throws {
        let items = try Fixtures.items(of: Fixtures.stream(Fixtures.chatStreamLines, ending: ending))
        let events = Fixtures.events(items)

        #expect(items.count == 7)
        #expect(items[1] == .comment("keep-alive"))
        #expect(events.count == 6)
        #expect(events.allSatisfy { $0.event == nil && $0.id == nil })
        #expect(events.last == SSEEvent(data: "[DONE]"))
        #expect(events[1].data.contains(#""content":"Héllo""#))
        #expect(events.dropLast().allSatisfy { (try? JSONValue(parsing: Array($0.data.utf8))) != nil })
    }

    @Test("frames a Responses stream with event names, ids and multi-line data", arguments: endings)
    func framesResponsesStream(ending: String) throws {
        let items = try Fixtures.items(of: Fixtures.stream(Fixtures.responsesStreamLines, ending: ending))
        let events = Fixtures.events(items)

        #expect(items.count == 7)
        #expect(items[3] == .comment(""))
        #expect(
            events.map(\.event) == [
                "response.created", "response.in_progress", "response.output_item.added",
                "response.output_text.delta", "response.output_text.delta", "response.completed",
            ])
        #expect(events[2].data.split(separator: "\n").count == 2)
        #expect(try JSONValue(parsing: Array(events[2].data.utf8))["item"]?["id"] == "msg_1")
        #expect(events[3].id == "17")
        #expect(events[4].id == nil)
    }

    @Test("gives identical items for every single split point", arguments: endings)
    func everySplitPoint(ending: String) throws {
        for lines in [Fixtures.chatStreamLines, Fixtures.responsesStreamLines] {
            let bytes = Fixtures.stream(lines, ending: ending)
            let whole = try Fixtures.items(of: bytes)
            var mismatches: [Int] = []
            for cut in 0...bytes.count where try items(of: bytes, cuts: [cut]) != whole {
                mismatches.append(cut)
            }
            #expect(mismatches.isEmpty, "split points that changed the items: \(mismatches.prefix(10))")
        }
    }

    @Test("gives identical items fed byte by byte, and across line endings")
    func byteByByte() throws {
        for lines in [Fixtures.chatStreamLines, Fixtures.responsesStreamLines] {
            let reference = try Fixtures.items(of: Fixtures.stream(lines))
            for ending in Self.endings {
                let bytes = Fixtures.stream(lines, ending: ending)
                #expect(try items(of: bytes, cuts: Array(0..<bytes.count)) == reference)
                #expect(try Fixtures.items(of: bytes) == reference)
            }
        }
    }

    @Test("gives identical items for random multi-way splits of mixed line endings")
    func randomSplits() throws {
        var generator = SeededGenerator(seed: 7)
        let reference = try Fixtures.items(of: Fixtures.stream(Fixtures.responsesStreamLines))
        for _ in 0..<300 {
            var text = ""
            for line in Fixtures.responsesStreamLines {
                // After a CR, an empty line ended by LF would read as one CRLF and vanish.
                let choices = line.isEmpty && text.hasSuffix("\r") ? ["\r", "\r\n"] : Self.endings
                text += line + (choices.randomElement(using: &generator) ?? "\n")
            }
            let bytes = Array(text.utf8)
            let cuts = (0..<5).map { _ in Int.random(in: 0...bytes.count, using: &generator) }.sorted()
            #expect(try items(of: bytes, cuts: cuts) == reference)
        }
    }

    @Test("emits comments as soon as their line ends, before the event is complete")
    func commentsAreImmediate() throws {
        var parser = SSEParser()
        #expect(try parser.feed(Fixtures.bytes("data: a\n:  two spaces\n")) == [.comment(" two spaces")])
        #expect(try parser.feed(Fixtures.bytes(":no space\r")) == [.comment("no space")])
        #expect(try parser.feed(Fixtures.bytes("\n\n")) == [.event(SSEEvent(data: "a"))])
    }

    @Test("applies the WHATWG field rules")
    func fieldRules() throws {
        let stream = [
            "data:no space", "data:  two spaces", "data", "unknown: x", "event:e", "", "id: only", "retry: 10", "",
            "event: named-only", "", "data: x", "retry: 2500", "retry: 12ab", "id: a\u{0}b", "",
        ]
        let items = try Fixtures.items(of: Fixtures.stream(stream))
        var retried = SSEEvent(data: "x")
        retried.retry = 2500
        #expect(
            items == [
                .event(SSEEvent(event: "e", data: "no space\n two spaces\n")),
                .event(SSEEvent(event: "named-only", data: "")),
                .event(retried),
            ])
    }

    @Test("skips a byte-order mark at the start of the stream only")
    func byteOrderMark() throws {
        let bytes: [UInt8] =
            [0xEF, 0xBB, 0xBF] + Fixtures.bytes("data: a\n\n") + [0xEF, 0xBB, 0xBF]
            + Fixtures.bytes("data: b\n\n")
        // The second mark is part of the field name, which is then unknown.
        #expect(Fixtures.events(try Fixtures.items(of: bytes)).map(\.data) == ["a"])
        #expect(try items(of: bytes, cuts: [1, 2]) == [.event(SSEEvent(data: "a"))])
    }

    @Test("returns a trailing event without its blank line at finish")
    func finishFlushes() throws {
        var parser = SSEParser()
        #expect(
            try parser.feed(Fixtures.bytes("data: {\"a\":1}\n\ndata: last")) == [.event(SSEEvent(data: #"{"a":1}"#))])
        #expect(parser.finish() == [.event(SSEEvent(data: "last"))])
        #expect(parser.finish().isEmpty)

        var crParser = SSEParser()
        #expect(try crParser.feed(Fixtures.bytes("event: x\rdata: y\r")).isEmpty)
        #expect(crParser.finish() == [.event(SSEEvent(event: "x", data: "y"))])
    }

    @Test("decodes invalid UTF-8 with replacement characters")
    func invalidUTF8() throws {
        let bytes = Fixtures.bytes("data: a") + [0xFF, 0xC3] + Fixtures.bytes("\n\n")
        #expect(try Fixtures.items(of: bytes) == [.event(SSEEvent(data: "a\u{FFFD}\u{FFFD}"))])
    }

    @Test("fails an event larger than maxEventBytes and stays failed")
    func eventTooLarge() throws {
        var parser = SSEParser(maxEventBytes: 16)
        #expect(try parser.feed(Fixtures.bytes("data: 0123456789\n\n")) == [.event(SSEEvent(data: "0123456789"))])
        #expect(throws: SSEError(code: .eventTooLarge)) { try parser.feed(Fixtures.bytes("data: 01234\ndata: 5")) }
        #expect(throws: SSEError(code: .eventTooLarge)) { try parser.feed(Fixtures.bytes("\n\n")) }
        #expect(parser.finish().isEmpty)
    }

    @Test("bounds an endless line without a line ending")
    func endlessLine() throws {
        var parser = SSEParser(maxEventBytes: 1_000)
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 300)
        for _ in 0..<3 { #expect(try parser.feed(chunk).isEmpty) }
        #expect(throws: SSEError(code: .eventTooLarge)) { try parser.feed(chunk) }
    }

    @Test("accepts an event of exactly maxEventBytes")
    func exactLimit() throws {
        var parser = SSEParser(maxEventBytes: 12)
        #expect(try parser.feed(Fixtures.bytes("data: 012345\n\n")) == [.event(SSEEvent(data: "012345"))])
    }

    @Test("reads from raw buffers as well as arrays")
    func rawBuffers() throws {
        var parser = SSEParser()
        let bytes = Fixtures.bytes("data: raw\n\n")
        let items = try bytes.withUnsafeBytes { raw in try parser.feed(raw) }
        #expect(items == [.event(SSEEvent(data: "raw"))])
    }

    @Test("gives the same items for random streams however they are split, without trapping")
    func randomStreams() throws {
        var generator = SeededGenerator(seed: 99)
        let fragments: [[UInt8]] = [
            Fixtures.bytes("data: x"), Fixtures.bytes("data"), Fixtures.bytes(":c"), Fixtures.bytes("event: e"),
            Fixtures.bytes("id: 1"), Fixtures.bytes("retry: 9"), Fixtures.bytes("é"), [0xFF], [0xE2, 0x82],
            [0x0A], [0x0D], [0x0D, 0x0A], [0x0A, 0x0A], [0x00], Fixtures.bytes(": "),
        ]
        var sawEvents = 0
        for _ in 0..<400 {
            let bytes = (0..<40).flatMap { _ in fragments.randomElement(using: &generator) ?? [] }
            let whole = try Fixtures.items(of: bytes)
            let cuts = (0..<6).map { _ in Int.random(in: 0...bytes.count, using: &generator) }.sorted()
            #expect(try items(of: bytes, cuts: cuts) == whole)
            sawEvents += Fixtures.events(whole).count
        }
        #expect(sawEvents > 100)
    }
}

@Suite("SSE event encoding")
struct SSEEventTests {
    @Test("encodes event, data lines, id and retry with LF endings")
    func encodesFields() {
        var event = SSEEvent(event: "response.output_text.delta", data: "a\nb", id: "7")
        event.retry = 300
        let text = String(decoding: event.encoded(), as: UTF8.self)
        #expect(text == "event: response.output_text.delta\ndata: a\ndata: b\nid: 7\nretry: 300\n\n")
        #expect(String(decoding: SSEEvent(data: #"{"x":1}"#).encoded(), as: UTF8.self) == "data: {\"x\":1}\n\n")
    }

    @Test("splits CR and CRLF in data into lines and strips breaks from event and id")
    func neutralisesLineBreaks() {
        let event = SSEEvent(event: "a\nevent: b", data: "1\r\n2\r3\n", id: "x\ry")
        let text = String(decoding: event.encoded(), as: UTF8.self)
        #expect(text == "event: aevent: b\ndata: 1\ndata: 2\ndata: 3\ndata: \nid: xy\n\n")
    }

    @Test("round-trips through the parser")
    func roundTrips() throws {
        for original in [
            SSEEvent(data: ""), SSEEvent(data: "\n\n"), SSEEvent(event: "e", data: " lead", id: "i"),
            SSEEvent(data: "é\n👋"),
        ] {
            #expect(try Fixtures.items(of: original.encoded()) == [.event(original)])
        }
    }
}
