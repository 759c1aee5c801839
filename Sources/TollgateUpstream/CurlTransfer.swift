import CCurl
import TollgateProxy

/// The state of one upstream call while libcurl runs it: collects the response head, hands
/// body bytes to the response handler and remembers whether the handler asked to stop.
///
/// Reached from libcurl's C callbacks through an unretained pointer; lives on the calling
/// thread's stack frame for the whole transfer.
final class CurlTransfer {
    let handler: any UpstreamResponseHandler
    let easy: UnsafeMutableRawPointer
    private(set) var headers: [(String, String)] = []
    private(set) var headDelivered = false
    private(set) var stoppedByHandler = false
    private(set) var lastActivity = ContinuousClock.now

    init(handler: any UpstreamResponseHandler, easy: UnsafeMutableRawPointer) {
        self.handler = handler
        self.easy = easy
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

    private func endOfHead() -> Bool {
        var status = 0
        guard tg_curl_get_long(easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK else { return false }
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
