import TollgateCore

/// What an operator allows through Tollgate: which models, how many output tokens per request,
/// and whether Responses requests may use hosted tools (which the provider bills beyond tokens,
/// so Tollgate cannot meter them).
public struct Policy: Sendable {
    public enum OverCapAction: String, Sendable {
        /// Lower the request's output limit to the cap.
        case clamp
        /// Refuse the request with a 400.
        case reject
    }

    /// Allowed models; empty allows every model.
    public var allowedModels: [ModelPattern]
    /// Most output tokens one request may ask for; nil for no cap. With a cap, a request that
    /// names no limit gets the cap written into it, so its reservation bounds what it can spend.
    public var maxOutputTokens: Int?
    public var overCapAction: OverCapAction
    /// Output tokens reserved for a request with no limit when there is no cap either.
    public var defaultOutputReservation: Int
    public var refusesHostedTools: Bool

    public init(
        allowedModels: [ModelPattern] = [], maxOutputTokens: Int? = nil, overCapAction: OverCapAction = .clamp,
        defaultOutputReservation: Int = 4096, refusesHostedTools: Bool = true
    ) {
        self.allowedModels = allowedModels
        self.maxOutputTokens = maxOutputTokens
        self.overCapAction = overCapAction
        self.defaultOutputReservation = defaultOutputReservation
        self.refusesHostedTools = refusesHostedTools
    }

    public func allows(model: String) -> Bool {
        allowedModels.isEmpty || allowedModels.contains { $0.matches(model) }
    }

    /// What a request becomes under this policy: the body to forward and the output tokens to
    /// reserve, or the error that refuses it.
    public func apply(to request: InspectedRequest) -> Result<PolicyDecision, OpenAIError> {
        guard allows(model: request.model) else { return .failure(.modelNotAllowed(request.model)) }
        if refusesHostedTools, let tool = request.hostedTools.first {
            return .failure(.hostedToolRefused(tool))
        }
        guard let cap = maxOutputTokens else {
            return .success(
                PolicyDecision(
                    body: request.upstreamBody, outputTokens: request.maxOutputTokens ?? defaultOutputReservation))
        }
        if let asked = request.maxOutputTokens, asked <= cap {
            return .success(PolicyDecision(body: request.upstreamBody, outputTokens: asked))
        }
        if request.maxOutputTokens != nil && overCapAction == .reject {
            return .failure(.outputCapExceeded(cap, param: request.api.outputLimitFields[0]))
        }
        return .success(PolicyDecision(body: capped(request, at: cap), outputTokens: cap))
    }

    /// The forwarded body with every output-limit field the client sent set to `cap`, or the
    /// API's preferred field added when it sent none.
    private func capped(_ request: InspectedRequest, at cap: Int) -> [UInt8] {
        guard let document = try? JSONDocument(bytes: request.upstreamBody) else { return request.upstreamBody }
        let present = request.api.outputLimitFields.filter { document.root[$0].map { !$0.isNull } ?? false }
        var body = document.bytes
        for field in present.isEmpty ? [request.api.outputLimitFields[0]] : present {
            guard let current = try? JSONDocument(bytes: body) else { return request.upstreamBody }
            body = current.replacingMember(field, with: .number(String(cap)))
        }
        return body
    }
}

/// A request as the policy lets it through.
public struct PolicyDecision: Sendable {
    /// The body to forward upstream.
    public var body: [UInt8]
    /// The most output tokens the request can produce, for its reservation.
    public var outputTokens: Int
}

extension API {
    /// The body fields that limit output tokens, the preferred one first.
    var outputLimitFields: [String] {
        switch self {
        case .chatCompletions: ["max_completion_tokens", "max_tokens"]
        case .responses: ["max_output_tokens"]
        }
    }
}

extension OpenAIError {
    static func modelNotAllowed(_ model: String) -> OpenAIError {
        OpenAIError(
            status: 404, message: "The model `\(model.prefix(200))` does not exist or you do not have access to it.",
            type: "invalid_request_error", param: "model", code: "model_not_found")
    }

    static func hostedToolRefused(_ tool: String) -> OpenAIError {
        OpenAIError(
            status: 400,
            message: "Hosted tools such as `\(tool.prefix(100))` are not available through this gateway.",
            type: "invalid_request_error", param: "tools", code: "hosted_tool_not_allowed")
    }

    static func outputCapExceeded(_ cap: Int, param: String) -> OpenAIError {
        OpenAIError(
            status: 400, message: "This gateway allows at most \(cap) output tokens per request.",
            type: "invalid_request_error", param: param, code: "output_limit_exceeded")
    }
}

extension Policy {
    /// A model list (`{"object":"list","data":[…]}`) with only the allowed models.
    public func filterModelList(_ list: JSONValue) -> JSONValue? {
        guard let models = list["data"]?.arrayValue else { return nil }
        var filtered = list
        filtered.setMember("data", to: .array(models.filter { allows(model: $0["id"]?.stringValue ?? "") }))
        return filtered
    }
}
