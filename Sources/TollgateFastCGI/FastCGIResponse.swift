import TollgateProxy

/// The answer to one FastCGI request, as the proxy service writes it: the CGI-style head and
/// body become standard-output records on the connection to nginx. Writes never block; what
/// nginx does not take at once waits on the connection.
///
/// Belongs to its loop's thread. Outlives its request harmlessly: once the request is over
/// (answered, or nginx closed the connection) every call is a no-op.
final class FastCGIResponse: ClientConnection {
    /// Nil once the request is over.
    private(set) weak var connection: FastCGIConnection?
    let fastCGIRequestID: UInt16
    /// Tollgate's id of the request, sent back as `x-tollgate-request-id`: the ledger's key, so
    /// a user's support question can be matched to its row.
    let requestID: String
    private var headSent = false
    private(set) var ended = false
    var observer: (any ClientObserver)?

    init(connection: FastCGIConnection, fastCGIRequestID: UInt16, requestID: String) {
        self.connection = connection
        self.fastCGIRequestID = fastCGIRequestID
        self.requestID = requestID
    }

    func sendHead(status: Int, headers: [(String, String)]) {
        guard !headSent, !ended else { return }
        headSent = true
        connection?.queueOutput(Self.head(status: status, headers: headers, requestID: requestID), for: self)
    }

    func send(_ bytes: [UInt8]) {
        guard !ended, !bytes.isEmpty else { return }
        connection?.queueOutput(bytes, for: self)
    }

    func flush() -> Bool {
        guard let connection, !ended else { return false }
        return connection.writePending()
    }

    var pendingBytes: Int { connection?.pendingBytes ?? 0 }

    func end() {
        guard !ended else { return }
        ended = true
        connection?.endResponse(self)
    }

    /// The request is over for the transport: nothing more goes out.
    func detach() {
        connection = nil
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
}
