import TollgateCore
import TollgateLoop

/// The application: decides for every request whether to admit it, forwards it upstream and
/// settles its usage. Shared by all event loops of a worker process; each loop serves through
/// its own `ProxyHandler`, bound to that loop's upstream client.
public final class ProxyService: Sendable {
    public let router: Router
    public let metering: any Metering
    public let policy: Policy
    /// Largest non-stream upstream body Tollgate holds in memory, in bytes.
    public let maxResponseBytes: Int

    public init(router: Router, metering: any Metering, policy: Policy = Policy(), maxResponseBytes: Int = 64 << 20) {
        self.router = router
        self.metering = metering
        self.policy = policy
        self.maxResponseBytes = maxResponseBytes
    }

    /// The handler of one event loop: `upstream` runs that loop's upstream calls, and
    /// `executor` brings metering answers back to it.
    public func makeHandler(upstream: any Upstream, executor: any LoopExecutor) -> ProxyHandler {
        ProxyHandler(service: self, upstream: upstream, executor: executor)
    }
}
