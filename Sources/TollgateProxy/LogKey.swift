/// Every metadata key Tollgate logs, declared in one place so log lines stay greppable and no
/// call site invents a key that might carry a secret.
public enum LogKey: String, Sendable {
    case requestID = "request_id"
    case upstreamRequestID = "upstream_request_id"
    case api
    case model
    case stream
    case status
    case outcome
    case keySource = "key_source"
    case inputTokens = "input_tokens"
    case cachedInputTokens = "cached_input_tokens"
    case outputTokens = "output_tokens"
    case reasoningTokens = "reasoning_tokens"
    case totalTokens = "total_tokens"
    case estimated
    case durationMilliseconds = "duration_ms"
    case upstreamMilliseconds = "upstream_ms"
    case failure
    case code
    case path
    case method
    case pid
    case worker
    case workers
    case threads
    case socket
    case upstream
    case signal
    case exitStatus = "exit_status"
    case inFlight = "in_flight"
    case requests
    case detail
}
