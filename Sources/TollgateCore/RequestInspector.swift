/// Validates a client's request body and extracts what metering needs (model, stream, output
/// cap, estimate), preparing the body to forward. Pure: no I/O.
///
/// Checks are limited to what Tollgate relies on; everything else is left to the upstream.
/// Null is accepted wherever the upstream accepts it (`stream`, `stream_options`, the output
/// caps, `input`) and means "absent".
public enum RequestInspector {
    /// Validates and inspects. Errors (all 400, type invalid_request_error):
    /// - body empty or not JSON → `OpenAIError.invalidJSON()` (code nil, param nil)
    /// - JSON but not an object → "The request body must be a JSON object."
    /// - a top-level member given twice → param named, code "duplicate_parameter" (the upstream
    ///   would read the last one, Tollgate the first: metering must not be fooled)
    /// - model missing, null or "" → param "model", code "missing_required_parameter";
    ///   model not a string → code "invalid_type"
    /// - stream present and not bool → param "stream", code "invalid_type"
    /// - chat: messages missing → param "messages", code "missing_required_parameter";
    ///   not an array → code "invalid_type"
    /// - chat streams: stream_options not an object, or its include_usage not a bool → param
    ///   "stream_options" / "stream_options.include_usage", code "invalid_type"
    /// - responses: input present but neither string nor array → param "input", "invalid_type"
    /// - max_tokens / max_completion_tokens (chat), max_output_tokens (responses) present and
    ///   not an integer in 0...Int.max → param named, code "invalid_value"
    public static func inspect(api: API, body: [UInt8]) throws(OpenAIError) -> InspectedRequest {
        let document: JSONDocument
        do {
            document = try JSONDocument(bytes: body)
        } catch {
            throw OpenAIError.invalidJSON()
        }
        guard let members = document.root.objectMembers else {
            throw OpenAIError.invalidRequest("The request body must be a JSON object.", param: nil, code: nil)
        }
        try rejectDuplicates(in: members)

        let root = document.root
        let model = try requireModel(root)
        let stream = try optionalBool(root["stream"], param: "stream") ?? false
        try validateItems(root, api: api)
        let maxOutputTokens = try outputCap(root, api: api)

        var clientWantsUsage = true
        var upstreamBody = body
        if api == .chatCompletions {
            (clientWantsUsage, upstreamBody) = try usageInjection(document, stream: stream)
        }

        return InspectedRequest(
            api: api, model: model, stream: stream, clientWantsUsage: clientWantsUsage,
            maxOutputTokens: maxOutputTokens, hostedTools: api == .responses ? hostedTools(root) : [],
            estimatedInputTokens: TokenEstimator.inputTokens(of: root, api: api),
            upstreamBody: upstreamBody, document: document)
    }

    private static func rejectDuplicates(in members: [JSONMember]) throws(OpenAIError) {
        var seen = Set<String>(minimumCapacity: members.count)
        for member in members where !seen.insert(member.key).inserted {
            throw OpenAIError.invalidRequest(
                "The parameter '\(member.key)' appears more than once in the request body.",
                param: member.key, code: "duplicate_parameter")
        }
    }

    private static func requireModel(_ root: JSONValue) throws(OpenAIError) -> String {
        switch root["model"] {
        case .string(let model)? where !model.isEmpty:
            return model
        case nil, .null?, .string?:
            throw missing("model")
        default:
            throw invalidType("model", expected: "a non-empty string")
        }
    }

    /// Chat `messages` must be an array; Responses `input`, when given, a string or an array.
    private static func validateItems(_ root: JSONValue, api: API) throws(OpenAIError) {
        switch api {
        case .chatCompletions:
            switch root["messages"] {
            case .array?: return
            case nil, .null?: throw missing("messages")
            default: throw invalidType("messages", expected: "an array")
            }
        case .responses:
            switch root["input"] {
            case nil, .null?, .string?, .array?: return
            default: throw invalidType("input", expected: "a string or an array")
            }
        }
    }

    private static func outputCap(_ root: JSONValue, api: API) throws(OpenAIError) -> Int? {
        switch api {
        case .chatCompletions:
            let completionCap = try tokenCount(root["max_completion_tokens"], param: "max_completion_tokens")
            let legacyCap = try tokenCount(root["max_tokens"], param: "max_tokens")
            return completionCap ?? legacyCap
        case .responses:
            return try tokenCount(root["max_output_tokens"], param: "max_output_tokens")
        }
    }

    private static func hostedTools(_ root: JSONValue) -> [String] {
        guard let tools = root["tools"]?.arrayValue else { return [] }
        return tools.compactMap { tool in
            guard let type = tool["type"]?.stringValue, type != "function", type != "custom" else { return nil }
            return type
        }
    }
}
