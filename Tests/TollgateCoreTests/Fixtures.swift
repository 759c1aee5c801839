import TollgateCore

/// Wire samples shaped like the captures in docs/openai-wire.md, shared by the suites.
enum Fixtures {
    /// A chat stream with include_usage: role chunk, two content chunks (one with multi-byte
    /// UTF-8), a finish chunk, the usage chunk, a keep-alive comment, then [DONE].
    static let chatStreamLines: [String] = [
        #"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1770933892,"model":"gpt-4.1-nano","#
            + #""service_tier":"default","system_fingerprint":"fp_1","choices":[{"index":0,"delta":"#
            + #"{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null,"#
            + #""obfuscation":"yhjo"}"#,
        "",
        ": keep-alive",
        "",
        #"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":"#
            + #"{"content":"Héllo"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "",
        #"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":"#
            + #"{"content":" wörld 👋"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "",
        #"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"#
            + #""logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
        "",
        #"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":16,"#
            + #""completion_tokens":300,"total_tokens":316,"prompt_tokens_details":{"cached_tokens":4,"#
            + #""audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":10,"audio_tokens":0}}}"#,
        "",
        "data: [DONE]",
        "",
    ]

    /// The content deltas of `chatStreamLines`.
    static let chatDeltaText = "Héllo" + " wörld 👋"

    /// A Responses stream for a simple text answer, with a multi-line data event and an id.
    static let responsesStreamLines: [String] = [
        "event: response.created",
        #"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","#
            + #""status":"in_progress","usage":null}}"#,
        "",
        "event: response.in_progress",
        #"data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_1","usage":null}}"#,
        "",
        "event: response.output_item.added",
        #"data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"#,
        #"data: "item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
        "",
        ":",
        "",
        "event: response.output_text.delta",
        "id: 17",
        #"data: {"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_1","output_index":0,"#
            + #""content_index":0,"delta":"Grüße","logprobs":[],"obfuscation":"mvk"}"#,
        "",
        "event: response.output_text.delta",
        #"data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"#
            + #""content_index":0,"delta":" 🌍","logprobs":[]}"#,
        "",
        "event: response.completed",
        #"data: {"type":"response.completed","sequence_number":5,"response":{"id":"resp_1","object":"response","#
            + #""status":"completed","usage":{"input_tokens":13,"input_tokens_details":{"cached_tokens":2},"#
            + #""output_tokens":12,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":25}}}"#,
        "",
    ]

    static let responsesDeltaText = "Grüße" + " 🌍"

    /// Joins lines with the given line ending (each line, including the last, is terminated).
    static func stream(_ lines: [String], ending: String = "\n") -> [UInt8] {
        Array(lines.map { $0 + ending }.joined().utf8)
    }

    static func bytes(_ text: String) -> [UInt8] {
        Array(text.utf8)
    }

    /// Parses a whole stream at once and finishes it.
    static func items(of bytes: [UInt8]) throws -> [SSEItem] {
        var parser = SSEParser()
        return try parser.feed(bytes) + parser.finish()
    }

    /// The events among `items`.
    static func events(_ items: [SSEItem]) -> [SSEEvent] {
        items.compactMap { item in
            if case .event(let event) = item { return event }
            return nil
        }
    }
}

/// A small deterministic generator (SplitMix64) so randomised tests replay identically.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
}
