/// What Tollgate needs to know of a client's request, and the body to send upstream.
public struct InspectedRequest: Sendable {
    public let api: API
    public let model: String
    public let stream: Bool
    /// Chat: whether the client itself set stream_options.include_usage = true (the last such
    /// member, as the upstream reads it). Responses: always true (usage is in the terminal event).
    public let clientWantsUsage: Bool
    /// The output cap the client asked for, in tokens (max_completion_tokens, else max_tokens for
    /// chat; max_output_tokens for responses), nil when absent or null.
    public let maxOutputTokens: Int?
    /// Types of Responses `tools` entries that are not "function"/"custom" (hosted tools), in
    /// order; empty for chat.
    public let hostedTools: [String]
    /// `TokenEstimator.inputTokens(of:api:)` of the body, in tokens.
    public let estimatedInputTokens: Int
    /// Bytes to forward upstream: the client's body unchanged, except chat streams, where
    /// stream_options.include_usage is set to true (other stream_options members kept) by
    /// splicing, so the rest stays byte-identical.
    public let upstreamBody: [UInt8]
    public let document: JSONDocument

    public init(
        api: API, model: String, stream: Bool, clientWantsUsage: Bool, maxOutputTokens: Int?,
        hostedTools: [String], estimatedInputTokens: Int, upstreamBody: [UInt8], document: JSONDocument
    ) {
        self.api = api
        self.model = model
        self.stream = stream
        self.clientWantsUsage = clientWantsUsage
        self.maxOutputTokens = maxOutputTokens
        self.hostedTools = hostedTools
        self.estimatedInputTokens = estimatedInputTokens
        self.upstreamBody = upstreamBody
        self.document = document
    }
}
