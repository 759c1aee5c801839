/// Which upstream response headers reach the client.
public enum HeaderPolicy {
    /// True for the upstream headers clients and SDKs use: x-request-id, openai-processing-ms,
    /// openai-version, openai-organization, openai-project, x-ratelimit-*, retry-after,
    /// retry-after-ms, x-should-retry, content-type. False for everything else, notably
    /// hop-by-hop headers, content-length, content-encoding and set-cookie.
    /// `lowercasedName` must already be lower-cased.
    public static func passesToClient(_ lowercasedName: String) -> Bool {
        switch lowercasedName {
        case "x-request-id", "openai-processing-ms", "openai-version", "openai-organization",
            "openai-project", "retry-after", "retry-after-ms", "x-should-retry", "content-type":
            return true
        default:
            return lowercasedName.hasPrefix("x-ratelimit-") && lowercasedName.utf8.count > 12
        }
    }
}
