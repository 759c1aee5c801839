import TollgateCore
import TollgateProxy

/// Metering in PostgreSQL: every request belongs to a user, is admitted only within that user's
/// quota, and leaves exactly one row in the usage ledger.
///
/// Admission and settlement are one round trip each (`tollgate.admit`, `tollgate.settle`, see
/// sql/002_functions.sql) on a connection borrowed from a small pool, so they block the calling
/// request thread for about a millisecond. Shared by all request threads of a worker.
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

    public init(settings: MeteringSettings, journal: SettlementJournal? = nil) {
        self.settings = settings
        let pool = ConnectionPool(
            conninfo: settings.databaseURL, size: settings.poolSize, waitLimit: settings.timeout,
            statementTimeout: settings.timeout)
        self.pool = pool
        self.journal = journal
        self.replayer = journal.map { journal in
            SettlementJournalReplayer(journal: journal) { settlement throws(StoreError) in
                try Self.record(settlement, pool: pool)
            }
        }
        self.outage = OutagePolicy(
            mode: settings.outagePolicy, allowance: settings.outageAllowance,
            identities: IdentityCache(lifetime: settings.outageIdentityLifetime))
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

    /// Checks once, at start-up, that the database answers and has been migrated.
    public func verify() throws(StoreError) {
        let result = try pool.withConnection { connection throws(StoreError) in
            try connection.execute(
                "SELECT to_regprocedure('tollgate.admit(uuid, bytea, text, bigint, bigint, text, text, boolean, text, "
                    + "text)') IS NOT NULL AS ready")
        }
        guard result.boolean("ready") == true else {
            throw StoreError(.invalidSetting, "the database has no Tollgate schema yet: run 'tollgate migrate'")
        }
    }

    // Limitation: admission and settlement are one synchronous database round trip each, on the
    // request's own thread; on a 2-core machine shared with nginx and PostgreSQL this holds full
    // metering near 6% of nginx's own throughput at 64 connections (the target is 30%).
    // Settling in batches off the request thread, and leasing quota to workers in blocks, are
    // the candidates.
    public func admit(_ request: AdmissionRequest) -> Admission {
        let caller: Caller
        switch Caller.identify(request.client, mode: settings.authMode, userHeader: settings.userHeader) {
        case .failure(let error): return .rejected(error)
        case .success(let identified): caller = identified
        }

        let answer: AdmissionAnswer
        do {
            answer = try pool.withConnection { connection throws(StoreError) in
                try AdmissionAnswer(
                    connection.executePrepared(
                        Self.admitStatement, sql: Self.admitSQL, parameters: admitParameters(request, caller)))
            }
        } catch {
            return withoutDatabase(caller, requestID: request.requestID, tokens: request.reservedTokens, error)
        }
        outage.learn(answer, caller: caller)
        return decide(answer, requested: request.reservedTokens, requestID: request.requestID)
    }

    public func admitListing(from client: ProxyRequest) -> Admission {
        let caller: Caller
        switch Caller.identify(client, mode: settings.authMode, userHeader: settings.userHeader) {
        case .failure(let error): return .rejected(error)
        case .success(let identified): caller = identified
        }

        let answer: AdmissionAnswer
        do {
            answer = try pool.withConnection { connection throws(StoreError) in
                try AdmissionAnswer(
                    connection.executePrepared(
                        Self.authenticateStatement, sql: Self.authenticateSQL,
                        parameters: authenticateParameters(caller)))
            }
        } catch {
            return withoutDatabase(caller, requestID: client.id, tokens: 0, error)
        }
        outage.learn(answer, caller: caller)
        return decide(answer, requested: 0, requestID: client.id)
    }

    public func settle(_ settlement: Settlement) {
        outage.settled(requestID: settlement.requestID, totalTokens: settlement.usage.totalTokens)
        guard settlement.ticket.userID != nil else {
            Log.error("usage.settle_failed", settlement.logFields + [(.detail, "ticket without a user")])
            return
        }
        do {
            if try Self.record(settlement, pool: pool) {
                // The ledger row is the record; the log line is for debugging the data path.
                Log.debug("usage.settled", settlement.logFields)
            } else {
                Log.warning("usage.already_settled", [(.requestID, settlement.requestID)])
            }
        } catch {
            keep(settlement, after: error)
        }
    }

    /// Records one settlement with `tollgate.settle`; true when its ledger row is new (false: the
    /// request was settled before). Blocks for one round trip.
    static func record(_ settlement: Settlement, pool: ConnectionPool) throws(StoreError) -> Bool {
        let result = try pool.withConnection { connection throws(StoreError) in
            try connection.executePrepared(
                Self.settleStatement, sql: Self.settleSQL, parameters: Self.settleParameters(settlement))
        }
        return result.scalar == "t"
    }

    /// A settlement the database did not take: journaled when the database is unavailable (it
    /// is replayed later), otherwise logged with every count.
    private func keep(_ settlement: Settlement, after error: StoreError) {
        guard OutagePolicy.isOutage(error), let journal else {
            // Limitation: a settlement the database refuses (a constraint, not an outage), or one
            // failing without a journal, is only logged, with every count; its reservation stays
            // until its worker is released. Replaying it would be refused again.
            Log.error(
                "usage.settle_failed",
                settlement.logFields + [(.code, error.code.rawValue), (.detail, error.description)])
            return
        }
        do {
            try journal.append(settlement)
            Log.warning("usage.journaled", settlement.logFields + [(.code, error.code.rawValue)])
        } catch let failure {
            // Limitation: with neither the database nor the journal's disk writable, the log line
            // is the only record left of this settlement.
            Log.error(
                "usage.journal_failed",
                settlement.logFields + [(.code, error.code.rawValue), (.detail, failure.description)])
        }
    }

    /// Turns the store's answer into an admission; the decrypted BYOK key goes only into the ticket.
    private func decide(_ answer: AdmissionAnswer, requested: Int, requestID: String) -> Admission {
        if let rejection = answer.outcome.rejection(standing: answer.standing, requested: requested) {
            logRejection(answer.outcome, requestID: requestID)
            return .rejected(rejection)
        }
        let byok = answer.byokKey
        let reserved = byok == nil && answer.standing != nil ? max(0, requested) : 0
        return .admitted(
            AdmissionTicket(
                upstreamKey: byok ?? settings.platformKey, keySource: byok == nil ? .platform : .byok,
                userID: answer.userID, keyID: answer.keyID, reservedTokens: reserved))
    }

    private func logRejection(_ outcome: AdmissionOutcome, requestID: String) {
        switch outcome {
        case .byokSecretMissing:
            Log.error(
                "admission.byok_secret_missing",
                [(.requestID, requestID), (.detail, "TOLLGATE_SECRET is not set; it is required to use BYOK keys")])
        case .byokSecretInvalid:
            Log.error(
                "admission.byok_secret_invalid",
                [(.requestID, requestID), (.detail, "TOLLGATE_SECRET does not decrypt this user's BYOK key")])
        default:
            Log.debug("admission.rejected", [(.requestID, requestID), (.outcome, outcome.rawValue)])
        }
    }

    /// Admission when the database did not answer: the outage policy decides when it is down,
    /// any other failure is a 503.
    private func withoutDatabase(_ caller: Caller, requestID: String, tokens: Int, _ error: StoreError) -> Admission {
        guard OutagePolicy.isOutage(error) else { return unavailable(error, requestID: requestID) }
        return outage.admit(
            caller, requestID: requestID, tokens: tokens, platformKey: settings.platformKey, failure: error)
    }

    private func unavailable(_ error: StoreError, requestID: String) -> Admission {
        Log.error(
            "admission.store_failed",
            [(.requestID, requestID), (.code, error.code.rawValue), (.detail, error.description)])
        return .rejected(.meteringUnavailable())
    }
}
