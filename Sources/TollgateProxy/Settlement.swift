import TollgateCore

/// How a request ended, as the usage ledger records it.
public enum RequestOutcome: String, Sendable {
    case completed
    /// The client went away before the answer was complete.
    case clientAborted = "client_aborted"
    /// The upstream refused, failed, timed out or broke off.
    case upstreamError = "upstream_error"
}

/// Everything known about an admitted request once it is over.
public struct Settlement: Sendable {
    public var requestID: String
    public var ticket: AdmissionTicket
    public var api: API
    public var model: String
    public var stream: Bool
    public var outcome: RequestOutcome
    /// The HTTP status the client received (200 for a stream that started).
    public var status: Int
    /// Tokens used: as reported by the upstream, or estimated when it reported nothing.
    public var usage: Usage
    public var usageIsEstimated: Bool
    /// Wall-clock start, in microseconds since the Unix epoch.
    public var startedAtMicroseconds: Int64
    /// From the start until the upstream's first body byte; nil if none arrived.
    public var timeToFirstByte: Duration?
    public var duration: Duration

    public init(
        requestID: String, ticket: AdmissionTicket, api: API, model: String, stream: Bool,
        outcome: RequestOutcome, status: Int, usage: Usage, usageIsEstimated: Bool,
        startedAtMicroseconds: Int64, timeToFirstByte: Duration?, duration: Duration
    ) {
        self.requestID = requestID
        self.ticket = ticket
        self.api = api
        self.model = model
        self.stream = stream
        self.outcome = outcome
        self.status = status
        self.usage = usage
        self.usageIsEstimated = usageIsEstimated
        self.startedAtMicroseconds = startedAtMicroseconds
        self.timeToFirstByte = timeToFirstByte
        self.duration = duration
    }
}
