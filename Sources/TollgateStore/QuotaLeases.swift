import Dispatch
import Synchronization
import TollgateProxy

/// The quota leases a worker process holds, by caller: who the caller is and how many tokens this
/// worker may still reserve for them without asking the database (see sql/007_quota_leases.sql).
///
/// A lease is asked for (`learn`) after the database admitted a caller and showed quota to spare,
/// and taken in the background; until it expires, requests that fit in it are admitted here, on
/// the event loop (`admit`). A caller without a quota, or with their own upstream key, gets a lease
/// that only says who they are. The database refusing a caller (revoked key, disabled user, quota
/// spent) drops their lease at once; otherwise what the database learns meanwhile (a key revoked,
/// a quota lowered) takes effect here when the lease expires, `lifetime` after it was taken.
///
/// A lease in use is renewed in the background before it runs out: a new one is asked for when
/// half of it is left (twice as large, so that a busy caller soon needs few takes) or a quarter of
/// its lifetime. An expired or replaced lease is returned to the database once every request admitted from it
/// is recorded or forgotten, so that its leftover tokens are given back after, not before, the
/// reservations it handed out. Every call takes a mutex for a few dictionary operations.
// Limitation: near the end of a quota, tokens another worker holds in its lease are not available
// here until that lease is used up, returned or expired: a request may be refused that would fit
// a few seconds later. Leases are at most half of what is left to keep that share small.
final class QuotaLeases: Sendable {
    /// Who a caller is, and what this worker may still reserve for them.
    struct Holding: Sendable {
        var userID: String
        var keyID: String?
        /// The caller's own upstream key (BYOK), decrypted. Never logged.
        var byokKey: String?
        /// The lease in the database; nil when nothing limits the caller.
        var leaseID: String?
        /// Tokens of the lease not given to a request yet; nil: no limit.
        var remaining: Int?
        var expiresAt: ContinuousClock.Instant

        init(
            userID: String, keyID: String?, byokKey: String? = nil, leaseID: String? = nil, remaining: Int? = nil,
            expiresAt: ContinuousClock.Instant
        ) {
            self.userID = userID
            self.keyID = keyID
            self.byokKey = byokKey
            self.leaseID = leaseID
            self.remaining = remaining
            self.granted = remaining
            self.expiresAt = expiresAt
        }

        /// The lease's tokens when it was taken.
        let granted: Int?
    }

    /// What the background thread is to do: leases to take, with the tokens wanted, and leases
    /// to return.
    struct Chores: Sendable {
        var takes: [(caller: Caller, wanted: Int)]
        var returns: [String]
    }

    private struct State {
        var holdings: [Caller: Holding] = [:]
        var wanted: [Caller: Int] = [:]
        /// Callers whose take is under way.
        var taking: Set<Caller> = []
        /// Per lease: requests admitted from it not yet recorded or forgotten.
        var unrecorded: [String: Int] = [:]
        /// Leases no longer admitted from, to return once nothing of theirs is unrecorded.
        var retired: Set<String> = []
        /// When a take for a caller last brought no lease (refused, nothing granted, or the
        /// database away): none is asked for again during a quarter of the lifetime.
        var declined: [Caller: ContinuousClock.Instant] = [:]
    }

    let lifetime: Duration
    /// Signalled when a lease is wanted, so that the background thread takes it at once.
    let choresWaiting = DispatchSemaphore(value: 0)
    /// A lease is asked for this many times a request's reservation (or half of what the caller
    /// has left, when that is less).
    let requestsPerLease: Int
    private let now: @Sendable () -> ContinuousClock.Instant
    private let state = Mutex(State())

    init(
        lifetime: Duration, requestsPerLease: Int = 64,
        now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }
    ) {
        self.lifetime = lifetime
        self.requestsPerLease = max(2, requestsPerLease)
        self.now = now
    }

    /// Admits `request` from the caller's lease, or nil when there is none it fits in.
    func admit(
        _ request: AdmissionRequest, caller: Caller, platformKey: String
    ) -> (AdmissionTicket, LeasedAdmission?)? {
        let instant = now()
        var wanted = false
        defer { if wanted { choresWaiting.signal() } }
        return state.withLock { state -> (AdmissionTicket, LeasedAdmission?)? in
            guard var holding = state.holdings[caller] else { return nil }
            guard instant < holding.expiresAt else {
                Self.retire(caller, &state)
                return nil
            }
            defer { wanted = renewIfDue(caller, &state, at: instant) }
            if let byokKey = holding.byokKey {
                // As admitted by the database: a BYOK request holds nothing and has no reservation.
                let ticket = AdmissionTicket(
                    upstreamKey: byokKey, keySource: .byok, userID: holding.userID, keyID: holding.keyID)
                return (ticket, nil)
            }
            var held = 0
            if let leaseID = holding.leaseID {
                held = max(0, request.reservedTokens)
                guard let remaining = holding.remaining, remaining >= held else { return nil }
                holding.remaining = remaining - held
                state.holdings[caller] = holding
                state.unrecorded[leaseID, default: 0] += 1
            }
            let ticket = AdmissionTicket(
                upstreamKey: platformKey, keySource: .platform, userID: holding.userID, keyID: holding.keyID,
                reservedTokens: held)
            let leased = LeasedAdmission(
                request: request, leaseID: holding.leaseID, userID: holding.userID, keyID: holding.keyID,
                heldTokens: held)
            return (ticket, leased)
        }
    }

    /// Asks for a new lease when the caller's is down to half of its tokens (twice as many) or a
    /// quarter of its lifetime (as many), unless one is asked for already. True when it asked.
    private func renewIfDue(_ caller: Caller, _ state: inout State, at instant: ContinuousClock.Instant) -> Bool {
        guard let holding = state.holdings[caller], state.wanted[caller] == nil, !state.taking.contains(caller),
            !declinedLately(caller, state, at: instant)
        else { return false }
        if let granted = holding.granted, let remaining = holding.remaining, remaining < granted / 2 {
            state.wanted[caller] = min(granted, Int.max / 2) * 2
        } else if holding.expiresAt - instant < lifetime / 4 {
            state.wanted[caller] = holding.granted ?? 0
        } else {
            return false
        }
        return true
    }

    /// What the database answered for one of the caller's requests, reserving `requested` tokens:
    /// a refusal drops the caller's lease; an admission asks for a lease when none can serve such
    /// a request and the caller has enough quota left (`remaining`, nil: no limit) to share.
    func learn(_ caller: Caller, admitted: Bool, remaining: Int?, requested: Int) {
        let instant = now()
        let asked = state.withLock { state -> Bool in
            guard admitted else {
                Self.retire(caller, &state)
                state.wanted[caller] = nil
                return false
            }
            let holding = state.holdings[caller]
            if let holding, instant < holding.expiresAt, (holding.remaining ?? .max) >= requested {
                return false
            }
            guard !state.taking.contains(caller), !declinedLately(caller, state, at: instant) else { return false }
            guard let remaining else {
                state.wanted[caller] = 0
                return true
            }
            // As many tokens as `requestsPerLease` such requests, or twice the lease that did not
            // suffice, or a take already asked for, whichever is most; then at most half of what is left.
            let request = max(1, requested)
            let size = max(
                min(request, Int.max / requestsPerLease) * requestsPerLease,
                min(holding?.granted ?? 0, Int.max / 2) * 2, state.wanted[caller] ?? 0)
            let wanted = min(remaining / 2, size)
            guard wanted >= 2 * request else { return false }
            state.wanted[caller] = wanted
            return true
        }
        if asked { choresWaiting.signal() }
    }

    /// Takes what is to be done now: the leases wanted (marked as being taken) and the leases that
    /// may go back. Expired leases are retired first.
    func chores() -> Chores {
        let instant = now()
        return state.withLock { state in
            for (caller, holding) in state.holdings where instant >= holding.expiresAt {
                Self.retire(caller, &state)
            }
            state.declined = state.declined.filter { instant - $0.value < lifetime / 4 }
            let takes = state.wanted.map { (caller: $0.key, wanted: $0.value) }
            state.wanted.removeAll()
            state.taking.formUnion(takes.map(\.caller))
            let returns = state.retired.filter { state.unrecorded[$0, default: 0] == 0 }
            state.retired.subtract(returns)
            return Chores(takes: takes, returns: Array(returns))
        }
    }

    /// The answer to a take: the caller's new holding (replacing and retiring the old one), or
    /// nil when no lease was granted.
    func taken(_ caller: Caller, _ holding: Holding?) {
        let instant = now()
        state.withLock { state in
            state.taking.remove(caller)
            state.declined[caller] = holding == nil ? instant : nil
            guard let holding else { return }
            Self.retire(caller, &state)
            state.holdings[caller] = holding
        }
    }

    /// Leases whose return failed (the database away): they are tried again with the next chores.
    func returnFailed(_ leaseIDs: [String]) {
        state.withLock { $0.retired.formUnion(leaseIDs) }
    }

    /// Requests admitted from leases whose records were written, or never will be.
    func recorded(_ admissions: [LeasedAdmission]) {
        state.withLock { state in
            for leaseID in admissions.compactMap(\.leaseID) {
                let left = state.unrecorded[leaseID, default: 0] - 1
                state.unrecorded[leaseID] = left > 0 ? left : nil
            }
        }
    }

    /// The caller's holding, for tests and logs.
    func holding(of caller: Caller) -> Holding? {
        state.withLock { $0.holdings[caller] }
    }

    /// The lease ids retired and not yet handed out for return.
    var retiredCount: Int {
        state.withLock { $0.retired.count }
    }

    private func declinedLately(_ caller: Caller, _ state: State, at instant: ContinuousClock.Instant) -> Bool {
        guard let declined = state.declined[caller] else { return false }
        return instant - declined < lifetime / 4
    }

    private static func retire(_ caller: Caller, _ state: inout State) {
        guard let holding = state.holdings.removeValue(forKey: caller) else { return }
        if let leaseID = holding.leaseID { state.retired.insert(leaseID) }
    }
}
