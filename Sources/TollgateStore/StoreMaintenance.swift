import TollgateProxy

/// Upkeep of worker liveness, for the supervisor: it heartbeats its live workers, releases the
/// reservations of a worker that exited, and sweeps the workers of any machine that stopped
/// heartbeating (so a dead machine's reservations are freed by the others).
///
/// Its methods match the supervisor's `WorkerRegistry`. Owned by the supervisor's thread; each
/// call blocks for one round trip on its single connection.
public final class StoreMaintenance {
    let pool: ConnectionPool
    /// Where workers journal settlements the database could not take; nil without a journal.
    let journalDirectory: String?

    public init(databaseURL: String, timeout: Duration = .seconds(5), journalDirectory: String? = nil) {
        self.pool = ConnectionPool(conninfo: databaseURL, size: 1, waitLimit: timeout, statementTimeout: timeout)
        self.journalDirectory = journalDirectory
    }

    /// Maintenance from TOLLGATE_DATABASE_URL (and TOLLGATE_DATABASE_TIMEOUT); nil when unset.
    public static func fromEnvironment(_ environment: [String: String]) throws(StoreError) -> StoreMaintenance? {
        guard let settings = try MeteringSettings.resolve(environment: environment, platformKey: "") else { return nil }
        return StoreMaintenance(
            databaseURL: settings.databaseURL, timeout: settings.timeout, journalDirectory: settings.journalDirectory)
    }

    /// Marks the workers alive now.
    public func heartbeat(_ workerIDs: [String]) throws(StoreError) {
        _ = try pool.withConnection { connection throws(StoreError) in
            try connection.execute("SELECT tollgate.heartbeat($1::text[])", parameters: [Self.textArray(workerIDs)])
        }
    }

    /// Settles every reservation of an exited worker as a 'worker_lost' ledger row and frees the
    /// tokens it held. Idempotent.
    public func releaseWorker(_ workerID: String) throws(StoreError) {
        // The worker's journaled settlements carry real usage: record them before its
        // reservations turn into worker_lost estimates.
        if let journalDirectory {
            _ = try SettlementJournal.replayLeftovers(ofWorker: workerID, directory: journalDirectory) { settlements in
                PostgresMetering.record(settlements, pool: pool)
            }
        }
        let released = try count("SELECT tollgate.release_worker($1)", [workerID])
        if released > 0 {
            Log.warning("store.worker_released", [(.worker, workerID), (.inFlight, String(released))])
        }
    }

    /// Releases every worker, of any machine, whose heartbeat is older than `age`.
    public func sweepStaleWorkers(olderThan age: Duration) throws(StoreError) {
        let (seconds, attoseconds) = age.components
        let milliseconds = max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        let swept = try count(
            "SELECT tollgate.sweep_stale_workers($1::bigint * interval '1 millisecond')", [String(milliseconds)])
        if swept > 0 {
            Log.warning("store.stale_workers_released", [(.workers, String(swept))])
        }
    }

    private func count(_ sql: String, _ parameters: [String?]) throws(StoreError) -> Int {
        let result = try pool.withConnection { connection throws(StoreError) in
            try connection.execute(sql, parameters: parameters)
        }
        guard let value = result.scalar.flatMap({ Int($0) }) else {
            throw StoreError(.unexpectedResult, "expected a count")
        }
        return value
    }

    /// A PostgreSQL array literal of strings, each quoted, with `"` and `\` escaped.
    static func textArray(_ values: [String]) -> String {
        PostgresArray.literal(values)
    }
}
