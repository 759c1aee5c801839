import CCurl
import TollgateProxy

/// The state of one upstream call while libcurl runs it: collects the response head, hands
/// body bytes to the response handler and remembers whether the handler asked to stop.
///
/// Reached from libcurl's C callbacks through an unretained pointer, so it must outlive the
/// transfer: the `CurlCall` running it owns it.
final class CurlTransfer {
    let handler: any UpstreamResponseHandler
    /// The libcurl handle running the transfer; set before it starts.
    var easy: UnsafeMutableRawPointer?
    private(set) var headers: [(String, String)] = []
    private(set) var headDelivered = false
    private(set) var stoppedByHandler = false
    private(set) var lastActivity = ContinuousClock.now
    /// Set while the handler holds the transfer (its client lags behind); libcurl keeps the
    /// bytes it could not deliver and delivers them again once resumed.
    var paused = false

    /// Size of libcurl's receive buffer for one call.
    static let receiveBufferBytes = 4096

    init(handler: any UpstreamResponseHandler) {
        self.handler = handler
    }

    /// One header line, CRLF included. Returns false to abort the transfer.
    func receiveHeaderLine(_ line: UnsafeRawBufferPointer) -> Bool {
        lastActivity = ContinuousClock.now
        guard !headDelivered else { return true }  // trailers of a chunked body
        if line.starts(with: "HTTP/".utf8) {
            // A new status line: an interim 1xx answer or a fresh response; start over.
            headers.removeAll(keepingCapacity: true)
            return true
        }
        if line.allSatisfy({ $0 == 13 || $0 == 10 }) {
            return endOfHead()
        }
        if let header = Self.parseHeader(line) { headers.append(header) }
        return true
    }

    /// A piece of body. Returns false to abort the transfer.
    func receiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool {
        lastActivity = ContinuousClock.now
        if handler.upstreamDidReceiveBody(bytes) { return true }
        stoppedByHandler = true
        return false
    }

    /// Sets up `easy` for `request`. The body and header list are not copied: they must outlive
    /// the transfer.
    func configure(
        _ request: UpstreamRequest, body: UnsafeRawBufferPointer, headers: CurlHeaderList, settings: UpstreamSettings
    ) -> Bool {
        guard let easy else { return false }
        let context = Unmanaged.passUnretained(self).toOpaque()
        let url = settings.baseURL + request.path + (request.query.isEmpty ? "" : "?" + request.query)
        var codes = [
            tg_curl_set_string(easy, CURLOPT_URL, url),
            tg_curl_set_long(easy, CURLOPT_NOSIGNAL, 1),
            // libcurl's receive buffer is 16 KiB by default, per call in flight: with thousands of
            // open streams, whose events are a few hundred bytes, a smaller one saves most of it.
            tg_curl_set_long(easy, CURLOPT_BUFFERSIZE, Self.receiveBufferBytes),
            tg_curl_set_long(easy, CURLOPT_CONNECTTIMEOUT_MS, CurlUpstream.milliseconds(settings.connectTimeout)),
            tg_curl_set_pointer(easy, CURLOPT_HTTPHEADER, headers.pointer),
            tg_curl_set_data_callback(easy, CURLOPT_HEADERFUNCTION, curlHeaderCallback),
            tg_curl_set_pointer(easy, CURLOPT_HEADERDATA, context),
            tg_curl_set_data_callback(easy, CURLOPT_WRITEFUNCTION, curlWriteCallback),
            tg_curl_set_pointer(easy, CURLOPT_WRITEDATA, context),
        ]
        if request.method == "POST" {
            codes.append(tg_curl_set_long(easy, CURLOPT_POST, 1))
            codes.append(tg_curl_set_off(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count)))
            codes.append(
                tg_curl_set_pointer(easy, CURLOPT_POSTFIELDS, UnsafeMutableRawPointer(mutating: body.baseAddress)))
        } else {
            codes.append(tg_curl_set_long(easy, CURLOPT_HTTPGET, 1))
        }
        return codes.allSatisfy { $0 == CURLE_OK }
    }

    /// How the transfer ended, given libcurl's result code for it.
    func outcome(code: CURLcode) -> UpstreamOutcome {
        if stoppedByHandler { return .abortedByHandler }
        if code == CURLE_OK && headDelivered { return .completed }
        if code == CURLE_OPERATION_TIMEDOUT && !headDelivered { return .failed(.timedOut) }
        if code != CURLE_OK {
            Log.warning("upstream.transfer_failed", [(.code, String(code.rawValue))])
        }
        return .failed(headDelivered ? .interrupted : .unreachable)
    }

    /// Counts as upstream activity: after a pause for a slow client, the silence was not the
    /// upstream's.
    func touch() {
        lastActivity = ContinuousClock.now
    }

    private func endOfHead() -> Bool {
        var status = 0
        guard let easy, tg_curl_get_long(easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK else { return false }
        if (100..<200).contains(status) { return true }
        headDelivered = true
        if handler.upstreamDidReceiveHead(status: status, headers: headers) { return true }
        stoppedByHandler = true
        return false
    }

    static func parseHeader(_ line: UnsafeRawBufferPointer) -> (String, String)? {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
        var value = line[(colon + 1)...]
        while let first = value.first, first == 32 || first == 9 { value = value.dropFirst() }
        while let last = value.last, last == 32 || last == 9 || last == 13 || last == 10 { value = value.dropLast() }
        return (name, String(decoding: value, as: UTF8.self))
    }
}

private func curlHeaderCallback(
    _ data: UnsafeMutablePointer<CChar>, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?
) -> Int {
    guard let context else { return 0 }
    let transfer = Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue()
    let line = UnsafeRawBufferPointer(start: data, count: size * count)
    return transfer.receiveHeaderLine(line) ? size * count : 0
}

private func curlWriteCallback(
    _ data: UnsafeMutablePointer<CChar>, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?
) -> Int {
    guard let context else { return 0 }
    let transfer = Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue()
    if transfer.handler.upstreamShouldPause {
        transfer.paused = true
        return tg_curl_write_pause
    }
    let bytes = UnsafeRawBufferPointer(start: data, count: size * count)
    return transfer.receiveBody(bytes) ? size * count : 0
}
