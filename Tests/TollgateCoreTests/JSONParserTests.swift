import Foundation
import Testing

@testable import TollgateCore

@Suite("JSON parser")
struct JSONParserTests {
    private func parse(_ text: String, maxDepth: Int = 128) throws(JSONError) -> JSONValue {
        try JSONValue(parsing: Array(text.utf8), maxDepth: maxDepth)
    }

    /// The error a parse throws, or nil if it succeeds.
    private func failure(_ bytes: [UInt8], maxDepth: Int = 128) -> JSONError? {
        do {
            _ = try JSONValue(parsing: bytes, maxDepth: maxDepth)
            return nil
        } catch {
            return error
        }
    }

    @Test("parses every kind of value into the expected tree")
    func parsesValues() throws {
        let value = try parse(#" {"a":null,"b":[true,false],"c":-12.50e+3,"d":"x","e":{}} "#)
        #expect(
            value
                == .object([
                    JSONMember("a", .null), JSONMember("b", .array([.bool(true), .bool(false)])),
                    JSONMember("c", .number("-12.50e+3")), JSONMember("d", .string("x")),
                    JSONMember("e", .object([])),
                ]))
    }

    @Test("round-trips compact input byte for byte: order, duplicates, number literals")
    func roundTripsCompactInput() throws {
        let samples = [
            #"{"z":1,"a":2,"z":3}"#,
            #"{"n":[1e3,-0,12.50,0.0001,1E-7,-9223372036854775809,123456789012345678901234567890]}"#,
            #"[{"k":"v"},[],{},"",null,true,false]"#,
            #""unicode: é 👋 \u0000 \n \"q\" \\""#,
            #"{"nested":{"deeper":{"deepest":[[[]]]}}}"#,
            "42",
        ]
        for sample in samples {
            let value = try parse(sample)
            #expect(String(decoding: value.serialized(), as: UTF8.self) == sample)
        }
    }

    @Test("keeps duplicate members in order and the subscript returns the first")
    func keepsDuplicates() throws {
        let value = try parse(#"{"model":"a","model":"b"}"#)
        #expect(value.objectMembers?.map(\.key) == ["model", "model"])
        #expect(value["model"] == .string("a"))
    }

    @Test("decodes escapes, including surrogate pairs")
    func decodesEscapes() throws {
        let value = try parse(#""\"\\\/\b\f\n\r\t\u00e9\u20AC\ud83d\udc4b""#)
        #expect(value == .string("\"\\/\u{8}\u{C}\n\r\té€👋"))
    }

    @Test("replaces escaped lone surrogates with U+FFFD")
    func replacesLoneSurrogates() throws {
        #expect(try parse(#""\ud800""#) == .string("\u{FFFD}"))
        #expect(try parse(#""\udc00x""#) == .string("\u{FFFD}x"))
        #expect(try parse(#""\ud800\ud83d\udc4b""#) == .string("\u{FFFD}👋"))
        #expect(try parse(#""\ud800\n""#) == .string("\u{FFFD}\n"))
    }

    @Test("accepts raw multi-byte UTF-8 at the edges of each length class")
    func acceptsValidUTF8() throws {
        let text = "\u{80}\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}\u{E000}"
        #expect(try JSONValue(parsing: Array("\"\(text)\"".utf8)) == .string(text))
    }

    @Test(
        "rejects malformed input with the right code",
        arguments: [
            ("", JSONError.Code.unexpectedEnd),
            ("   ", .unexpectedEnd),
            (#"{"a":1"#, .unexpectedEnd),
            (#"{"a":"#, .unexpectedEnd),
            (#"["abc"#, .unexpectedEnd),
            (#""\u12"#, .unexpectedEnd),
            ("tru", .unexpectedEnd),
            ("[1,]", .unexpectedByte),
            (#"{"a":1,}"#, .unexpectedByte),
            ("[1 2]", .unexpectedByte),
            (#"{"a" 1}"#, .unexpectedByte),
            ("{a:1}", .unexpectedByte),
            ("NaN", .unexpectedByte),
            ("Infinity", .unexpectedByte),
            ("'x'", .unexpectedByte),
            ("nul1", .unexpectedByte),
            ("[1}", .unexpectedByte),
            ("01", .invalidNumber),
            ("-01", .invalidNumber),
            ("1.", .unexpectedEnd),
            ("1.e5", .invalidNumber),
            ("-", .unexpectedEnd),
            ("-a", .invalidNumber),
            ("1e+", .unexpectedEnd),
            ("-Infinity", .invalidNumber),
            ("+1", .unexpectedByte),
            (".5", .unexpectedByte),
            (#""\x""#, .invalidEscape),
            (#""\u12G4""#, .invalidEscape),
            (#""\'""#, .invalidEscape),
            ("\"a\tb\"", .controlCharacter),
            ("\"a\nb\"", .controlCharacter),
            ("\"\u{0}\"", .controlCharacter),
            ("{} {}", .trailingContent),
            ("1 2", .trailingContent),
            ("truex", .trailingContent),
        ]
    )
    func rejectsMalformedText(text: String, code: JSONError.Code) {
        #expect(failure(Array(text.utf8))?.code == code, "input: \(text)")
    }

    @Test(
        "rejects invalid UTF-8 in strings",
        arguments: [
            [0x80], [0xC0, 0xAF], [0xC1, 0xBF], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80], [0xF0, 0x80, 0x80, 0xAF],
            [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFF], [0xC3, 0x28], [0xE2, 0x82, 0x28],
        ] as [[UInt8]]
    )
    func rejectsInvalidUTF8(sequence: [UInt8]) {
        let bytes = [UInt8(ascii: "\"")] + sequence + [UInt8(ascii: "\"")]
        #expect(failure(bytes)?.code == .invalidUTF8)
        #expect(failure(bytes)?.offset == 1)
    }

    @Test("rejects a byte-order mark and raw non-ASCII outside strings")
    func rejectsBytesOutsideStrings() {
        #expect(failure([0xEF, 0xBB, 0xBF] + Array("{}".utf8))?.code == .unexpectedByte)
        #expect(failure(Array("[1,é]".utf8))?.code == .unexpectedByte)
    }

    @Test("reports the byte offset of the fault")
    func reportsOffsets() {
        #expect(failure(Array(#"{"a":[1,2,]}"#.utf8)) == JSONError(code: .unexpectedByte, offset: 10))
        #expect(failure(Array(#"{"a":01}"#.utf8)) == JSONError(code: .invalidNumber, offset: 6))
        #expect(failure(Array(#"{"a":"\q"}"#.utf8)) == JSONError(code: .invalidEscape, offset: 6))
    }

    @Test("limits nesting to maxDepth containers")
    func limitsDepth() throws {
        let ok = String(repeating: "[", count: 128) + String(repeating: "]", count: 128)
        let tooDeep = String(repeating: "[", count: 129) + String(repeating: "]", count: 129)
        #expect(failure(Array(ok.utf8)) == nil)
        #expect(failure(Array(tooDeep.utf8))?.code == .tooDeep)
        #expect(failure(Array(#"{"a":{"b":1}}"#.utf8), maxDepth: 1)?.code == .tooDeep)
        #expect(failure(Array(#"{"a":1}"#.utf8), maxDepth: 1) == nil)
        #expect(failure(Array("1".utf8), maxDepth: 0) == nil)
    }

    @Test("survives hostile nesting far beyond the limit without recursion")
    func survivesHostileNesting() {
        let bytes = [UInt8](repeating: UInt8(ascii: "["), count: 1_000_000)
        #expect(failure(bytes, maxDepth: Int.max)?.code == .tooDeep)
        let objects = Array(String(repeating: #"{"a":"#, count: 200_000).utf8)
        #expect(failure(objects, maxDepth: 5)?.code == .tooDeep)
    }

    @Test("parses an ArraySlice with offsets relative to the slice")
    func parsesSlices() throws {
        let bytes = Array(#"xx{"a":[1]}yy"#.utf8)
        #expect(try JSONValue(parsing: bytes[2..<11]) == .object([JSONMember("a", .array([.number("1")]))]))
        do {
            _ = try JSONValue(parsing: bytes[2..<12])
            Issue.record("trailing byte accepted")
        } catch {
            #expect(error == JSONError(code: .trailingContent, offset: 9))
        }
    }

    @Test("agrees with Foundation on which mutated ASCII documents are valid")
    func fuzzesMutations() {
        let seed = Array(
            #"{"model":"gpt-4o","messages":[{"role":"user","content":"h\n"}],"n":1.5e2,"t":[true,null]}"#.utf8)
        let alphabet = Array(#"{}[]:,"\e0123456789.-+tfnlrsaE "#.utf8) + [0x00, 0x0A, 0x09, 0x1F]
        var generator = SeededGenerator(seed: 0x7011_6a7e)
        var disagreements: [String] = []
        var accepted = 0

        for _ in 0..<4_000 {
            var bytes = seed
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let position = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes[position] = alphabet.randomElement(using: &generator) ?? 0
                case 1: bytes.remove(at: position)
                default: bytes.insert(alphabet.randomElement(using: &generator) ?? 0, at: position)
                }
            }
            let ours = failure(bytes) == nil
            let theirs = (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil
            if ours { accepted += 1 }
            if ours != theirs { disagreements.append(String(decoding: bytes, as: UTF8.self)) }
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(5))")
        // Both outcomes must be well represented, or the comparison proves little.
        #expect(accepted > 300 && accepted < 3_700, "accepted \(accepted)")
    }

    @Test("never traps on random bytes")
    func survivesRandomBytes() {
        var generator = SeededGenerator(seed: 42)
        var accepted = 0
        for length in 0..<2_000 {
            let bytes = (0..<(length % 64)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if failure(bytes) == nil { accepted += 1 }
        }
        // Random bytes are almost never JSON; a parser that accepts most of them is broken.
        #expect(accepted < 100)
    }
}
