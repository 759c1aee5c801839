import Testing

@testable import TollgateCore

@Suite("JSON value accessors and edits")
struct JSONValueTests {
    @Test(
        "intValue accepts only integer literals that fit in Int",
        arguments: [
            ("0", 0), ("-0", 0), ("42", 42), ("-17", -17), ("9223372036854775807", Int.max),
            ("-9223372036854775808", Int.min),
        ] as [(String, Int)]
    )
    func intValueAccepts(literal: String, expected: Int) {
        #expect(JSONValue.number(literal).intValue == expected)
    }

    @Test(
        "intValue is nil for fractions, exponents, overflow and junk",
        arguments: ["1.0", "1e3", "9223372036854775808", "-9223372036854775809", "", "-", "+1", "1a", "0x10"]
    )
    func intValueRejects(literal: String) {
        #expect(JSONValue.number(literal).intValue == nil)
    }

    @Test("typed accessors return nil for other kinds")
    func typedAccessors() {
        let values: [JSONValue] = [.null, .bool(true), .number("1"), .string("s"), .array([]), .object([])]
        #expect(values.compactMap(\.stringValue) == ["s"])
        #expect(values.compactMap(\.boolValue) == [true])
        #expect(values.compactMap(\.intValue) == [1])
        #expect(values.compactMap(\.arrayValue).count == 1)
        #expect(values.compactMap(\.objectMembers).count == 1)
        #expect(values.filter(\.isNull).count == 1)
        #expect(JSONValue.string("x").intValue == nil)
        #expect(JSONValue.array([.string("a")])["a"] == nil)
    }

    @Test("setMember replaces the first member in place or appends")
    func setMember() {
        var value: JSONValue = ["a": 1, "b": 2, "a": 3]
        value.setMember("a", to: "x")
        #expect(value == ["a": "x", "b": 2, "a": 3])
        value.setMember("c", to: true)
        #expect(value == ["a": "x", "b": 2, "a": 3, "c": true])

        var array: JSONValue = [1]
        array.setMember("a", to: 1)
        #expect(array == [1])
    }

    @Test("removeMembers removes every member with the name")
    func removeMembers() {
        var value: JSONValue = ["a": 1, "b": 2, "a": 3]
        value.removeMembers(named: "a")
        #expect(value == ["b": 2])
        value.removeMembers(named: "missing")
        #expect(value == ["b": 2])
    }

    @Test("literals build the same values as the cases")
    func literals() {
        let value: JSONValue = ["s": "t", "n": 5, "b": false, "a": [1, "x"]]
        let expected = JSONValue.object([
            JSONMember("s", .string("t")), JSONMember("n", .number("5")), JSONMember("b", .bool(false)),
            JSONMember("a", .array([.number("1"), .string("x")])),
        ])
        #expect(value == expected)
    }
}

@Suite("JSON serializer")
struct JSONSerializerTests {
    private func text(_ value: JSONValue) -> String {
        String(decoding: value.serialized(), as: UTF8.self)
    }

    @Test("escapes only quotes, backslashes and control characters")
    func minimalEscaping() {
        let value = JSONValue.string("\"\\/\n\r\t\u{8}\u{C}\u{0}\u{1F}\u{7F}é👋")
        #expect(text(value) == #""\"\\/\n\r\t\b\f\u0000\u001f"# + "\u{7F}é👋\"")
    }

    @Test("writes compact objects with keys escaped and number literals verbatim")
    func compactObjects() {
        let value: JSONValue = ["k\"ey": [.null, .number("1.50"), .number("-0")], "": .object([])]
        #expect(text(value) == #"{"k\"ey":[null,1.50,-0],"":{}}"#)
    }

    @Test("serialize(into:) appends to existing bytes")
    func appends() {
        var buffer = Array("data: ".utf8)
        JSONValue.bool(true).serialize(into: &buffer)
        #expect(String(decoding: buffer, as: UTF8.self) == "data: true")
    }

    @Test("serialized strings parse back to the same value")
    func roundTripsEveryControlCharacter() throws {
        let text = String(decoding: (0..<0x80).map { UInt8($0) }, as: UTF8.self) + "é😀"
        let value = JSONValue.string(text)
        #expect(try JSONValue(parsing: value.serialized()) == value)
    }
}
