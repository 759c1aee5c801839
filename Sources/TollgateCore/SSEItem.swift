/// What an SSE stream yields: events, and comments (keep-alives).
public enum SSEItem: Sendable, Equatable {
    case event(SSEEvent)
    /// Text after the ':' (one leading space stripped).
    case comment(String)
}
