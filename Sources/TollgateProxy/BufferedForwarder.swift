import TollgateCore

/// Forwards a non-stream request: holds the whole upstream answer, reads its usage, then
/// answers the client in one piece.
final class BufferedForwarder: Forwarder {
    let client: any ClientConnection
    /// The API whose usage the body carries; nil for answers without usage (model lists).
    let api: API?
    var response: BufferedResponse
    /// Rewrites a successful JSON answer before delivery (nil keeps it byte for byte).
    let rewrite: (JSONValue) -> JSONValue?
    var headReceived = false
    var bodyReceived = false

    init(
        client: any ClientConnection, api: API?, maxResponseBytes: Int,
        rewrite: @escaping (JSONValue) -> JSONValue? = { _ in nil }
    ) {
        self.client = client
        self.api = api
        self.rewrite = rewrite
        self.response = BufferedResponse(limit: maxResponseBytes)
    }

    func upstreamDidReceiveHead(status: Int, headers: [(String, String)]) -> Bool {
        headReceived = true
        response.status = status
        response.headers = headers
        return true
    }

    func upstreamDidReceiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bodyReceived = true
        return response.append(bytes)
    }

    func finish(_ outcome: UpstreamOutcome) -> ForwardResult {
        var result = ForwardResult(
            status: 0, outcome: .upstreamError, reportedUsage: nil, relayedOutputBytes: 0,
            upstreamResponded: bodyReceived && (200..<300).contains(response.status))
        switch outcome {
        case .clientGone:
            result.outcome = .clientAborted
        case .failed(let failure):
            client.sendError(.forUpstream(failure))
            result.status = OpenAIError.forUpstream(failure).status
        case .abortedByHandler:
            // Only an oversized body makes this forwarder stop the upstream.
            client.sendError(.upstreamInvalidResponse())
            result.status = OpenAIError.upstreamInvalidResponse().status
        case .completed:
            let (status, json) = response.deliver(to: client, rewrite: rewrite)
            result.status = status
            if (200..<300).contains(status), let json {
                result.outcome = .completed
                result.reportedUsage = api.flatMap { Self.usage(of: json, api: $0) }
            }
        }
        return result
    }

    static func usage(of body: JSONValue, api: API) -> Usage? {
        guard let usage = body["usage"] else { return nil }
        switch api {
        case .chatCompletions: return UsageExtractor.chatUsage(usage)
        case .responses: return UsageExtractor.responsesUsage(usage)
        }
    }
}
