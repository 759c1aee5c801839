import TollgateCore

extension API {
    /// The path of this API below the upstream base URL.
    var upstreamPath: String {
        switch self {
        case .chatCompletions: "/chat/completions"
        case .responses: "/responses"
        }
    }
}
