import Synchronization
import TollgateLoop
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// The FastCGI transport of one worker process: a few event loops (usually one), each on a
/// thread of its own, accept connections from nginx on the listening socket and serve any
/// number of requests at once, streams included, without a thread per request.
///
/// `stop` closes the door and lets the requests in flight finish.
///
/// `@unchecked Sendable`: `loops` is written once in `start`, before any other thread sees the
/// server; each `FastCGILoop` is only touched on its own loop's thread, through `execute`.
public final class FastCGIServer: @unchecked Sendable {
    public struct Settings: Sendable {
        /// Event loops (threads) in this worker process.
        public var loops: Int
        /// Largest request body read, in bytes (nginx's client_max_body_size should be lower).
        public var maxBodyBytes: Int

        public init(loops: Int = 1, maxBodyBytes: Int = 16 << 20) {
            self.loops = loops
            self.maxBodyBytes = maxBodyBytes
        }
    }

    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    let listenDescriptor: Int32
    let settings: Settings
    /// Requests being answered, across all loops.
    private let busy = RequestCount()
    private var loops: [FastCGILoop] = []

    public init(listenDescriptor: Int32, settings: Settings) {
        self.listenDescriptor = listenDescriptor
        self.settings = settings
    }

    /// Starts the loops. `makeHandler` builds each loop's proxy handler (with the upstream
    /// client bound to that loop) before the loop's thread starts.
    public func start(makeHandler: (EventLoop) throws -> ProxyHandler) throws(StartError) {
        let flags = fcntl(listenDescriptor, F_GETFL)
        guard flags >= 0, fcntl(listenDescriptor, F_SETFL, flags | O_NONBLOCK) == 0 else {
            throw StartError(description: "the listening socket cannot be used")
        }
        for _ in 0..<max(1, settings.loops) {
            do {
                try startLoop(makeHandler: makeHandler)
            } catch {
                throw StartError(description: "cannot start an event loop: \(error)")
            }
        }
    }

    private func startLoop(makeHandler: (EventLoop) throws -> ProxyHandler) throws {
        let loop = try EventLoop()
        let fastCGI = FastCGILoop(
            loop: loop, handler: try makeHandler(loop), listenDescriptor: listenDescriptor,
            maxBodyBytes: settings.maxBodyBytes, busy: busy)
        loops.append(fastCGI)
        loop.execute { [bound = LoopBound(fastCGI)] in bound.value.startAccepting() }
        try NativeThread.start(name: "tollgate-loop", stackSize: 8 << 20) { [loop] in
            let failure = loop.run()
            if failure != 0 { Log.error("loop.epoll_failed", [(.detail, String(failure))]) }
        }
    }

    /// Stops accepting and closes idle connections, waits until the requests in flight are
    /// answered or `grace` runs out, and returns how many were still in flight. The loops keep
    /// running for what follows (metering answers, settlements); the process ends them by exiting.
    public func stop(grace: Duration) -> Int {
        stopAccepting(closingIdle: true)
        return waitUntil(.now + grace) { inFlight == 0 }
    }

    /// For a worker replaced by a reload: stops accepting but leaves its connections to nginx,
    /// which retires them (after their last request, or idle; see tollgate-upstream.conf), for
    /// up to half of `grace`; then stops as `stop` does within what is left. Returns the
    /// requests still in flight.
    public func retire(grace: Duration) -> Int {
        let started = ContinuousClock.now
        stopAccepting(closingIdle: false)
        _ = waitUntil(started + grace / 2) { inFlight == 0 && busy.connections.load(ordering: .relaxed) == 0 }
        // Limitation: a connection still open now is closed while idle; a request nginx sends on
        // it at that very moment fails with 502. Connections close after their next answer, and
        // nginx drops idle ones after 2 s, so this takes a trickle of requests on one connection.
        stopAccepting(closingIdle: true)
        return waitUntil(started + grace) { inFlight == 0 }
    }

    private func stopAccepting(closingIdle: Bool) {
        for fastCGI in loops {
            fastCGI.loop.execute { [bound = LoopBound(fastCGI)] in bound.value.stopAccepting(closingIdle: closingIdle) }
        }
    }

    /// Polls `done` until it holds or `deadline` passes; returns the requests still in flight.
    /// Polled: a stopping worker has nothing better to do, and it spares the loops any wake-up
    /// duty towards this thread.
    private func waitUntil(_ deadline: ContinuousClock.Instant, _ done: () -> Bool) -> Int {
        while !done() && ContinuousClock.now < deadline {
            var pause = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&pause, nil)
        }
        return inFlight
    }

    /// Requests being answered right now.
    public var inFlight: Int { busy.count.load(ordering: .relaxed) }
}
