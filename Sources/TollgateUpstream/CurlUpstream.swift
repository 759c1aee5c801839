import CCurl
import TollgateLoop
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// The upstream reached over HTTP with libcurl, for one event loop: every call of that loop
/// runs through one libcurl multi handle, whose sockets and timer the loop watches, so one
/// thread drives thousands of calls, and the multi handle's connection cache keeps upstream
/// connections open between them.
///
/// Everything runs on the loop's thread. Owns the multi handle and a few idle easy handles,
/// freed in `deinit`; each call in flight owns its own easy handle (`CurlCall`).
public final class CurlUpstream: Upstream, LoopHandler {
    let settings: UpstreamSettings
    let loop: EventLoop
    private let multi: UnsafeMutableRawPointer
    /// Calls in flight, by easy handle.
    private var calls: [UnsafeMutableRawPointer: CurlCall] = [:]
    /// Easy handles of finished calls, reset and ready for the next ones.
    private var idleHandles: [UnsafeMutableRawPointer] = []
    private lazy var curlTimer = LoopTimer { [unowned self] in socketAction(tg_curl_socket_timeout, 0) }
    private lazy var timeoutScan = LoopTimer { [unowned self] in enforceTimeouts() }

    /// Idle upstream connections kept open for reuse, at most.
    static let cachedConnections = 1024
    /// Idle easy handles kept for reuse; more are freed.
    static let idleHandleLimit = 256
    /// How often the upstream timeouts of calls in flight are checked (the timeouts are
    /// seconds; a call outlives its timeout by this much at most).
    static let timeoutScanInterval = Duration.milliseconds(100)

    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Initialises libcurl for the process. Not thread-safe: call once, before any thread starts.
    public static func initializeLibrary() -> Bool {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK
    }

    public init(settings: UpstreamSettings, loop: EventLoop) throws(StartError) {
        guard let multi = curl_multi_init() else { throw StartError(description: "curl_multi_init failed") }
        self.settings = settings
        self.loop = loop
        self.multi = multi
        let context = Unmanaged.passUnretained(self).toOpaque()
        // libcurl sizes its connection cache by the transfers added at the moment, and closes what
        // does not fit: a loop whose concurrency ebbs and flows would then reconnect constantly.
        guard tg_curl_multi_set_socket_callback(multi, curlSocketCallback, context) == CURLM_OK,
            tg_curl_multi_set_timer_callback(multi, curlTimerCallback, context) == CURLM_OK,
            tg_curl_multi_set_long(multi, CURLMOPT_MAXCONNECTS, Self.cachedConnections) == CURLM_OK
        else { throw StartError(description: "curl_multi_setopt failed") }
    }

    deinit {
        for (easy, _) in calls { curl_multi_remove_handle(multi, easy) }
        for easy in calls.keys { curl_easy_cleanup(easy) }
        for easy in idleHandles { curl_easy_cleanup(easy) }
        curl_multi_cleanup(multi)
    }

    public func start(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler,
        completion: @escaping (UpstreamOutcome) -> Void
    ) -> any UpstreamCall {
        let call = CurlCall(request: request, handler: handler, upstream: self, completion: completion)
        guard let easy = idleHandles.popLast() ?? curl_easy_init() else {
            Log.error("upstream.handle_failed")
            call.complete(.failed(.unreachable))
            return call
        }
        call.adopt(easy)
        guard call.configure(settings), curl_multi_add_handle(multi, easy) == CURLM_OK else {
            Log.error("upstream.configure_failed")
            recycle(call.releaseHandle())
            call.complete(.failed(.unreachable))
            return call
        }
        calls[easy] = call
        if timeoutScan.deadline == nil { loop.schedule(timeoutScan, after: Self.timeoutScanInterval) }
        return call
    }

    /// Ends `call` now with `outcome`, unless it has ended already.
    func end(_ call: CurlCall, _ outcome: UpstreamOutcome) {
        guard let easy = call.easy, calls.removeValue(forKey: easy) != nil else { return }
        curl_multi_remove_handle(multi, easy)
        recycle(call.releaseHandle())
        call.complete(outcome)
    }

    /// Lets a paused call go on; libcurl delivers what it held back.
    func resume(_ call: CurlCall) {
        guard let easy = call.easy, calls[easy] != nil, call.transfer.paused else { return }
        call.transfer.paused = false
        call.transfer.touch()
        _ = curl_easy_pause(easy, tg_curl_pause_continue)
        collectFinished()
    }

    public func loopEvents(_ events: LoopEvents, on descriptor: Int32) {
        var action: Int32 = 0
        if events.contains(.readable) { action |= CURL_CSELECT_IN }
        if events.contains(.writable) { action |= CURL_CSELECT_OUT }
        if !events.isDisjoint(with: .error) { action |= CURL_CSELECT_ERR }
        socketAction(descriptor, action)
    }

    private func socketAction(_ socket: Int32, _ action: Int32) {
        var running: Int32 = 0
        _ = curl_multi_socket_action(multi, socket, action, &running)
        collectFinished()
    }

    private func collectFinished() {
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
                let call = calls[easy]
            else { continue }
            end(call, call.transfer.outcome(code: message.pointee.data.result))
        }
    }

    private func recycle(_ easy: UnsafeMutableRawPointer?) {
        guard let easy else { return }
        guard idleHandles.count < Self.idleHandleLimit else {
            curl_easy_cleanup(easy)
            return
        }
        curl_easy_reset(easy)
        idleHandles.append(easy)
    }

    private func enforceTimeouts() {
        // Runs over every call in flight, thousands with open streams: two comparisons each.
        let now = ContinuousClock.now
        let headCutoff = now - settings.responseTimeout
        let idleCutoff = now - settings.idleTimeout
        var expired: [(CurlCall, UpstreamFailure)] = []
        for call in calls.values {
            let transfer = call.transfer
            if !transfer.headDelivered {
                if call.startedAt <= headCutoff { expired.append((call, .timedOut)) }
            } else if transfer.lastActivity <= idleCutoff && !transfer.paused {
                expired.append((call, .stalled))
            }
        }
        for (call, failure) in expired { end(call, .failed(failure)) }
        if !calls.isEmpty { loop.schedule(timeoutScan, after: Self.timeoutScanInterval) }
    }

    /// libcurl's socket callback: what to wait for on one of its sockets.
    fileprivate func watchSocket(_ socket: Int32, _ what: Int32) {
        if what == CURL_POLL_REMOVE {
            loop.unwatch(socket)
            return
        }
        var events: LoopEvents = []
        if what & CURL_POLL_IN != 0 { events.insert(.readable) }
        if what & CURL_POLL_OUT != 0 { events.insert(.writable) }
        if !loop.change(socket, to: events) && !loop.watch(socket, for: events, self) {
            Log.warning("upstream.watch_failed", [(.detail, String(errno))])
        }
    }

    /// libcurl's timer callback: when to call it back for its own timeouts.
    fileprivate func setTimer(milliseconds: Int) {
        if milliseconds < 0 {
            loop.cancel(curlTimer)
        } else {
            loop.schedule(curlTimer, after: .milliseconds(milliseconds))
        }
    }

    static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        return max(0, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
    }
}

private func curlSocketCallback(
    _ easy: UnsafeMutableRawPointer?, _ socket: curl_socket_t, _ what: Int32, _ context: UnsafeMutableRawPointer?,
    _ socketContext: UnsafeMutableRawPointer?
) -> Int32 {
    guard let context else { return -1 }
    Unmanaged<CurlUpstream>.fromOpaque(context).takeUnretainedValue().watchSocket(socket, what)
    return 0
}

private func curlTimerCallback(
    _ multi: UnsafeMutableRawPointer?, _ milliseconds: Int, _ context: UnsafeMutableRawPointer?
) -> Int32 {
    guard let context else { return -1 }
    Unmanaged<CurlUpstream>.fromOpaque(context).takeUnretainedValue().setTimer(milliseconds: milliseconds)
    return 0
}
