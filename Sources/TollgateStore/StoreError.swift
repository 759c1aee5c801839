/// A failure of the metering store, with a stable code for logs and dashboards.
///
/// `description` is safe to log: it never holds a connection string, a password, a query
/// parameter or a key. Server messages are kept to their primary line (never the DETAIL, which
/// may quote row values), and connection-string parse errors are not quoted at all.
public struct StoreError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        /// A connection could not be opened (server down, refused, bad credentials).
        case connectionFailed = "connection_failed"
        /// An open connection broke during a call; the call may not have reached the server.
        case connectionLost = "connection_lost"
        /// The server refused or failed a statement.
        case queryFailed = "query_failed"
        /// No pooled connection came free in time, or the server cancelled a slow statement.
        case timeout
        /// The server answered with something this code does not expect (a missing column...).
        case unexpectedResult = "unexpected_result"
        /// A setting (environment variable) is missing or invalid.
        case invalidSetting = "invalid_setting"
        /// A migration file is missing, unreadable or was changed after it was applied.
        case migrationFailed = "migration_failed"
        /// An admin command named something that does not exist (a user, a key id).
        case notFound = "not_found"
        /// An admin command would duplicate something unique (a user name).
        case conflict
    }

    public let code: Code
    /// The server's SQLSTATE, when the server reported the failure.
    public let sqlState: String?
    /// One line, free of secrets.
    public let message: String

    public init(_ code: Code, _ message: String, sqlState: String? = nil) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
    }

    public var description: String {
        guard let sqlState else { return "\(code.rawValue): \(message)" }
        return "\(code.rawValue) (SQLSTATE \(sqlState)): \(message)"
    }
}
