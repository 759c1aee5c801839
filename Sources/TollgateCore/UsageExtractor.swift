/// Reads the usage an upstream reported, in either API's shape.
///
/// Upstreams are not trusted to be tidy: a count that is missing, null, negative, fractional or
/// too large for `Int` is taken as 0; cached and reasoning counts are capped at the count they
/// are part of; a total that is missing or unusable becomes input + output.
public enum UsageExtractor {
    /// Chat `usage` object: prompt_tokens, completion_tokens, total_tokens,
    /// prompt_tokens_details.cached_tokens, completion_tokens_details.reasoning_tokens.
    /// Returns nil if `usage` is not an object.
    public static func chatUsage(_ usage: JSONValue) -> Usage? {
        extract(
            usage, input: "prompt_tokens", output: "completion_tokens",
            inputDetails: "prompt_tokens_details", outputDetails: "completion_tokens_details")
    }

    /// Responses `usage` object: input_tokens, input_tokens_details.cached_tokens,
    /// output_tokens, output_tokens_details.reasoning_tokens, total_tokens.
    /// Returns nil if `usage` is not an object.
    public static func responsesUsage(_ usage: JSONValue) -> Usage? {
        extract(
            usage, input: "input_tokens", output: "output_tokens",
            inputDetails: "input_tokens_details", outputDetails: "output_tokens_details")
    }

    /// Usage of a whole non-stream response body of the given API (the top-level `usage` of a
    /// chat completion or of a Response object). nil when absent, null or unparsable.
    public static func usage(ofResponseBody body: [UInt8], api: API) -> Usage? {
        guard let root = try? JSONValue(parsing: body), let usage = root["usage"] else { return nil }
        switch api {
        case .chatCompletions: return chatUsage(usage)
        case .responses: return responsesUsage(usage)
        }
    }

    private static func extract(
        _ usage: JSONValue, input: String, output: String, inputDetails: String, outputDetails: String
    ) -> Usage? {
        guard case .object = usage else { return nil }

        let inputTokens = count(usage[input])
        let outputTokens = count(usage[output])
        let cached = min(count(usage[inputDetails]?["cached_tokens"]), inputTokens)
        let reasoning = min(count(usage[outputDetails]?["reasoning_tokens"]), outputTokens)
        let total = usage["total_tokens"]?.intValue.flatMap { $0 >= 0 ? $0 : nil }

        return Usage(
            inputTokens: inputTokens, cachedInputTokens: cached, outputTokens: outputTokens,
            reasoningTokens: reasoning, totalTokens: total)
    }

    /// A non-negative integer count, or 0.
    private static func count(_ value: JSONValue?) -> Int {
        guard let number = value?.intValue, number > 0 else { return 0 }
        return number
    }
}
