import Synchronization
import TollgateCore
import TollgateProxy

/// Metering in PostgreSQL: every request belongs to a user, is admitted only within that user's
/// quota, and leaves exactly one row in the usage ledger.
///
/// Admissions and settlements go in batches, one round trip and one transaction per batch
/// (`tollgate.admit_batch_fast`, `tollgate.settle_batch`, see sql/005 and sql/006), on a connection
/// borrowed from a small pool; every call blocks its thread for that round trip, so the worker's
/// metering threads make them, not its event loop. A batch of one serves the single calls.
/// Shared by all threads of a worker.
///
/// While the database is unavailable, settlements go to the `SettlementJournal` (synced before
/// `settle` returns) and a background thread replays them once it is back; admission follows the
/// `OutagePolicy` (TOLLGATE_OUTAGE_POLICY: refuse, or allow known callers within an allowance).
public final class PostgresMetering: BatchMetering {
    public let settings: MeteringSettings
    let pool: ConnectionPool
    /// Where settlements wait while the database is down; nil: they are only logged.
    public let journal: SettlementJournal?
    /// Replays `journal` in the background once `startReplaying` is called.
    public let replayer: SettlementJournalReplayer?
    let outage: OutagePolicy
    /// Quota this worker holds for its callers (TOLLGATE_QUOTA_LEASE); nil when leases are off.
    let leases: QuotaLeases?
    let leasesStopped = Atomic<Bool>(false)

    public convenience init(settings: MeteringSettings, journal: SettlementJournal? = nil) {
        self.init(
            settings: settings, journal: journal, leases: settings.leaseLifetime.map { QuotaLeases(lifetime: $0) })
    }

    /// `leases` replaces the ones `settings.leaseLifetime` asks for (tests give theirs a clock).
    init(settings: MeteringSettings, journal: SettlementJournal?, leases: QuotaLeases?) {
        self.settings = settings
        let pool = ConnectionPool(
            conninfo: settings.databaseURL, size: settings.poolSize, waitLimit: settings.timeout,
            statementTimeout: settings.timeout)
        self.pool = pool
        self.journal = journal
        self.replayer = journal.map { journal in
            SettlementJournalReplayer(journal: journal) { settlements in Self.record(settlements, pool: pool) }
        }
        self.outage = OutagePolicy(
            mode: settings.outagePolicy, allowance: settings.outageAllowance,
            identities: IdentityCache(lifetime: settings.outageIdentityLifetime))
        self.leases = leases
    }

    /// Metering from TOLLGATE_* variables (see `MeteringSettings`), with its journal open and
    /// replaying in the background; nil when no database is set. Fails when the journal
    /// directory is unusable: a worker that could lose usage must not start.
    public static func fromEnvironment(
        _ environment: [String: String], platformKey: String
    ) throws(StoreError) -> PostgresMetering? {
        guard let settings = try MeteringSettings.resolve(environment: environment, platformKey: platformKey)
        else { return nil }
        var journal: SettlementJournal?
        if let directory = settings.journalDirectory {
            journal = try SettlementJournal(directory: directory, workerID: settings.workerID)
            // The fallback under TMPDIR may not survive a reboot: worth a warning.
            let temporary = (environment["TOLLGATE_JOURNAL_DIR"] ?? "").isEmpty && !directory.hasPrefix("/var/lib/")
            Log.write(
                temporary ? .warning : .info, "journal.directory", [(.path, directory), (.worker, settings.workerID)])
        }
        let metering = PostgresMetering(settings: settings, journal: journal)
        _ = metering.startReplaying()
        metering.startLeases()
        return metering
    }

    /// Starts replaying the journal in the background (once per worker process); false without
    /// a journal or when no thread could be started.
    @discardableResult
    public func startReplaying() -> Bool {
        replayer?.start() ?? false
    }

    /// For a worker that is stopping, after its last request: stops the background replay,
    /// replays once more (with the database up, nothing is left for another worker to adopt),
    /// and releases the journal's files. Blocks for the replay's round trips.
    public func finishJournal() {
        guard let replayer else { return }
        replayer.stop()
        replayer.replayOnce()
        replayer.journal.close()
    }

    /// Checks once, at start-up, that the database answers and has been migrated (up to the batch
    /// functions this worker calls, and the lease functions when leases are on).
    public func verify() throws(StoreError) {
        let result = try pool.withConnection { connection throws(StoreError) in
            try connection.execute(
                """
                SELECT to_regprocedure($1) IS NOT NULL AND to_regprocedure($2) IS NOT NULL
                       AND ($3::text IS NULL OR to_regprocedure($3) IS NOT NULL) AS ready
                """,
                parameters: [
                    Self.admitBatchSignature, Self.settleBatchSignature, leases == nil ? nil : Self.takeLeaseSignature,
                ])
        }
        guard result.boolean("ready") == true else {
            throw StoreError(.invalidSetting, "the database has no Tollgate schema yet: run 'tollgate migrate'")
        }
    }

    // Limitation: called one request at a time (as by a thread-per-request worker), admission and
    // settlement still cost one round trip each on the request's thread; batching pays off only
    // once the worker's metering threads gather what is waiting into the batch methods.

    /// Decides one request: a batch of one (see `admit(_ requests:)`). Blocks for a round trip.
    public func admit(_ request: AdmissionRequest) -> Admission {
        admit([request]).first ?? .rejected(.meteringUnavailable())
    }

    /// Records one settlement: a batch of one (see `settle(_ settlements:)`). Blocks until it is
    /// recorded or journaled.
    public func settle(_ settlement: Settlement) {
        settle([settlement])
    }
}
