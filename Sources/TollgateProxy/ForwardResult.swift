import TollgateCore

/// What forwarding one request to the upstream produced, for settlement.
struct ForwardResult {
    /// The status the client received (0 when the client was gone before any answer).
    var status: Int
    var outcome: RequestOutcome
    /// Usage the upstream reported, if it did.
    var reportedUsage: Usage?
    /// UTF-8 bytes of generated text relayed to the client, for estimates.
    var relayedOutputBytes: Int
    /// Whether a successful upstream answer started (the upstream worked on the request, so
    /// usage it did not report must be estimated). An error answer does not count.
    var upstreamResponded: Bool
}

/// Receives an upstream answer and writes the client's answer; `finish` completes the client's
/// answer once the upstream call has ended, whichever way.
protocol Forwarder: UpstreamResponseHandler {
    func finish(_ outcome: UpstreamOutcome) -> ForwardResult
}

extension OpenAIError {
    /// The error a client gets when the upstream call failed before any answer was sent.
    static func forUpstream(_ failure: UpstreamFailure) -> OpenAIError {
        switch failure {
        case .unreachable: .upstreamUnreachable()
        case .timedOut, .stalled: .upstreamTimeout()
        case .interrupted: .upstreamStreamBroken()
        }
    }
}
