/// The errors Tollgate itself produces. Codes are stable: clients and dashboards may key on them.
extension OpenAIError {
    static let invalidRequestType = "invalid_request_error"
    static let serverErrorType = "server_error"

    /// 400: the body is empty or not JSON.
    public static func invalidJSON() -> OpenAIError {
        OpenAIError(
            status: 400,
            message: "We could not parse the JSON body of your request. "
                + "Send one JSON object, encoded as UTF-8, as the request body.",
            type: invalidRequestType)
    }

    /// 400 with the given message, param and code.
    public static func invalidRequest(_ message: String, param: String?, code: String?) -> OpenAIError {
        OpenAIError(status: 400, message: message, type: invalidRequestType, param: param, code: code)
    }

    /// 404 "Invalid URL (POST /v1/x)".
    public static func notFound(method: String, path: String) -> OpenAIError {
        OpenAIError(status: 404, message: "Invalid URL (\(method) \(path))", type: invalidRequestType)
    }

    /// 405 with an `allow` header.
    public static func methodNotAllowed(method: String, path: String, allowed: String) -> OpenAIError {
        OpenAIError(
            status: 405, message: "Invalid method for URL (\(method) \(path)); use \(allowed).",
            type: invalidRequestType, code: "method_not_allowed", headers: [("allow", allowed)])
    }

    /// 502: the upstream could not be reached (connection refused, DNS, TLS).
    public static func upstreamUnreachable() -> OpenAIError {
        OpenAIError(
            status: 502, message: "The upstream API could not be reached. Please try again.",
            type: serverErrorType, code: "upstream_unreachable")
    }

    /// 504: the upstream did not answer in time.
    public static func upstreamTimeout() -> OpenAIError {
        OpenAIError(
            status: 504, message: "The upstream API did not respond in time. Please try again.",
            type: serverErrorType, code: "upstream_timeout")
    }

    /// 502: the upstream answered with something that is not a valid response.
    public static func upstreamInvalidResponse() -> OpenAIError {
        OpenAIError(
            status: 502, message: "The upstream API returned an invalid response.",
            type: serverErrorType, code: "upstream_invalid_response")
    }

    /// Sent mid-stream (as an SSE error event) when the upstream stream broke off; the status
    /// (502) only matters if it is used before any byte was sent.
    public static func upstreamStreamBroken() -> OpenAIError {
        OpenAIError(
            status: 502, message: "The upstream stream was interrupted before it completed.",
            type: serverErrorType, code: "upstream_stream_interrupted")
    }

    /// 503: this worker is at its concurrency limit.
    public static func overloaded() -> OpenAIError {
        OpenAIError(
            status: 503, message: "The gateway is overloaded. Please try again shortly.",
            type: serverErrorType, code: "overloaded")
    }

    /// 500: a fault inside Tollgate; the detail goes to the log, never to the client.
    public static func internalError() -> OpenAIError {
        OpenAIError(
            status: 500, message: "The gateway had an internal error while processing your request.",
            type: serverErrorType, code: "internal_error")
    }

    /// 413: the request body exceeds `limit` bytes.
    public static func bodyTooLarge(limit: Int) -> OpenAIError {
        OpenAIError(
            status: 413, message: "The request body is larger than the limit of \(limit) bytes.",
            type: invalidRequestType, code: "request_too_large")
    }
}
