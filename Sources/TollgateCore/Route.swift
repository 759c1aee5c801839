/// Where a request goes, as decided by `Router` from its method and path.
public enum Route: Sendable, Equatable {
    case chatCompletions, responses, models
    case notFound
    /// A known path with another method; `allowed` is the value of the `Allow` header.
    case methodNotAllowed(allowed: String)
}
