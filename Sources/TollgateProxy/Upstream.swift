/// One call to the upstream provider, relative to the configured upstream base URL.
public struct UpstreamRequest: Sendable {
    public var method: String
    /// Path below the upstream base URL, e.g. `/chat/completions`.
    public var path: String
    public var query: String
    public var body: [UInt8]
    /// The key sent as `Authorization: Bearer`: the platform key or the caller's BYOK key.
    public var apiKey: String
    /// Further request headers to forward (already vetted by the service).
    public var headers: [(String, String)]

    public init(
        method: String, path: String, query: String = "", body: [UInt8] = [], apiKey: String,
        headers: [(String, String)] = []
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.apiKey = apiKey
        self.headers = headers
    }
}

/// Receives the upstream's answer as it arrives. Both methods run on the calling thread,
/// inside `Upstream.send`; returning false aborts the upstream transfer at once.
public protocol UpstreamResponseHandler: AnyObject {
    /// The status and headers (lower-cased names) of the final response have arrived.
    func upstreamDidReceiveHead(status: Int, headers: [(String, String)]) -> Bool

    /// A piece of the body, in whatever size the network delivered it.
    func upstreamDidReceiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool
}

/// Why an upstream call could not complete.
public enum UpstreamFailure: String, Sendable, Equatable {
    /// Connection refused, DNS failure, TLS failure: nothing was sent.
    case unreachable
    /// No response head within the upstream timeout.
    case timedOut
    /// The body went silent for longer than the idle timeout.
    case stalled
    /// The connection broke after the response had started.
    case interrupted
}

/// How an upstream call ended.
public enum UpstreamOutcome: Sendable, Equatable {
    case completed
    /// The response handler asked to stop.
    case abortedByHandler
    /// The client's disconnect descriptor fired while waiting on the upstream.
    case clientGone
    case failed(UpstreamFailure)
}

/// The provider Tollgate forwards to. An instance belongs to one thread (it owns a libcurl
/// handle and its connection); the service makes one per thread through a factory.
public protocol Upstream: AnyObject {
    /// Performs the call, blocking the thread until it ends, feeding `handler` as the
    /// response arrives. While waiting it also watches `clientDescriptor` (unless -1) and
    /// returns `.clientGone` within milliseconds of it turning readable or hung up.
    func send(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler, watching clientDescriptor: Int32
    ) -> UpstreamOutcome
}
