import TollgateCore
import TollgateLoop

/// Metering switched off: every caller is admitted with the platform key, and usage is only
/// written to the log. The PostgreSQL store replaces it when a database is configured.
public struct LogOnlyMetering: Metering {
    let platformKey: String

    public init(platformKey: String) {
        self.platformKey = platformKey
    }

    public func admit(
        _ request: AdmissionRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void
    ) {
        reply(.admitted(AdmissionTicket(upstreamKey: platformKey, keySource: .platform)))
    }

    public func admitListing(
        from client: ProxyRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void
    ) {
        reply(.admitted(AdmissionTicket(upstreamKey: platformKey, keySource: .platform)))
    }

    public func settle(_ settlement: Settlement) {
        Log.info("usage.settled", settlement.logFields)
    }

    public func waitUntilSettled(timeout: Duration) -> Int { 0 }
}

extension Settlement {
    /// The settlement as log metadata: ids, model, outcome and token counts, never a key.
    public var logFields: [(LogKey, String)] {
        [
            (.requestID, requestID), (.api, api.rawValue), (.model, model), (.stream, String(stream)),
            (.outcome, outcome.rawValue), (.status, String(status)), (.keySource, ticket.keySource.rawValue),
            (.inputTokens, String(usage.inputTokens)), (.cachedInputTokens, String(usage.cachedInputTokens)),
            (.outputTokens, String(usage.outputTokens)), (.reasoningTokens, String(usage.reasoningTokens)),
            (.totalTokens, String(usage.totalTokens)), (.estimated, String(usageIsEstimated)),
            (.durationMilliseconds, Log.milliseconds(duration)),
        ]
    }
}
