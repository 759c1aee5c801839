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
    /// Where settlements the database cannot take wait for it (TOLLGATE_JOURNAL_DIR, default
    /// `SettlementJournal.defaultDirectory`); nil: no journal, such settlements are only logged.
    public var journalDirectory: String?
    /// Admission while the database is down (TOLLGATE_OUTAGE_POLICY).
    public var outagePolicy = OutagePolicy.Mode.refuse
    /// Tokens per user that one worker admits during one outage under `allow`
    /// (TOLLGATE_OUTAGE_ALLOWANCE).
    public var outageAllowance = 10_000
    /// How long a successful authentication vouches for a caller during an outage under `allow`
    /// (TOLLGATE_OUTAGE_IDENTITY_TTL, seconds); also how long a revoked key may still be used then.
    public var outageIdentityLifetime = Duration.seconds(600)
    /// How long a quota lease lets this worker admit a caller without the database
    /// (TOLLGATE_QUOTA_LEASE, seconds); nil (0): every request is admitted by the database. Also
    /// how long a key revoked, a user disabled or a quota lowered meanwhile may go unnoticed.
    public var leaseLifetime: Duration?

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
        if let text = environment["TOLLGATE_QUOTA_LEASE"], !text.isEmpty {
            guard let seconds = Double(text), seconds >= 0, seconds <= 3600 else {
                throw invalid("TOLLGATE_QUOTA_LEASE", text)
            }
            settings.leaseLifetime = seconds > 0 ? .milliseconds(Int64((seconds * 1000).rounded())) : nil
        }
        try settings.resolveOutage(environment: environment)
        return settings
    }

    private mutating func resolveOutage(environment: [String: String]) throws(StoreError) {
        let directory = environment["TOLLGATE_JOURNAL_DIR"] ?? ""
        journalDirectory = directory.isEmpty ? SettlementJournal.defaultDirectory(environment: environment) : directory
        if let text = environment["TOLLGATE_OUTAGE_POLICY"] {
            guard let mode = OutagePolicy.Mode(rawValue: text) else {
                throw Self.invalid("TOLLGATE_OUTAGE_POLICY", text)
            }
            outagePolicy = mode
        }
        if let text = environment["TOLLGATE_OUTAGE_ALLOWANCE"] {
            guard let tokens = Int(text), (0...1_000_000_000_000).contains(tokens) else {
                throw Self.invalid("TOLLGATE_OUTAGE_ALLOWANCE", text)
            }
            outageAllowance = tokens
        }
        if let text = environment["TOLLGATE_OUTAGE_IDENTITY_TTL"] {
            guard let seconds = Int(text), (1...86_400).contains(seconds) else {
                throw Self.invalid("TOLLGATE_OUTAGE_IDENTITY_TTL", text)
            }
            outageIdentityLifetime = .seconds(seconds)
        }
    }

    /// The variables, for `--help` texts.
    public static let help = """
        TOLLGATE_DATABASE_URL      PostgreSQL connection string; unset: metering off, usage only logged
        TOLLGATE_DATABASE_POOL     database connections per worker process (4)
        TOLLGATE_DATABASE_TIMEOUT  seconds to wait for a connection or a statement (5)
        TOLLGATE_AUTH_MODE         bearer (Tollgate API keys) or header (user named by nginx) (bearer)
        TOLLGATE_USER_HEADER       the identity header of header mode (x-tollgate-user)
        TOLLGATE_SECRET            decrypts BYOK keys; required as soon as a user has one
        TOLLGATE_JOURNAL_DIR       where settlements wait while the database is down; one directory per
                                   database (/var/lib/tollgate/journal if /var/lib/tollgate is writable,
                                   else $TMPDIR/tollgate-journal)
        TOLLGATE_OUTAGE_POLICY     admission while the database is down: refuse (503) or allow (callers
                                   this worker authenticated lately, within an allowance) (refuse)
        TOLLGATE_OUTAGE_ALLOWANCE  tokens per user and worker admitted during one outage under allow (10000)
        TOLLGATE_OUTAGE_IDENTITY_TTL  seconds a successful authentication vouches for a caller during an
                                   outage under allow; a key revoked meanwhile works that long (600)
        TOLLGATE_QUOTA_LEASE       seconds a worker may admit a caller from quota it holds, without a
                                   database round trip; a key revoked meanwhile works that long (0: off)

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
