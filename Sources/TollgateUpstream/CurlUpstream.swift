import CCurl
import TollgateProxy

/// The upstream reached over HTTP with libcurl.
///
/// One instance per request thread: it owns a libcurl easy handle and a multi handle (whose
/// connection cache keeps the upstream connection alive between requests), creates them on
/// first use and frees them in `deinit`. Waiting happens in `curl_multi_poll`, together with
/// the client's descriptor, so a client that leaves is noticed at once even while the
/// upstream is silent.
public final class CurlUpstream: Upstream {
    let settings: UpstreamSettings
    private var easy: UnsafeMutableRawPointer?
    private var multi: UnsafeMutableRawPointer?

    public init(settings: UpstreamSettings) {
        self.settings = settings
    }

    deinit {
        if let multi, let easy { curl_multi_remove_handle(multi, easy) }
        if let easy { curl_easy_cleanup(easy) }
        if let multi { curl_multi_cleanup(multi) }
    }

    /// Initialises libcurl for the process. Not thread-safe: call once, before any thread starts.
    public static func initializeLibrary() -> Bool {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK
    }

    public func send(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler, watching clientDescriptor: Int32
    ) -> UpstreamOutcome {
        guard let (easy, multi) = handles() else {
            Log.error("upstream.handle_failed")
            return .failed(.unreachable)
        }
        curl_easy_reset(easy)
        let transfer = CurlTransfer(handler: handler, easy: easy)
        guard let headerList = CurlHeaderList(request: request) else { return .failed(.unreachable) }
        return request.body.withUnsafeBytes { body in
            guard transfer.configure(request, body: body, headers: headerList, settings: settings) else {
                Log.error("upstream.configure_failed")
                return .failed(.unreachable)
            }
            guard curl_multi_add_handle(multi, easy) == CURLM_OK else { return .failed(.unreachable) }
            defer { curl_multi_remove_handle(multi, easy) }
            return withExtendedLifetime((transfer, headerList)) {
                run(transfer, multi: multi, watching: clientDescriptor)
            }
        }
    }

    private func handles() -> (UnsafeMutableRawPointer, UnsafeMutableRawPointer)? {
        if easy == nil { easy = curl_easy_init() }
        if multi == nil { multi = curl_multi_init() }
        guard let easy, let multi else { return nil }
        return (easy, multi)
    }

    /// Drives the transfer until it ends, times out, or the client leaves.
    private func run(
        _ transfer: CurlTransfer, multi: UnsafeMutableRawPointer, watching clientDescriptor: Int32
    ) -> UpstreamOutcome {
        let start = ContinuousClock.now
        var client = curl_waitfd(fd: clientDescriptor, events: Int16(CURL_WAIT_POLLIN), revents: 0)
        while true {
            var running: Int32 = 0
            guard curl_multi_perform(multi, &running) == CURLM_OK else { return .failed(.interrupted) }
            if transfer.stoppedByHandler { return .abortedByHandler }
            if running == 0 { return result(of: transfer, multi: multi) }

            let deadline =
                transfer.headDelivered
                ? transfer.lastActivity + settings.idleTimeout : start + settings.responseTimeout
            let now = ContinuousClock.now
            if now >= deadline { return .failed(transfer.headDelivered ? .stalled : .timedOut) }
            let wait = Int32(min(Self.milliseconds(deadline - now) + 1, 1000))

            client.revents = 0
            let watched: UInt32 = clientDescriptor >= 0 ? 1 : 0
            guard curl_multi_poll(multi, &client, watched, wait, nil) == CURLM_OK else {
                return .failed(.interrupted)
            }
            // After the request body, nginx sends nothing more on this connection: any
            // readability means it closed it because the client went away.
            if client.revents != 0 { return .clientGone }
        }
    }

    private func result(of transfer: CurlTransfer, multi: UnsafeMutableRawPointer) -> UpstreamOutcome {
        var code = CURLE_OK
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            if message.pointee.msg == CURLMSG_DONE { code = message.pointee.data.result }
        }
        return transfer.outcome(code: code)
    }

    static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        return max(0, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
    }
}
