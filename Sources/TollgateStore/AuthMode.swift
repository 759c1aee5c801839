/// How PostgresMetering learns who is calling.
public enum AuthMode: String, Sendable {
    /// `Authorization: Bearer tg-…`: a Tollgate API key, looked up by its SHA-256.
    case bearer
    /// A user name in a request header that nginx sets (from `auth_request`), after clearing any
    /// copy the client sent. Tollgate trusts it, so this mode is only safe behind that nginx.
    case header
}
