import TollgateCore
import TollgateLoop

/// Where the upstream key of a request comes from.
public enum KeySource: String, Sendable {
    /// Tollgate's own provider key; usage counts against the caller's quota.
    case platform
    /// The caller's own provider key (bring your own key); usage is recorded, not limited.
    case byok
}

/// The metering side of the proxy: who may call, with which upstream key, and where usage is
/// recorded. The service asks `admit` before forwarding and calls `settle` exactly once after
/// every admitted request, whatever its end.
///
/// Called on an event loop's thread, so nothing here may block: an answer that needs the
/// database arrives later, through `executor`, back on that loop's thread.
public protocol Metering: Sendable {
    /// Decides whether a generation request may go upstream, and reserves what it may spend.
    /// `reply` runs once, on `executor`'s thread (or at once, when no waiting was needed).
    func admit(
        _ request: AdmissionRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void)

    /// Decides whether a caller may list models, and with which upstream key; replies as `admit`.
    func admitListing(
        from client: ProxyRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void)

    /// Records what an admitted request used and releases its reservation, in the background.
    func settle(_ settlement: Settlement)

    /// Blocks until every settlement handed to `settle` is recorded (or kept durably), or until
    /// `timeout` has passed; returns how many were still waiting. For a stopping worker.
    func waitUntilSettled(timeout: Duration) -> Int
}

/// A generation request as admission sees it.
public struct AdmissionRequest: Sendable {
    /// The request id, which becomes the reservation's and the ledger row's key.
    public var requestID: String
    public var api: API
    public var model: String
    public var stream: Bool
    /// Tokens to hold against the caller's quota: the estimated input plus the output cap.
    public var reservedTokens: Int
    /// Input tokens estimated from the request (recorded if the request is never settled).
    public var estimatedInputTokens: Int
    /// The client's request, whose headers identify the caller.
    public var client: ProxyRequest

    public init(
        requestID: String, api: API, model: String, stream: Bool, reservedTokens: Int, estimatedInputTokens: Int,
        client: ProxyRequest
    ) {
        self.requestID = requestID
        self.api = api
        self.model = model
        self.stream = stream
        self.reservedTokens = reservedTokens
        self.estimatedInputTokens = estimatedInputTokens
        self.client = client
    }
}

/// The answer of `Metering.admit`.
public enum Admission: Sendable {
    case admitted(AdmissionTicket)
    /// Answered to the client as is; nothing goes upstream.
    case rejected(OpenAIError)
}

/// What an admitted request carries from admission to settlement.
public struct AdmissionTicket: Sendable {
    /// The key sent upstream. Never logged.
    public var upstreamKey: String
    public var keySource: KeySource
    /// The caller, as the metering store knows it; nil when metering is off.
    public var userID: String?
    /// The Tollgate API key the caller used; nil in header mode or when metering is off.
    public var keyID: String?
    /// Tokens reserved against the quota, released at settlement; 0 when nothing was reserved.
    public var reservedTokens: Int

    public init(
        upstreamKey: String, keySource: KeySource, userID: String? = nil, keyID: String? = nil, reservedTokens: Int = 0
    ) {
        self.upstreamKey = upstreamKey
        self.keySource = keySource
        self.userID = userID
        self.keyID = keyID
        self.reservedTokens = reservedTokens
    }
}

/// Metering that answers many requests in one call, so that a busy worker pays one database
/// round trip for a batch of admissions or settlements instead of one each.
///
/// Called from the worker's metering threads, never from its event loop: every method may
/// block (a database round trip, a journal sync). Answers come back in the order asked.
public protocol BatchMetering: Sendable {
    /// Decides each request as `Metering.admit` would; `requests` and the result line up.
    func admit(_ requests: [AdmissionRequest]) -> [Admission]

    /// Decides whether a caller may list models, and with which upstream key.
    func admitListing(from client: ProxyRequest) -> Admission

    /// Records each settlement (ledger row, counters, reservation released), or keeps it
    /// durably when the database is away. Returns once every one is recorded or kept.
    func settle(_ settlements: [Settlement])

    /// Admits a request from quota this worker already holds for its caller (a quota lease),
    /// without blocking and without the database: nil when it holds none the request fits in,
    /// and `admit` decides. Called on an event loop's thread. The `LeasedAdmission`, when there
    /// is one, goes to `record` soon after, or to `forget` when its request settles first.
    func admitFromLease(_ request: AdmissionRequest) -> (AdmissionTicket, LeasedAdmission?)?

    /// Writes the reservations of requests admitted from leases and still in flight, so that a
    /// worker that dies leaves a ledger row for each. Blocks for a round trip.
    func record(_ admissions: [LeasedAdmission])

    /// A leased admission that will never be recorded: its request settled first.
    func forget(_ admission: LeasedAdmission)
}

/// Stores without quota leases admit every request through `admit`.
extension BatchMetering {
    public func admitFromLease(_ request: AdmissionRequest) -> (AdmissionTicket, LeasedAdmission?)? { nil }
    public func record(_ admissions: [LeasedAdmission]) {}
    public func forget(_ admission: LeasedAdmission) {}
}

/// A request a worker admitted from a quota lease, as its reservation will record it.
public struct LeasedAdmission: Sendable {
    public var requestID: String
    /// The lease its tokens came from; nil for a caller without a quota, who holds nothing.
    public var leaseID: String?
    public var userID: String
    public var keyID: String?
    /// Tokens taken from the lease for this request (0 without a lease).
    public var heldTokens: Int
    public var estimatedInputTokens: Int
    public var api: API
    public var model: String
    public var stream: Bool

    public init(
        request: AdmissionRequest, leaseID: String?, userID: String, keyID: String?, heldTokens: Int
    ) {
        self.requestID = request.requestID
        self.leaseID = leaseID
        self.userID = userID
        self.keyID = keyID
        self.heldTokens = heldTokens
        self.estimatedInputTokens = request.estimatedInputTokens
        self.api = request.api
        self.model = request.model
        self.stream = request.stream
    }
}
