import CFastCGI
import TollgateProxy

/// The client side of one FastCGI request: writes the CGI-style head and body to nginx through
/// libfcgi's output stream.
///
/// Owned by the request thread; the `FCGX_Request` it points to belongs to that thread too.
final class FastCGIClient: DetachableClient {
    private let request: UnsafeMutablePointer<FCGX_Request>
    /// Tollgate's id of the request, sent back as `x-tollgate-request-id`: the ledger's key, so
    /// a user's support question can be matched to its row.
    private let requestID: String
    private(set) var headSent = false
    /// Set once a write failed: nginx closed the connection because the client left.
    private(set) var gone = false

    init(request: UnsafeMutablePointer<FCGX_Request>, requestID: String) {
        self.request = request
        self.requestID = requestID
    }

    var disconnectDescriptor: Int32 { tg_fcgx_descriptor(request) }

    func sendHead(status: Int, headers: [(String, String)]) {
        guard !headSent else { return }
        headSent = true
        var bytes = Self.head(status: status, headers: headers, requestID: requestID)
        put(&bytes)
    }

    /// The CGI-style response head nginx turns into the status line and headers.
    static func head(status: Int, headers: [(String, String)], requestID: String) -> [UInt8] {
        var head = "Status: \(status) \(reason(for: status))\r\n"
        for (name, value) in headers {
            head += "\(name): \(value)\r\n"
        }
        head += "x-tollgate-request-id: \(requestID)\r\n\r\n"
        return Array(head.utf8)
    }

    /// Flushes what libfcgi holds and takes the connection from it; nil when the client is gone.
    func detachFromThread() -> (any DetachedClient)? {
        guard flush() else { return nil }
        var fastCGIRequestID: Int32 = 0
        let descriptor = tg_fcgx_detach(request, &fastCGIRequestID)
        gone = true  // libfcgi's streams are freed: nothing more goes through them
        return FastCGIStreamClient(
            descriptor: descriptor, fastCGIRequestID: UInt16(truncatingIfNeeded: fastCGIRequestID),
            requestID: requestID, headSent: headSent)
    }

    func send(_ bytes: [UInt8]) {
        var bytes = bytes
        put(&bytes)
    }

    /// Flushes and completes the FastCGI request now; the server's own `FCGX_Finish_r` after
    /// the handler returns then finds nothing left to do.
    func end() {
        guard !gone else { return }
        gone = true
        FCGX_Finish_r(request)
    }

    func flush() -> Bool {
        guard !gone, let out = request.pointee.out else { return false }
        if FCGX_FFlush(out) < 0 { gone = true }
        return !gone
    }

    /// The reason phrase nginx puts on the status line; some HTTP clients show it.
    static func reason(for status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 409: "Conflict"
        case 413: "Payload Too Large"
        case 422: "Unprocessable Entity"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        default: (200..<300).contains(status) ? "OK" : "Error"
        }
    }

    private func put(_ bytes: inout [UInt8]) {
        guard !gone, let out = request.pointee.out, !bytes.isEmpty else { return }
        let written = bytes.withUnsafeMutableBytes { buffer in
            FCGX_PutStr(buffer.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(buffer.count), out)
        }
        if written < 0 { gone = true }
    }
}
