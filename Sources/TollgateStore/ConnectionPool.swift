#if canImport(Glibc)
    import Glibc
#endif

/// A small fixed set of connections shared by a worker's metering threads (and the journal
/// replay): a thread borrows one connection for one call and gives it back.
///
/// Connections open lazily, on first borrow, and one found broken is dropped and reopened by the
/// next borrower, so a database restart costs no restart of Tollgate. A borrower that finds
/// every connection busy waits up to `waitLimit`, then gets a `timeout` error.
///
/// `@unchecked Sendable`: `idle` and `available` are read and written only with `mutex` held,
/// and a connection is either in `idle` or held by exactly one borrowing thread, never both,
/// so no connection is ever used by two threads at once.
public final class ConnectionPool: @unchecked Sendable {
    public let size: Int
    public let waitLimit: Duration
    private let connect: @Sendable () throws(StoreError) -> PostgresConnection
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let freed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var idle: [PostgresConnection] = []
    /// Permits: connections that may still be borrowed (idle ones plus those not opened yet).
    private var available: Int

    /// A pool of `size` connections made by `connect`.
    public init(
        size: Int, waitLimit: Duration = .seconds(5),
        connect: @escaping @Sendable () throws(StoreError) -> PostgresConnection
    ) {
        self.size = max(1, size)
        self.waitLimit = waitLimit
        self.connect = connect
        self.available = max(1, size)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        // Deadlines on the monotonic clock: a wall-clock jump must not cut or stretch a wait.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(freed, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    /// A pool of connections to `conninfo`, each with the given statement timeout.
    public convenience init(
        conninfo: String, size: Int = 4, waitLimit: Duration = .seconds(5), statementTimeout: Duration? = nil
    ) {
        self.init(size: size, waitLimit: waitLimit) { () throws(StoreError) in
            try PostgresConnection(conninfo: conninfo, statementTimeout: statementTimeout)
        }
    }

    deinit {
        pthread_cond_destroy(freed)
        pthread_mutex_destroy(mutex)
        freed.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` with a connection of its own, blocking while none is free. A call that fails
    /// because a pooled connection had silently broken (the server restarted) is run once more
    /// on a fresh connection.
    public func withConnection<T>(_ body: (PostgresConnection) throws(StoreError) -> T) throws(StoreError) -> T {
        let (connection, reused) = try borrow()
        defer { giveBack(connection) }
        do {
            return try body(connection)
        } catch let error where error.code == .connectionLost && reused {
            // Limitation: a connection that broke after the server committed but before the answer
            // came back makes the call run twice. settle is idempotent; a repeated admit fails on its
            // request id (the client gets a 503) and its first reservation waits for a worker release.
            try connection.reconnect()
            return try body(connection)
        }
    }

    /// Takes a permit (waiting up to `waitLimit`), then an idle connection or a new one.
    private func borrow() throws(StoreError) -> (PostgresConnection, reused: Bool) {
        let reusable = try takePermit()
        if let reusable, reusable.isHealthy { return (reusable, true) }
        do {
            return (try connect(), false)
        } catch {
            returnPermit(nil)
            throw error
        }
    }

    private func takePermit() throws(StoreError) -> PostgresConnection? {
        var deadline = Self.monotonicDeadline(after: waitLimit)
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while available == 0 {
            if pthread_cond_timedwait(freed, mutex, &deadline) == ETIMEDOUT && available == 0 {
                throw StoreError(.timeout, "no database connection came free within the wait limit")
            }
        }
        available -= 1
        return idle.popLast()
    }

    /// A connection that is not healthy is dropped here (closed by its deinit), not kept idle.
    private func giveBack(_ connection: PostgresConnection) {
        returnPermit(connection.isHealthy ? connection : nil)
    }

    private func returnPermit(_ connection: PostgresConnection?) {
        pthread_mutex_lock(mutex)
        if let connection { idle.append(connection) }
        available += 1
        pthread_cond_signal(freed)
        pthread_mutex_unlock(mutex)
    }

    private static func monotonicDeadline(after duration: Duration) -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let (seconds, attoseconds) = duration.components
        var nanoseconds = Int(now.tv_nsec) + Int(attoseconds / 1_000_000_000)
        let carry = nanoseconds / 1_000_000_000
        nanoseconds %= 1_000_000_000
        return timespec(tv_sec: now.tv_sec + Int(seconds) + carry, tv_nsec: nanoseconds)
    }
}
