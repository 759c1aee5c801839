import CFastCGI
import TollgateCore
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

// Limitation: a non-stream request holds its request thread until the upstream has answered in
// full, which for an LLM takes seconds; only streams move to the stream loop. `--threads` must
// therefore cover the peak of concurrent non-stream requests per worker.

/// The FastCGI transport of one worker process: an acceptor thread takes connections from the
/// listening socket nginx connects to, and a fixed pool of request threads serves them with
/// libfcgi, one request per thread. A stream's connection can leave its thread once admitted
/// (`FastCGIClient.detachFromThread`), and the thread takes the next connection.
///
/// The acceptor only accepts while a thread is idle, so a full worker leaves connections in
/// the kernel queue for another worker. `stop` closes the door and lets the pool drain.
///
/// `@unchecked Sendable`: after `start`, the only mutable state is in `ConnectionQueue` (which
/// locks) and the stop pipe, whose descriptors never change.
public final class FastCGIServer: @unchecked Sendable {
    public struct Settings: Sendable {
        public var threads: Int
        /// Stack of each request thread, in bytes.
        public var stackSize: Int
        /// Largest request body read, in bytes (nginx's client_max_body_size should be lower).
        public var maxBodyBytes: Int

        public init(threads: Int, stackSize: Int = 256 << 10, maxBodyBytes: Int = 16 << 20) {
            self.threads = threads
            self.stackSize = stackSize
            self.maxBodyBytes = maxBodyBytes
        }
    }

    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    let listenDescriptor: Int32
    let settings: Settings
    let service: ProxyService
    let queue: ConnectionQueue
    /// Written once by `stop` to wake the acceptor out of `poll`.
    private var stopPipe: [Int32] = [-1, -1]
    /// A socket that never listens: libfcgi falls back to accepting on it only after a
    /// protocol error, and then fails at once instead of blocking.
    private var inertSocket: Int32 = -1

    public init(listenDescriptor: Int32, settings: Settings, service: ProxyService) {
        self.listenDescriptor = listenDescriptor
        self.settings = settings
        self.service = service
        self.queue = ConnectionQueue(threads: settings.threads)
    }

    /// Initialises libfcgi and starts the acceptor and request threads.
    public func start() throws(StartError) {
        guard FCGX_Init() == 0 else { throw StartError(description: "libfcgi failed to initialise") }
        guard pipe(&stopPipe) == 0 else { throw StartError(description: "pipe failed") }
        inertSocket = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let flags = fcntl(listenDescriptor, F_GETFL)
        guard inertSocket >= 0, flags >= 0, fcntl(listenDescriptor, F_SETFL, flags | O_NONBLOCK) == 0 else {
            throw StartError(description: "the listening socket cannot be used")
        }
        do {
            for thread in 0..<settings.threads {
                try NativeThread.start(stackSize: settings.stackSize) { [self] in serveConnections(thread: thread) }
            }
            try NativeThread.start(stackSize: 256 << 10) { [self] in acceptConnections() }
        } catch {
            throw StartError(description: "cannot start threads (pthread_create: \(error.code))")
        }
    }

    /// Stops accepting, waits until in-flight requests finish or `grace` runs out, and returns
    /// how many were still in flight.
    public func stop(grace: Duration) -> Int {
        var byte: UInt8 = 1
        _ = write(stopPipe[1], &byte, 1)
        queue.close()
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let (seconds, attoseconds) = grace.components
        deadline.tv_sec += Int(seconds)
        deadline.tv_nsec += Int(attoseconds / 1_000_000_000)
        if deadline.tv_nsec >= 1_000_000_000 {
            deadline.tv_sec += 1
            deadline.tv_nsec -= 1_000_000_000
        }
        return queue.waitUntilDrained(deadline: deadline)
    }

    /// Requests queued or being served right now.
    public var inFlight: Int { queue.inFlight }

    private func acceptConnections() {
        var watched = [
            pollfd(fd: listenDescriptor, events: Int16(POLLIN), revents: 0),
            pollfd(fd: stopPipe[0], events: Int16(POLLIN), revents: 0),
        ]
        while queue.waitForIdleThread() {
            watched[0].revents = 0
            watched[1].revents = 0
            guard poll(&watched, 2, -1) >= 0 || errno == EINTR else {
                Log.error("fastcgi.poll_failed", [(.detail, String(errno))])
                return
            }
            if watched[1].revents != 0 { return }
            guard watched[0].revents != 0 else { continue }
            let connection = accept(listenDescriptor, nil, nil)
            if connection >= 0 {
                queue.push(connection)
            } else if errno == EMFILE || errno == ENFILE {
                Log.warning("fastcgi.out_of_descriptors")
                _ = poll(&watched[1], 1, 100)  // let requests finish and free descriptors
            }
            // EAGAIN: another worker took the connection; ECONNABORTED: nginx gave up on it.
        }
    }

    private func serveConnections(thread: Int) {
        let handler = service.makeHandler()
        let request = UnsafeMutablePointer<FCGX_Request>.allocate(capacity: 1)
        defer { request.deallocate() }
        FCGX_InitRequest(request, inertSocket, 0)
        while let connection = queue.take(thread: thread) {
            if tg_fcgx_read_request(request, connection) == 0 {
                serve(request, with: handler)
            }
            FCGX_Finish_r(request)
            // nginx asked to keep the connection (fastcgi_keep_conn on): close it anyway, since
            // one connection pins one thread here.
            if tg_fcgx_descriptor(request) >= 0 { FCGX_Free(request, 1) }
            queue.done()
        }
    }

    private func serve(_ request: UnsafeMutablePointer<FCGX_Request>, with handler: ProxyHandler) {
        let id = RequestID.make()
        let client = FastCGIClient(request: request, requestID: id)
        let proxyRequest: ProxyRequest
        do {
            proxyRequest = try FastCGIRequestReader.read(request, id: id, maxBodyBytes: settings.maxBodyBytes)
        } catch {
            switch error {
            case .bodyTooLarge: client.sendError(.bodyTooLarge(limit: settings.maxBodyBytes))
            case .bodyIncomplete: Log.info("request.body_incomplete", [(.requestID, id)])
            }
            return
        }
        handler.handle(proxyRequest, client: client)
    }
}
