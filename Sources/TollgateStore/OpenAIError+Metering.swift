import TollgateCore

/// The errors metering answers to clients. Messages never quote what the client sent as a key.
extension OpenAIError {
    private static let invalidRequest = "invalid_request_error"
    private static let serverError = "server_error"

    /// 401: no `Authorization: Bearer …` header.
    public static func missingAPIKey() -> OpenAIError {
        unauthorized(
            "You didn't provide an API key. Send your Tollgate key in an Authorization header using Bearer auth "
                + "(Authorization: Bearer YOUR_KEY).")
    }

    /// 401: a token that is not a Tollgate key, or one the store does not know.
    public static func incorrectAPIKey() -> OpenAIError {
        unauthorized("Incorrect API key provided. Check the key, or ask your Tollgate administrator for a new one.")
    }

    /// 401: a key that was revoked.
    public static func revokedAPIKey() -> OpenAIError {
        unauthorized("This API key has been revoked. Ask your Tollgate administrator for a new one.")
    }

    /// 401: the key's user (or the named user) is disabled.
    public static func disabledUser() -> OpenAIError {
        unauthorized("This account has been disabled. Contact your Tollgate administrator.")
    }

    /// 401 (header mode): the identity header is absent or empty.
    public static func missingIdentity() -> OpenAIError {
        unauthorized("The gateway could not tell who you are: no user identity came with the request.")
    }

    /// 401 (header mode): the named user does not exist.
    public static func unknownUser() -> OpenAIError {
        unauthorized("This user is not known to the gateway. Contact your Tollgate administrator.")
    }

    /// 429 `insufficient_quota`, with the standing in `x-tollgate-quota-*` headers. Not retryable:
    /// waiting seconds does not bring quota back.
    public static func insufficientQuota(_ standing: QuotaStanding, requested: Int) -> OpenAIError {
        var message =
            "You exceeded your token quota: this request may use up to \(requested) tokens, and "
            + "\(standing.remaining) of your \(standing.quota) remain."
        var headers = [
            ("x-should-retry", "false"), ("x-tollgate-quota-limit", String(standing.quota)),
            ("x-tollgate-quota-remaining", String(standing.remaining)),
        ]
        if let reset = standing.resetsAt {
            message += " The quota resets at \(reset)."
            headers.append(("x-tollgate-quota-reset", reset))
        } else {
            message += " Ask your Tollgate administrator to raise it."
        }
        return OpenAIError(
            status: 429, message: message, type: "insufficient_quota", code: "insufficient_quota", headers: headers)
    }

    /// 503: the metering database cannot be reached. Retryable (the default for a 503).
    public static func meteringUnavailable() -> OpenAIError {
        OpenAIError(
            status: 503, message: "The gateway cannot record usage right now. Please try again shortly.",
            type: serverError, code: "metering_unavailable")
    }

    /// 500: the caller has a BYOK key, but the gateway lacks the secret to decrypt it (or has the
    /// wrong one). A configuration fault that a retry will not clear.
    public static func byokUnavailable() -> OpenAIError {
        OpenAIError(
            status: 500,
            message: "The gateway cannot use your own provider key because of a configuration problem. "
                + "Contact your Tollgate administrator.",
            type: serverError, code: "byok_unavailable", headers: [("x-should-retry", "false")])
    }

    private static func unauthorized(_ message: String) -> OpenAIError {
        OpenAIError(status: 401, message: message, type: invalidRequest, code: "invalid_api_key")
    }
}
