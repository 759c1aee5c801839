import CCurl
import Synchronization
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// The stream loop of one worker process: a single thread that drives every open stream's
/// upstream transfer through one libcurl multi handle (its socket interface, over epoll) and
/// watches every stream's client connection in the same epoll set.
///
/// An open stream costs a libcurl easy handle, its parser state and its pending output, not a
/// thread, so a worker holds thousands of them in a few tens of MiB. Request threads hand
/// streams over with `start`; everything else happens on the loop's thread.
///
/// `@unchecked Sendable`: `start` only touches `submissions` (locked) and the wake-up eventfd;
/// every other property belongs to the loop's thread.
public final class CurlStreamLoop: StreamLoop, @unchecked Sendable {
    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    let settings: UpstreamSettings
    private let submissions = Mutex<[Submission]>([])
    private let epoll: Int32
    private let wakeup: Int32
    private var multi: UnsafeMutableRawPointer?
    /// Open transfers by easy handle, and by client descriptor.
    private var transfers: [UnsafeMutableRawPointer: StreamTransfer] = [:]
    private var clients: [Int32: StreamTransfer] = [:]
    /// Finished streams whose last bytes are still on their way to nginx.
    private var draining: [Int32: any DetachedClient] = [:]
    /// Streams whose callbacks ran during the current `curl_multi_socket_action`.
    private var touched: [StreamTransfer] = []
    /// Sockets libcurl asked to be watched, with what it asked for.
    private var curlSockets: [Int32: UInt32] = [:]
    /// When libcurl wants `curl_multi_socket_action` called for its timeouts; nil for never.
    private var curlTimer: ContinuousClock.Instant?
    private var lastDeadlineScan = ContinuousClock.now

    /// Pending output above which a stream's upstream transfer is paused until nginx catches up.
    static let pauseAbove = 64 << 10
    /// How often the upstream timeouts of open streams are checked.
    static let deadlineScanInterval = Duration.milliseconds(50)

    public init(settings: UpstreamSettings) throws(StartError) {
        self.settings = settings
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeup = tg_eventfd()
        guard epoll >= 0, wakeup >= 0 else { throw StartError(description: "epoll or eventfd failed") }
        guard tg_epoll_watch(epoll, wakeup, tg_epoll_in, Tag.wakeup.data(for: wakeup), 1) == 0 else {
            throw StartError(description: "epoll_ctl failed")
        }
    }

    /// Starts the loop's thread (requires libcurl initialised).
    public func run(startThread: (@escaping @Sendable () -> Void) throws -> Void) throws {
        guard let multi = curl_multi_init() else { throw StartError(description: "curl_multi_init failed") }
        self.multi = multi
        let context = Unmanaged.passUnretained(self).toOpaque()
        guard tg_curl_multi_set_socket_callback(multi, curlSocketCallback, context) == CURLM_OK,
            tg_curl_multi_set_timer_callback(multi, curlTimerCallback, context) == CURLM_OK
        else { throw StartError(description: "curl_multi_setopt failed") }
        try startThread { [self] in loop() }
    }

    public func start(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler, client: any DetachedClient,
        completion: @escaping (UpstreamOutcome) -> Void
    ) {
        let transfer = StreamTransfer(request: request, handler: handler, client: client, completion: completion)
        let submission = Submission(stream: transfer)
        submissions.withLock { $0.append(submission) }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
    }

    // MARK: - The loop's thread

    private func loop() {
        var ready = [tg_epoll_ready](repeating: tg_epoll_ready(), count: 256)
        while true {
            let count = tg_epoll_wait(epoll, &ready, Int32(ready.count), waitMilliseconds())
            if count < 0 && errno != EINTR {
                Log.error("stream_loop.epoll_failed", [(.detail, String(errno))])
                return
            }
            for index in 0..<max(0, Int(count)) {
                dispatch(ready[index])
            }
            if let deadline = curlTimer, ContinuousClock.now >= deadline {
                curlTimer = nil
                socketAction(tg_curl_socket_timeout, 0)
            }
            collectFinished()
            if ContinuousClock.now - lastDeadlineScan >= Self.deadlineScanInterval { enforceTimeouts() }
        }
    }

    private func waitMilliseconds() -> Int32 {
        var wait = transfers.isEmpty ? Duration.seconds(1) : Self.deadlineScanInterval
        if let deadline = curlTimer { wait = min(wait, max(.zero, deadline - ContinuousClock.now)) }
        return Int32(CurlUpstream.milliseconds(wait + .microseconds(999)))
    }

    private func dispatch(_ event: tg_epoll_ready) {
        let descriptor = Int32(truncatingIfNeeded: event.data & 0xFFFF_FFFF)
        switch Tag(rawValue: event.data >> 32) {
        case .wakeup:
            var count: UInt64 = 0
            _ = read(wakeup, &count, 8)
            admitSubmissions()
        case .curl:
            var action: Int32 = 0
            if event.events & tg_epoll_in != 0 { action |= CURL_CSELECT_IN }
            if event.events & tg_epoll_out != 0 { action |= CURL_CSELECT_OUT }
            if event.events & tg_epoll_error != 0 { action |= CURL_CSELECT_ERR }
            socketAction(descriptor, action)
        case .client:
            clientEvent(descriptor, event.events)
        case nil:
            break
        }
    }

    private func admitSubmissions() {
        let arrived = submissions.withLock { queued in
            defer { queued.removeAll() }
            return queued
        }
        for submission in arrived { begin(submission.stream) }
    }

    private func begin(_ stream: StreamTransfer) {
        let descriptor = stream.client.descriptor
        guard let multi, let easy = curl_easy_init() else {
            complete(stream, .failed(.unreachable))
            return
        }
        stream.adopt(easy)
        guard let headers = CurlHeaderList(request: stream.request),
            stream.transfer.configure(
                stream.request, body: stream.body.readOnly, headers: headers, settings: settings),
            curl_multi_add_handle(multi, easy) == CURLM_OK
        else {
            complete(stream, .failed(.unreachable))
            return
        }
        stream.headers = headers
        let client = stream.client
        stream.transfer.shouldPause = { client.pendingBytes > CurlStreamLoop.pauseAbove }
        stream.transfer.afterCallback = { [unowned self, unowned stream] in
            guard !stream.touched else { return }
            stream.touched = true
            touched.append(stream)
        }
        transfers[easy] = stream
        clients[descriptor] = stream
        watchClient(descriptor, writable: false, add: true)
    }

    private func clientEvent(_ descriptor: Int32, _ events: UInt32) {
        let hungUp = events & (tg_epoll_hang_up | tg_epoll_error) != 0
        if let client = draining[descriptor] {
            if hungUp || !client.writePending() || client.pendingBytes == 0 { closeDrained(descriptor) }
            return
        }
        guard let stream = clients[descriptor] else { return }
        // nginx sends nothing that matters after the request body; a read that finds the end of
        // the connection means it closed it because the client went away.
        let closedByNginx = events & tg_epoll_in != 0 && !stream.client.discardInput()
        if hungUp || closedByNginx || !stream.client.writePending() {
            abort(stream, .clientGone)
            return
        }
        if stream.client.pendingBytes == 0 { watchClient(descriptor, writable: false, add: false) }
        if stream.transfer.paused && stream.client.pendingBytes <= Self.pauseAbove / 2 {
            stream.transfer.paused = false
            stream.transfer.touch()
            if let easy = stream.easy { _ = curl_easy_pause(easy, tg_curl_pause_continue) }
        }
    }

    private func socketAction(_ socket: Int32, _ action: Int32) {
        guard let multi else { return }
        var running: Int32 = 0
        _ = curl_multi_socket_action(multi, socket, action, &running)
        // A callback may have left output nginx did not take at once: wait for writability.
        for stream in touched {
            stream.touched = false
            let descriptor = stream.client.descriptor
            if clients[descriptor] === stream, stream.client.pendingBytes > 0, !stream.watchingWritable {
                watchClient(descriptor, writable: true, add: false)
            }
        }
        touched.removeAll(keepingCapacity: true)
    }

    private func collectFinished() {
        guard let multi else { return }
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
                let stream = transfers[easy]
            else { continue }
            let outcome = stream.transfer.outcome(code: message.pointee.data.result)
            finish(stream, outcome)
        }
    }

    private func enforceTimeouts() {
        let now = ContinuousClock.now
        lastDeadlineScan = now
        var expired: [(StreamTransfer, UpstreamFailure)] = []
        for stream in transfers.values {
            let transfer = stream.transfer
            if !transfer.headDelivered && now - stream.startedAt >= settings.responseTimeout {
                expired.append((stream, .timedOut))
            } else if transfer.headDelivered && !transfer.paused
                && now - transfer.lastActivity >= settings.idleTimeout
            {
                expired.append((stream, .stalled))
            }
        }
        for (stream, failure) in expired { abort(stream, .failed(failure)) }
    }

    private func abort(_ stream: StreamTransfer, _ outcome: UpstreamOutcome) {
        finish(stream, outcome)
    }

    /// Ends a transfer: frees its libcurl handle, tells the forwarder, then ends the response.
    private func finish(_ stream: StreamTransfer, _ outcome: UpstreamOutcome) {
        if let multi, let easy = stream.easy {
            curl_multi_remove_handle(multi, easy)
            transfers[easy] = nil
        }
        stream.releaseHandle()
        complete(stream, outcome)
    }

    private func complete(_ stream: StreamTransfer, _ outcome: UpstreamOutcome) {
        let client = stream.client
        let descriptor = client.descriptor
        if clients.removeValue(forKey: descriptor) != nil {
            _ = tg_epoll_watch(epoll, descriptor, 0, 0, 0)
        }
        stream.completion(outcome)
        guard outcome != .clientGone else {
            client.close()
            return
        }
        client.end()
        guard client.writePending(), client.pendingBytes > 0 else {
            client.close()
            return
        }
        draining[descriptor] = client
        let data = Tag.client.data(for: descriptor)
        _ = tg_epoll_watch(epoll, descriptor, tg_epoll_out | tg_epoll_hang_up, data, 1)
    }

    private func closeDrained(_ descriptor: Int32) {
        guard let client = draining.removeValue(forKey: descriptor) else { return }
        _ = tg_epoll_watch(epoll, descriptor, 0, 0, 0)
        client.close()
    }

    private func watchClient(_ descriptor: Int32, writable: Bool, add: Bool) {
        var events = tg_epoll_in | tg_epoll_hang_up
        if writable { events |= tg_epoll_out }
        clients[descriptor]?.watchingWritable = writable
        if tg_epoll_watch(epoll, descriptor, events, Tag.client.data(for: descriptor), add ? 1 : 0) != 0, add,
            let stream = clients[descriptor]
        {
            Log.warning("stream_loop.watch_failed", [(.detail, String(errno))])
            abort(stream, .clientGone)
        }
    }

    /// libcurl's socket callback: what to wait for on one of its sockets.
    fileprivate func watchCurlSocket(_ socket: Int32, _ what: Int32) {
        if what == CURL_POLL_REMOVE {
            if curlSockets.removeValue(forKey: socket) != nil { _ = tg_epoll_watch(epoll, socket, 0, 0, 0) }
            return
        }
        var events: UInt32 = 0
        if what & CURL_POLL_IN != 0 { events |= tg_epoll_in }
        if what & CURL_POLL_OUT != 0 { events |= tg_epoll_out }
        let known = curlSockets[socket] != nil
        curlSockets[socket] = events
        _ = tg_epoll_watch(epoll, socket, events, Tag.curl.data(for: socket), known ? 0 : 1)
    }

    /// libcurl's timer callback: when to call it back for its own timeouts.
    fileprivate func setCurlTimer(milliseconds: Int) {
        curlTimer = milliseconds < 0 ? nil : ContinuousClock.now + .milliseconds(milliseconds)
    }

    /// What an epoll registration is for, kept in the upper half of its 64-bit data.
    private enum Tag: UInt64 {
        case wakeup = 1
        case curl = 2
        case client = 3

        func data(for descriptor: Int32) -> UInt64 {
            rawValue << 32 | UInt64(UInt32(bitPattern: descriptor))
        }
    }
}

/// A stream on its way from the request thread that admitted it to the loop's thread, which
/// owns it from then on.
private struct Submission: @unchecked Sendable {
    let stream: StreamTransfer
}

/// One stream in the loop: the upstream call, its libcurl state and the client it answers.
final class StreamTransfer {
    let request: UpstreamRequest
    let client: any DetachedClient
    let completion: (UpstreamOutcome) -> Void
    let transfer: CurlTransfer
    let startedAt = ContinuousClock.now
    /// The request body, at an address that stays put while libcurl sends it.
    let body: UnsafeMutableRawBufferPointer
    var headers: CurlHeaderList?
    private(set) var easy: UnsafeMutableRawPointer?
    var watchingWritable = false
    /// Listed in the loop's `touched` already.
    var touched = false

    init(
        request: UpstreamRequest, handler: any UpstreamResponseHandler, client: any DetachedClient,
        completion: @escaping (UpstreamOutcome) -> Void
    ) {
        var request = request
        let body = UnsafeMutableRawBufferPointer.allocate(byteCount: request.body.count, alignment: 1)
        request.body.withUnsafeBytes { body.copyMemory(from: $0) }
        request.body = []
        self.body = body
        self.request = request
        self.client = client
        self.completion = completion
        self.transfer = CurlTransfer(handler: handler)
    }

    deinit {
        releaseHandle()
        body.deallocate()
    }

    func adopt(_ easy: UnsafeMutableRawPointer) {
        self.easy = easy
        transfer.easy = easy
    }

    func releaseHandle() {
        if let easy { curl_easy_cleanup(easy) }
        easy = nil
        headers = nil
    }
}

extension UnsafeMutableRawBufferPointer {
    fileprivate var readOnly: UnsafeRawBufferPointer { UnsafeRawBufferPointer(self) }
}

private func curlSocketCallback(
    _ easy: UnsafeMutableRawPointer?, _ socket: curl_socket_t, _ what: Int32, _ context: UnsafeMutableRawPointer?,
    _ socketContext: UnsafeMutableRawPointer?
) -> Int32 {
    guard let context else { return -1 }
    Unmanaged<CurlStreamLoop>.fromOpaque(context).takeUnretainedValue().watchCurlSocket(socket, what)
    return 0
}

private func curlTimerCallback(
    _ multi: UnsafeMutableRawPointer?, _ milliseconds: Int, _ context: UnsafeMutableRawPointer?
) -> Int32 {
    guard let context else { return -1 }
    Unmanaged<CurlStreamLoop>.fromOpaque(context).takeUnretainedValue().setCurlTimer(milliseconds: milliseconds)
    return 0
}
