/// What PostgresMetering needs, resolved from `TOLLGATE_*` environment variables.
///
/// `databaseURL` and `secret` are never logged nor quoted in an error.
public struct MeteringSettings: Sendable {
    /// libpq connection string or URI (TOLLGATE_DATABASE_URL).
    public var databaseURL: String
    /// Connections per worker process (TOLLGATE_DATABASE_POOL), whatever its thread count.
    public var poolSize = 4
    /// How long a request waits for a pooled connection, and the longest a statement may run
    /// (TOLLGATE_DATABASE_TIMEOUT, seconds).
    public var timeout = Duration.seconds(5)
    public var authMode = AuthMode.bearer
    /// The identity header of header mode, lower-case (TOLLGATE_USER_HEADER).
    public var userHeader = "x-tollgate-user"
    /// Decrypts BYOK keys (TOLLGATE_SECRET); required only when some user has one.
    public var secret: String?
    /// This worker process in `tollgate.reservations` and `tollgate.workers` (TOLLGATE_WORKER_ID,
    /// set by the supervisor; `host:pid` without it).
    public var workerID = WorkerIdentity.current()
    /// The upstream key of requests that are not BYOK.
    public var platformKey: String

    public init(databaseURL: String, platformKey: String) {
        self.databaseURL = databaseURL
        self.platformKey = platformKey
    }

    /// The settings, or nil when TOLLGATE_DATABASE_URL is unset or empty (metering off).
    public static func resolve(
        environment: [String: String], platformKey: String
    ) throws(StoreError) -> MeteringSettings? {
        guard let url = environment["TOLLGATE_DATABASE_URL"], !url.isEmpty else { return nil }
        var settings = MeteringSettings(databaseURL: url, platformKey: platformKey)
        settings.workerID = WorkerIdentity.current(environment: environment)
        if let text = environment["TOLLGATE_DATABASE_POOL"] {
            guard let size = Int(text), (1...64).contains(size) else { throw invalid("TOLLGATE_DATABASE_POOL", text) }
            settings.poolSize = size
        }
        if let text = environment["TOLLGATE_DATABASE_TIMEOUT"] {
            guard let seconds = Double(text), seconds > 0, seconds <= 600 else {
                throw invalid("TOLLGATE_DATABASE_TIMEOUT", text)
            }
            settings.timeout = .milliseconds(Int64((seconds * 1000).rounded()))
        }
        if let text = environment["TOLLGATE_AUTH_MODE"] {
            guard let mode = AuthMode(rawValue: text) else { throw invalid("TOLLGATE_AUTH_MODE", text) }
            settings.authMode = mode
        }
        if let text = environment["TOLLGATE_USER_HEADER"] {
            guard isHeaderName(text) else { throw invalid("TOLLGATE_USER_HEADER", text) }
            settings.userHeader = text.lowercased()
        }
        if let secret = environment["TOLLGATE_SECRET"], !secret.isEmpty {
            settings.secret = secret
        }
        return settings
    }

    /// The variables, for `--help` texts.
    public static let help = """
        TOLLGATE_DATABASE_URL      PostgreSQL connection string; unset: metering off, usage only logged
        TOLLGATE_DATABASE_POOL     database connections per worker process (4)
        TOLLGATE_DATABASE_TIMEOUT  seconds to wait for a connection or a statement (5)
        TOLLGATE_AUTH_MODE         bearer (Tollgate API keys) or header (user named by nginx) (bearer)
        TOLLGATE_USER_HEADER       the identity header of header mode (x-tollgate-user)
        TOLLGATE_SECRET            decrypts BYOK keys; required as soon as a user has one

        """

    private static func invalid(_ name: String, _ value: String) -> StoreError {
        StoreError(.invalidSetting, "\(name): invalid value '\(value)'")
    }

    /// An HTTP token: letters, digits and `-`, which is also what nginx passes through as is.
    private static func isHeaderName(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 64
            && text.utf8.allSatisfy { byte in
                (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                    || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                    || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-")
            }
    }
}
