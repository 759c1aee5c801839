/// Where and how patiently Tollgate calls the upstream provider.
public struct UpstreamSettings: Sendable {
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`.
    public var baseURL: String
    public var connectTimeout: Duration
    /// Longest wait for the response head (status and headers) after sending the request.
    public var responseTimeout: Duration
    /// Longest silence allowed once the body has started (between SSE events).
    public var idleTimeout: Duration

    public init(
        baseURL: String, connectTimeout: Duration = .seconds(10), responseTimeout: Duration = .seconds(600),
        idleTimeout: Duration = .seconds(300)
    ) {
        var base = baseURL
        while base.hasSuffix("/") { base.removeLast() }
        self.baseURL = base
        self.connectTimeout = connectTimeout
        self.responseTimeout = responseTimeout
        self.idleTimeout = idleTimeout
    }
}
