import CEventLoop
import Synchronization
import TollgateLoop
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// The FastCGI side of one event loop: accepts connections from nginx on the listening socket
/// the worker shares with its other loops and processes, and owns the connections it accepted.
///
/// Belongs to its loop's thread; only `FastCGIServer` reaches it from outside, through the loop.
final class FastCGILoop: LoopHandler {
    let loop: EventLoop
    let handler: ProxyHandler
    let listenDescriptor: Int32
    let maxBodyBytes: Int
    /// Requests being answered across the whole worker, shared with `FastCGIServer`.
    let busy: RequestCount
    /// Where connections read into: one buffer for the whole loop.
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
    /// Ids for the requests this loop receives.
    var requestIDs = RequestID()
    private var connections: [Int32: FastCGIConnection] = [:]
    private(set) var accepting = false
    /// Set once the worker stops accepting: a connection closes right after its next answer.
    private(set) var retiring = false
    private lazy var retryTimer = LoopTimer { [unowned self] in startAccepting() }

    /// Connections taken per wake-up, so that one loop does not take a whole burst from the others.
    static let acceptBatch = 16

    init(loop: EventLoop, handler: ProxyHandler, listenDescriptor: Int32, maxBodyBytes: Int, busy: RequestCount) {
        self.loop = loop
        self.handler = handler
        self.listenDescriptor = listenDescriptor
        self.maxBodyBytes = maxBodyBytes
        self.busy = busy
    }

    deinit {
        scratch.deallocate()
    }

    func startAccepting() {
        guard !accepting else { return }
        accepting = loop.watch(listenDescriptor, for: [.readable, .exclusive], self)
        if !accepting { Log.error("fastcgi.listen_failed", [(.detail, String(errno))]) }
    }

    /// Stops taking connections. With `closingIdle`, idle connections close now and busy ones
    /// once answered. Otherwise idle ones stay open for nginx to retire (see
    /// tollgate-upstream.conf), since nginx may be sending a request on one right now, and each
    /// busy one closes the moment its answer is written: nginx then reads the end of the
    /// connection with the end of the answer and does not keep it for another request.
    func stopAccepting(closingIdle: Bool) {
        loop.cancel(retryTimer)
        if accepting { loop.unwatch(listenDescriptor) }
        accepting = false
        retiring = true
        guard closingIdle else { return }
        for connection in connections.values where connection.isIdle { connection.close() }
    }

    func loopEvents(_ events: LoopEvents, on descriptor: Int32) {
        for _ in 0..<Self.acceptBatch {
            let accepted = tg_loop_accept(listenDescriptor)
            guard accepted >= 0 else {
                if errno == EMFILE || errno == ENFILE {
                    // Out of descriptors: pause accepting while requests finish and free some.
                    Log.warning("fastcgi.out_of_descriptors")
                    loop.unwatch(listenDescriptor)
                    accepting = false
                    loop.schedule(retryTimer, after: .milliseconds(100))
                }
                // EAGAIN: another loop took it; ECONNABORTED: nginx gave up on it.
                return
            }
            let connection = FastCGIConnection(descriptor: accepted, owner: self)
            guard loop.watch(accepted, for: [.readable, .hangUp], connection) else {
                _ = close(accepted)
                continue
            }
            connections[accepted] = connection
            busy.connections.add(1, ordering: .relaxed)
        }
    }

    func connectionClosed(_ connection: FastCGIConnection) {
        guard connections[connection.descriptor] === connection else { return }
        connections[connection.descriptor] = nil
        busy.connections.subtract(1, ordering: .relaxed)
    }

    func requestStarted() {
        busy.count.add(1, ordering: .relaxed)
    }

    func requestFinished() {
        busy.count.subtract(1, ordering: .relaxed)
    }
}

/// Requests being answered, and connections open, across the loops of a worker process.
final class RequestCount: Sendable {
    let count = Atomic(0)
    let connections = Atomic(0)
}
