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

/// Receives the upstream's answer as it arrives, on the event loop's thread. Returning false
/// from either method aborts the upstream transfer at once.
public protocol UpstreamResponseHandler: AnyObject {
    /// The status and headers (lower-cased names) of the final response have arrived.
    func upstreamDidReceiveHead(status: Int, headers: [(String, String)]) -> Bool

    /// A piece of the body, in whatever size the network delivered it.
    func upstreamDidReceiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool

    /// Asked before each piece of body: true holds the transfer (the upstream's own flow
    /// control then slows it) until `UpstreamCall.resume`. For a client slower than the upstream.
    var upstreamShouldPause: Bool { get }
}

extension UpstreamResponseHandler {
    public var upstreamShouldPause: Bool { false }
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
    /// The client went away, and the call was cancelled for it.
    case clientGone
    case failed(UpstreamFailure)
}

/// The provider Tollgate forwards to. One instance per event loop: calls run on that loop's
/// thread, many at once, without blocking it.
public protocol Upstream: AnyObject {
    /// Starts the call. `handler` is fed as the answer arrives; `completion` runs exactly once,
    /// on the loop's thread, when the call has ended whichever way (possibly before `start`
    /// returns, when the call cannot even begin). The upstream timeouts are enforced here.
    func start(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler,
        completion: @escaping (UpstreamOutcome) -> Void
    ) -> any UpstreamCall
}

/// One call in progress.
public protocol UpstreamCall: AnyObject {
    /// Aborts the call at once (the client left); its completion runs with `.clientGone`.
    /// Nothing happens once the call has ended.
    func cancel()

    /// Lets a call held by `upstreamShouldPause` go on.
    func resume()
}
