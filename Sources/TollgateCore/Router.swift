/// Maps a method and URI path to a `Route`, under a configurable base path.
public struct Router: Sendable {
    /// The normalised base path: leading slash, no trailing slash ("" for the root).
    public let basePath: String

    /// `basePath` like "/v1" or "/api/playground/assistant/v1"; a trailing slash is ignored and
    /// a missing leading slash is added.
    public init(basePath: String) {
        var path = basePath
        while path.hasSuffix("/") { path.removeLast() }
        if !path.isEmpty, !path.hasPrefix("/") { path = "/" + path }
        self.basePath = path
    }

    /// `path` is the URI path without query string. Exact matches only (method names are
    /// case-sensitive, as in HTTP): {base}/chat/completions and {base}/responses take POST,
    /// {base}/models takes GET. A known path with another method → `.methodNotAllowed`;
    /// anything else → `.notFound`. A single trailing slash on the path is tolerated.
    public func route(method: String, path: String) -> Route {
        var path = Substring(path)
        if path.count > 1, path.hasSuffix("/") { path = path.dropLast() }
        guard path.hasPrefix(basePath) else { return .notFound }

        let (route, allowed): (Route, String)
        switch path.dropFirst(basePath.count) {
        case "/chat/completions": (route, allowed) = (.chatCompletions, "POST")
        case "/responses": (route, allowed) = (.responses, "POST")
        case "/models": (route, allowed) = (.models, "GET")
        default: return .notFound
        }
        return method == allowed ? route : .methodNotAllowed(allowed: allowed)
    }
}
