/// Strict RFC 8259 parser over a borrowed byte buffer; builds a `JSONValue`.
///
/// Containers are parsed with an explicit stack rather than recursion, so hostile nesting costs
/// heap, not thread stack, and stops at `maxDepth` with `.tooDeep`. Strings are validated as
/// UTF-8 (overlong forms, encoded surrogates and code points above U+10FFFF are rejected).
/// An escaped lone surrogate (`"\ud800"`, or a high surrogate not followed by an escaped low
/// one) is replaced by U+FFFD rather than rejected: the client's bytes are forwarded as sent,
/// so the decoded text only feeds inspection and estimates.
///
/// The parser must not outlive the buffer it was given.
struct JSONParser {
    /// Depth cap applied whatever the caller asks: dropping a `JSONValue` is recursive, so a
    /// value nested much deeper than this could exhaust a small thread stack when freed.
    static let depthCeiling = 1_000

    // Internal rather than private so that JSONParser+String.swift can reach them.
    let input: UnsafeBufferPointer<UInt8>
    var index = 0
    /// Reused buffer for strings with escapes, to avoid one allocation per string.
    var scratch: [UInt8] = []
    private let maxDepth: Int
    private let recordsTopLevel: Bool

    /// When recording: for each member of a top-level object, the byte range of its value.
    private(set) var topLevelValueRanges: [Range<Int>] = []
    /// When the root is an object: the offset of its closing brace.
    private(set) var rootObjectEnd: Int?

    init(_ input: UnsafeBufferPointer<UInt8>, maxDepth: Int, recordsTopLevel: Bool = false) {
        self.input = input
        self.maxDepth = min(maxDepth, Self.depthCeiling)
        self.recordsTopLevel = recordsTopLevel
    }

    /// Parses the whole buffer as one value, surrounded by optional whitespace.
    mutating func parseDocument() throws(JSONError) -> JSONValue {
        skipWhitespace()
        let value = try parseValue()
        skipWhitespace()
        guard index == input.count else { throw failure(.trailingContent) }
        return value
    }

    /// An array or object being filled while its elements are parsed.
    private struct Frame {
        let isObject: Bool
        var elements: [JSONValue] = []
        var members: [JSONMember] = []
        var pendingKey = ""

        mutating func add(_ value: JSONValue) {
            if isObject {
                members.append(JSONMember(pendingKey, value))
            } else {
                elements.append(value)
            }
        }

        func finished() -> JSONValue {
            isObject ? .object(members) : .array(elements)
        }
    }

    private mutating func parseValue() throws(JSONError) -> JSONValue {
        var frames: [Frame] = []
        var topLevelValueStart = 0

        while true {
            skipWhitespace()
            if frames.count == 1 { topLevelValueStart = index }
            guard var value = try parseScalarOrOpen(&frames) else { continue }

            // Attach the finished value, then close containers until another value is expected.
            while let last = frames.indices.last {
                if last == 0, recordsTopLevel, frames[0].isObject {
                    topLevelValueRanges.append(topLevelValueStart..<index)
                }
                frames[last].add(value)
                skipWhitespace()
                guard index < input.count else { throw failure(.unexpectedEnd) }

                if input[index] == UInt8(ascii: ",") {
                    index += 1
                    if frames[last].isObject { frames[last].pendingKey = try parseMemberKey() }
                    break
                }
                let closer = frames[last].isObject ? UInt8(ascii: "}") : UInt8(ascii: "]")
                guard input[index] == closer else { throw failure(.unexpectedByte) }
                if last == 0, frames[0].isObject { rootObjectEnd = index }
                index += 1
                value = frames.removeLast().finished()
            }
            if frames.isEmpty { return value }
        }
    }

    /// Parses a scalar or an empty container and returns it, or opens a container (pushing a
    /// frame) and returns nil so the caller goes on with its first element.
    private mutating func parseScalarOrOpen(_ frames: inout [Frame]) throws(JSONError) -> JSONValue? {
        guard index < input.count else { throw failure(.unexpectedEnd) }

        switch input[index] {
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            let isObject = input[index] == UInt8(ascii: "{")
            guard frames.count < maxDepth else { throw failure(.tooDeep) }
            index += 1
            skipWhitespace()
            if index < input.count, input[index] == (isObject ? UInt8(ascii: "}") : UInt8(ascii: "]")) {
                if frames.isEmpty, isObject { rootObjectEnd = index }
                index += 1
                return isObject ? .object([]) : .array([])
            }
            var frame = Frame(isObject: isObject)
            if isObject { frame.pendingKey = try parseMemberKey() }
            frames.append(frame)
            return nil
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .number(try parseNumber())
        default:
            throw failure(.unexpectedByte)
        }
    }

    /// Parses `"key"` then `:`, leaving `index` at the member's value (whitespace skipped later).
    private mutating func parseMemberKey() throws(JSONError) -> String {
        skipWhitespace()
        guard index < input.count else { throw failure(.unexpectedEnd) }
        guard input[index] == UInt8(ascii: "\"") else { throw failure(.unexpectedByte) }
        let key = try parseString()
        skipWhitespace()
        guard index < input.count else { throw failure(.unexpectedEnd) }
        guard input[index] == UInt8(ascii: ":") else { throw failure(.unexpectedByte) }
        index += 1
        return key
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(JSONError) {
        let expected = UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount)
        for byte in expected {
            guard index < input.count else { throw failure(.unexpectedEnd) }
            guard input[index] == byte else { throw failure(.unexpectedByte) }
            index += 1
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, returned as the literal text.
    private mutating func parseNumber() throws(JSONError) -> String {
        let start = index
        if input[index] == UInt8(ascii: "-") { index += 1 }

        guard index < input.count else { throw failure(.unexpectedEnd) }
        if input[index] == UInt8(ascii: "0") {
            index += 1
            if index < input.count, isDigit(input[index]) { throw failure(.invalidNumber) }
        } else {
            try consumeDigits()
        }

        if index < input.count, input[index] == UInt8(ascii: ".") {
            index += 1
            try consumeDigits()
        }

        if index < input.count, input[index] | 0x20 == UInt8(ascii: "e") {
            index += 1
            if index < input.count, input[index] == UInt8(ascii: "+") || input[index] == UInt8(ascii: "-") {
                index += 1
            }
            try consumeDigits()
        }
        return String(decoding: UnsafeBufferPointer(rebasing: input[start..<index]), as: UTF8.self)
    }

    /// Consumes one or more ASCII digits.
    private mutating func consumeDigits() throws(JSONError) {
        guard index < input.count else { throw failure(.unexpectedEnd) }
        guard isDigit(input[index]) else { throw failure(.invalidNumber) }
        while index < input.count, isDigit(input[index]) { index += 1 }
    }

    private func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    private mutating func skipWhitespace() {
        while index < input.count {
            switch input[index] {
            case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"): index += 1
            default: return
            }
        }
    }

    func failure(_ code: JSONError.Code) -> JSONError {
        JSONError(code: code, offset: index)
    }
}
