import TollgateCore

/// The application: decides for every request whether to admit it, forwards it upstream and
/// settles its usage. Shared by all request threads of a worker process; each thread serves
/// through its own `ProxyHandler`, which owns that thread's upstream connection.
public final class ProxyService: Sendable {
    public let router: Router
    public let metering: any Metering
    public let policy: Policy
    /// Largest non-stream upstream body Tollgate holds in memory, in bytes.
    public let maxResponseBytes: Int
    let makeUpstream: @Sendable () -> any Upstream
    /// Where streams go once admitted, so they hold no request thread; nil keeps each stream
    /// on the thread that admitted it.
    let streamLoop: (any StreamLoop)?
    /// Streams handed to the loop and not yet settled.
    public let detachedStreams = DetachedStreams()

    public init(
        router: Router, metering: any Metering, policy: Policy = Policy(), maxResponseBytes: Int = 64 << 20,
        streamLoop: (any StreamLoop)? = nil, makeUpstream: @escaping @Sendable () -> any Upstream
    ) {
        self.router = router
        self.metering = metering
        self.policy = policy
        self.maxResponseBytes = maxResponseBytes
        self.streamLoop = streamLoop
        self.makeUpstream = makeUpstream
    }

    /// A handler for one thread. Cheap: the upstream connection is opened on first use.
    public func makeHandler() -> ProxyHandler {
        ProxyHandler(service: self, upstream: makeUpstream())
    }
}
