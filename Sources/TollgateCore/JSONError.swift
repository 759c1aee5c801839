/// Why a byte sequence is not a strict RFC 8259 JSON document, and where.
///
/// The description names only the code and the offset, never the input, so it is safe to log.
public struct JSONError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A stable reason, usable as a metric label.
    public enum Code: String, Sendable {
        case unexpectedEnd, unexpectedByte, invalidUTF8, invalidEscape, invalidNumber, tooDeep,
            trailingContent, controlCharacter
    }

    public let code: Code
    /// Byte offset where it went wrong, counted from the first byte given to the parser.
    public let offset: Int

    public init(code: Code, offset: Int) {
        self.code = code
        self.offset = offset
    }

    public var description: String {
        "JSONError(\(code.rawValue) at byte \(offset))"
    }
}
