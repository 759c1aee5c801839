/// A client request as the FastCGI transport hands it to the proxy service: nginx has already
/// parsed HTTP, and the whole body has been read.
public struct ProxyRequest: Sendable {
    /// Tollgate's own id for this request, used in logs and, later, as the ledger key.
    public var id: String
    public var method: String
    /// The URI path without the query string, e.g. `/v1/chat/completions`.
    public var path: String
    /// The query string without `?`, empty when absent.
    public var query: String
    /// Request headers by lower-cased name (`authorization`, `content-type`, ...).
    public var headers: [String: String]
    public var body: [UInt8]

    public init(
        id: String, method: String, path: String, query: String = "", headers: [String: String] = [:],
        body: [UInt8] = []
    ) {
        self.id = id
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
    }

    /// The value of a header, looked up by case-insensitive name.
    public func header(_ name: String) -> String? {
        headers[name.lowercased()]
    }
}
