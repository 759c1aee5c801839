import TollgateProxy

/// A request while nginx is still sending it: its FastCGI id and flags, the PARAMS bytes, then
/// the body from the STDIN records.
struct FastCGIIncomingRequest {
    let id: UInt16
    /// nginx asked to keep the connection open for its next request (FCGI_KEEP_CONN).
    let keepConnection: Bool
    var parameterBytes: [UInt8] = []
    /// Decoded once the PARAMS stream has ended.
    var parameters: [String: String]?
    var body: [UInt8] = []
    var bodyComplete = false
    /// The body is larger than the worker accepts: it is read and dropped, and the request
    /// answered 413 as soon as that is known.
    var bodyTooLarge = false

    /// Largest PARAMS stream accepted: nginx's request headers fit many times over.
    static let largestParameters = 1 << 20

    init(id: UInt16, keepConnection: Bool) {
        self.id = id
        self.keepConnection = keepConnection
    }

    /// The body length nginx announced (it always sends CONTENT_LENGTH for a buffered body).
    var announcedLength: Int? {
        parameters?["CONTENT_LENGTH"].flatMap { Int($0) }.map { max($0, 0) }
    }

    /// The request as the proxy service sees it.
    func proxyRequest(id: String) -> ProxyRequest {
        let parameters = parameters ?? [:]
        let uri = parameters["REQUEST_URI"] ?? parameters["DOCUMENT_URI"] ?? "/"
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)
        var headers: [String: String] = [:]
        for (name, value) in parameters where name.hasPrefix("HTTP_") {
            headers[Self.headerName(name.utf8.dropFirst(5))] = value
        }
        if let type = parameters["CONTENT_TYPE"], !type.isEmpty { headers["content-type"] = type }
        return ProxyRequest(
            id: id, method: parameters["REQUEST_METHOD"] ?? "GET", path: path ?? "/",
            query: parameters["QUERY_STRING"] ?? "", headers: headers, body: body)
    }

    /// `HTTP_OPENAI_BETA` → `openai-beta`.
    private static func headerName(_ bytes: Substring.UTF8View) -> String {
        String(
            decoding: bytes.map { byte in
                byte == UInt8(ascii: "_") ? UInt8(ascii: "-") : (65...90).contains(byte) ? byte + 32 : byte
            }, as: UTF8.self)
    }
}
