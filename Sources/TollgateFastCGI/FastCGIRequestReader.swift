import CFastCGI
import TollgateCore
import TollgateProxy

/// Turns a libfcgi request (CGI parameters and the stdin stream) into a `ProxyRequest`.
enum FastCGIRequestReader {
    enum Failure: Error {
        /// The body is larger than the worker accepts; nginx should have stopped it first.
        case bodyTooLarge
        /// nginx closed the connection before the body was complete.
        case bodyIncomplete
    }

    static func read(
        _ request: UnsafeMutablePointer<FCGX_Request>, id: String, maxBodyBytes: Int
    ) throws(Failure) -> ProxyRequest {
        let parameters = NameValueBlock.parse(request.pointee.envp)
        let uri = parameters["REQUEST_URI"] ?? parameters["DOCUMENT_URI"] ?? "/"
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)
        var headers: [String: String] = [:]
        for (name, value) in parameters where name.hasPrefix("HTTP_") {
            headers[name.dropFirst(5).lowercased().replacingUnderscores()] = value
        }
        if let type = parameters["CONTENT_TYPE"], !type.isEmpty { headers["content-type"] = type }

        let expected = parameters["CONTENT_LENGTH"].flatMap { Int($0) }.map { max($0, 0) }
        guard (expected ?? 0) <= maxBodyBytes else { throw .bodyTooLarge }
        let body = try readBody(request, expected: expected, limit: maxBodyBytes)
        return ProxyRequest(
            id: id, method: parameters["REQUEST_METHOD"] ?? "GET", path: path ?? "/",
            query: parameters["QUERY_STRING"] ?? "", headers: headers, body: body)
    }

    /// Reads `expected` bytes (CONTENT_LENGTH, which nginx always sends when it buffers the
    /// request body), or everything up to `limit` when the length is unknown.
    private static func readBody(
        _ request: UnsafeMutablePointer<FCGX_Request>, expected: Int?, limit: Int
    ) throws(Failure) -> [UInt8] {
        guard let input = request.pointee.in else { return [] }
        var body = [UInt8](repeating: 0, count: expected ?? min(limit + 1, 64 << 10))
        var filled = 0
        while filled < body.count {
            let count = body.withUnsafeMutableBytes { buffer in
                FCGX_GetStr(
                    buffer.baseAddress.map { ($0 + filled).assumingMemoryBound(to: CChar.self) },
                    Int32(clamping: buffer.count - filled), input)
            }
            if count <= 0 { break }
            filled += Int(count)
            if expected == nil && filled == body.count && body.count <= limit {
                body.append(contentsOf: repeatElement(0, count: min(body.count, limit + 1 - body.count)))
            }
        }
        if let expected, filled < expected { throw .bodyIncomplete }
        guard filled <= limit else { throw .bodyTooLarge }
        body.removeLast(body.count - filled)
        return body
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String {
        String(self.map { $0 == "_" ? "-" : $0 })
    }
}
