/// Why an SSE stream cannot be parsed further.
public struct SSEError: Error, Sendable, Equatable {
    public enum Code: String, Sendable {
        /// One event (or one line) is larger than the parser's `maxEventBytes`.
        case eventTooLarge
    }

    public let code: Code

    public init(code: Code) {
        self.code = code
    }
}
