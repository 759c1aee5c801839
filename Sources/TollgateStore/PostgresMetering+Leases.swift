import Dispatch
import Synchronization
import TollgateCore
import TollgateLoop
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// Quota leases (TOLLGATE_QUOTA_LEASE): requests admitted by the worker from quota it holds, their
/// records, and the background thread that takes and returns leases (sql/007_quota_leases.sql).
extension PostgresMetering {
    static let recordAdmissionsStatement = "tollgate_record_admissions"
    static let recordAdmissionsSQL = """
        SELECT tollgate.record_admissions($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[],
                                          $6::bigint[], $7::text[], $8::text[], $9::boolean[], $10::text)
        """
    static let takeLeaseSQL = """
        SELECT outcome, user_id, key_id, byok_key, quota, granted,
               extract(epoch FROM expires_at - now()) AS seconds_left
        FROM tollgate.take_lease($1::uuid, $2::bytea, $3::text, $4::bigint, $5::text, $6::text,
                                 $7::double precision)
        """
    static let takeLeaseSignature =
        "tollgate.take_lease(uuid, bytea, text, bigint, text, text, double precision)"

    public func admitFromLease(_ request: AdmissionRequest) -> (AdmissionTicket, LeasedAdmission?)? {
        guard let leases,
            case .success(let caller) = Caller.identify(
                request.client, mode: settings.authMode, userHeader: settings.userHeader)
        else { return nil }
        return leases.admit(request, caller: caller, platformKey: settings.platformKey)
    }

    /// Writes a reservation for each admission with `tollgate.record_admissions`, one round trip.
    /// When that fails, the requests go on without one: their settlements still record them, but
    /// a worker that dies meanwhile leaves no ledger row for them.
    public func record(_ admissions: [LeasedAdmission]) {
        defer { leases?.recorded(admissions) }
        guard !admissions.isEmpty else { return }
        let rows = admissions.map { admission -> [String?] in
            [
                admission.requestID, admission.leaseID, admission.userID, admission.keyID,
                String(admission.heldTokens), String(max(0, admission.estimatedInputTokens)),
                admission.api.rawValue, admission.model, String(admission.stream),
            ]
        }
        do {
            _ = try pool.withConnection { connection throws(StoreError) in
                try connection.executePrepared(
                    Self.recordAdmissionsStatement, sql: Self.recordAdmissionsSQL,
                    parameters: PostgresArray.columns(rows) + [settings.workerID])
            }
        } catch {
            // Limitation: records the database does not take (it is away) are not retried: their
            // requests are still settled (or journaled) with their usage, but a worker that dies
            // before they end leaves no worker_lost row for them.
            Log.warning(
                "lease.record_failed",
                [(.requests, String(admissions.count)), (.code, error.code.rawValue), (.detail, error.description)])
        }
    }

    public func forget(_ admission: LeasedAdmission) {
        leases?.recorded([admission])
    }

    /// Starts the thread that takes the leases asked for as soon as they are, and returns the
    /// expired ones within `interval`; false without leases or when no thread could be started.
    /// It stops with `stopLeases`, or when this metering is gone.
    @discardableResult
    public func startLeases(interval: Duration = .milliseconds(20)) -> Bool {
        guard let leases else { return false }
        let metering = WeakMetering(self)
        let milliseconds = Self.wholeMilliseconds(interval)
        do {
            try NativeThread.start(name: "tollgate-lease", stackSize: 256 << 10) { [leases] in
                while let current = metering.value, !current.leasesStopped.load(ordering: .acquiring) {
                    current.keepLeases()
                    _ = leases.choresWaiting.wait(timeout: .now() + .milliseconds(milliseconds))
                }
            }
            return true
        } catch {
            Log.error("lease.thread_not_started", [(.worker, settings.workerID)])
            return false
        }
    }

    /// `duration` in whole milliseconds, at least one: the lease thread's pause between turns.
    static func wholeMilliseconds(_ duration: Duration) -> Int {
        max(1, Int((duration / .milliseconds(1)).rounded()))
    }

    /// Ends the lease thread after its current turn.
    public func stopLeases() {
        leasesStopped.store(true, ordering: .releasing)
    }

    /// One turn of the lease thread: the takes asked for, then the returns due. Blocks for their
    /// round trips.
    func keepLeases() {
        guard let leases else { return }
        let chores = leases.chores()
        for (caller, wanted) in chores.takes {
            leases.taken(caller, takeLease(for: caller, wanted: wanted, lifetime: leases.lifetime))
        }
        guard !chores.returns.isEmpty else { return }
        do {
            _ = try pool.withConnection { connection throws(StoreError) in
                try connection.execute(
                    "SELECT tollgate.return_leases($1::uuid[])", parameters: [PostgresArray.literal(chores.returns)])
            }
        } catch {
            leases.returnFailed(chores.returns)
            Log.warning("lease.return_failed", [(.code, error.code.rawValue), (.detail, error.description)])
        }
    }

    /// Takes a lease of up to `wanted` tokens for `caller`; nil when the database admits nothing
    /// for them, grants nothing, or cannot be reached.
    private func takeLease(for caller: Caller, wanted: Int, lifetime: Duration) -> QuotaLeases.Holding? {
        let (keyHash, userName) = caller.parameters
        let leaseID = RequestID.make()
        let seconds = Double(lifetime.components.seconds) + Double(lifetime.components.attoseconds) / 1e18
        let result: QueryResult
        do {
            result = try pool.withConnection { connection throws(StoreError) in
                try connection.execute(
                    Self.takeLeaseSQL,
                    parameters: [
                        leaseID, keyHash, userName, String(wanted), settings.workerID, settings.secret, String(seconds),
                    ])
            }
        } catch {
            Log.warning("lease.take_failed", [(.code, error.code.rawValue), (.detail, error.description)])
            return nil
        }
        guard result.value("outcome") == AdmissionOutcome.admitted.rawValue, let userID = result.value("user_id"),
            let secondsLeft = result.value("seconds_left").flatMap(Double.init), secondsLeft > 0
        else { return nil }
        let expiresAt = ContinuousClock.now + .milliseconds(Int64(secondsLeft * 1000))
        let byokKey = result.value("byok_key")
        guard byokKey == nil, result.value("quota") != nil else {
            return QuotaLeases.Holding(
                userID: userID, keyID: result.value("key_id"), byokKey: byokKey, expiresAt: expiresAt)
        }
        guard let granted = result.integer("granted"), granted > 0 else { return nil }
        return QuotaLeases.Holding(
            userID: userID, keyID: result.value("key_id"), leaseID: leaseID, remaining: granted, expiresAt: expiresAt)
    }
}

/// The lease thread's reference to its metering, which must not keep it alive.
///
/// `@unchecked Sendable`: `value` is set before the thread starts and only read after; the runtime
/// loads weak references atomically.
private final class WeakMetering: @unchecked Sendable {
    weak var value: PostgresMetering?

    init(_ metering: PostgresMetering) {
        value = metering
    }
}
