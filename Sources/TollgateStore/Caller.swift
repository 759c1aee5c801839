import TollgateCore
import TollgateProxy

/// Who a request claims to be, read from its headers before any database round trip.
public enum Caller: Sendable, Hashable {
    /// The SHA-256 of a well-formed Tollgate API key (bearer mode).
    case keyHash([UInt8])
    /// A user name from the trusted identity header (header mode).
    case userName(String)

    /// The longest user name accepted from the identity header, in bytes.
    public static let maximumUserNameBytes = 200

    /// Reads the caller from `request`. A missing or malformed credential is a 401 at once: a
    /// token that cannot be a Tollgate key is never looked up.
    public static func identify(
        _ request: ProxyRequest, mode: AuthMode, userHeader: String
    ) -> Result<Caller, OpenAIError> {
        switch mode {
        case .bearer: return bearer(request.header("authorization"))
        case .header: return named(request.header(userHeader))
        }
    }

    static func bearer(_ authorization: String?) -> Result<Caller, OpenAIError> {
        guard let authorization, !authorization.allSatisfy(\.isWhitespace) else { return .failure(.missingAPIKey()) }
        let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return .failure(.missingAPIKey()) }
        let token = parts[1].trimmingWhitespace()
        guard APIKey.isWellFormed(token) else { return .failure(.incorrectAPIKey()) }
        return .success(.keyHash(APIKey.hash(token)))
    }

    static func named(_ value: String?) -> Result<Caller, OpenAIError> {
        let name = value?.trimmingWhitespace() ?? ""
        guard !name.isEmpty else { return .failure(.missingIdentity()) }
        guard name.utf8.count <= maximumUserNameBytes, !name.unicodeScalars.contains(where: { $0.value < 0x20 })
        else { return .failure(.unknownUser()) }
        return .success(.userName(name))
    }

    /// The `key_hash` and `user_name` parameters of `tollgate.admit` and `tollgate.authenticate`.
    var parameters: (keyHash: String?, userName: String?) {
        switch self {
        case .keyHash(let hash): (APIKey.byteaLiteral(hash), nil)
        case .userName(let name): (nil, name)
        }
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        guard let first = firstIndex(where: { !$0.isWhitespace }), let last = lastIndex(where: { !$0.isWhitespace })
        else { return "" }
        return String(self[first...last])
    }
}
