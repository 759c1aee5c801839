/// Tokens of one request, as reported by the upstream or estimated. All counts in tokens.
public struct Usage: Sendable, Equatable {
    public var inputTokens: Int
    /// Part of `inputTokens`: input served from the provider's prompt cache.
    public var cachedInputTokens: Int
    public var outputTokens: Int
    /// Part of `outputTokens`: hidden reasoning.
    public var reasoningTokens: Int
    public var totalTokens: Int

    /// `totalTokens` nil means input + output (saturating at `Int.max`, never trapping).
    public init(
        inputTokens: Int = 0, cachedInputTokens: Int = 0, outputTokens: Int = 0,
        reasoningTokens: Int = 0, totalTokens: Int? = nil
    ) {
        self.inputTokens = inputTokens
        self.cachedInputTokens = cachedInputTokens
        self.outputTokens = outputTokens
        self.reasoningTokens = reasoningTokens
        self.totalTokens = totalTokens ?? Self.saturatingSum(inputTokens, outputTokens)
    }

    static func saturatingSum(_ left: Int, _ right: Int) -> Int {
        let (sum, overflow) = left.addingReportingOverflow(right)
        guard overflow else { return sum }
        return right > 0 ? Int.max : Int.min
    }
}
