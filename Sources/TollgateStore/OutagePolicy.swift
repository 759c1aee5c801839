import Synchronization
import TollgateCore
import TollgateProxy

/// Admission while the metering database cannot be reached (TOLLGATE_OUTAGE_POLICY).
///
/// `refuse` (the default) answers every generation request 503 `metering_unavailable`.
/// `allow` serves callers that authenticated with success in this worker recently (see
/// `IdentityCache`) with the platform key, while the tokens this worker admitted for their user
/// during this outage stay within `allowance`. Each request holds its reservation size (the
/// same estimate as normal admission) until it is settled, then the tokens it really used.
/// Unknown callers and BYOK callers (whose provider key is never kept) get the 503. Nothing is
/// reserved in the database: the settlements, journaled if need be, add the usage to the
/// user's counter when they reach it (sql/004). An outage ends, and the allowances start
/// again from zero, at the database's next answer to an admission.
///
/// Shared by the metering threads; each call takes a mutex for a few dictionary operations.
public final class OutagePolicy: Sendable {
    /// TOLLGATE_OUTAGE_POLICY.
    public enum Mode: String, Sendable, CaseIterable {
        case refuse
        case allow
    }

    /// What a request admitted during the outage holds against its user's allowance.
    private struct Hold: Sendable {
        var userID: String
        var tokens: Int
    }

    private struct State: Sendable {
        var inOutage = false
        /// Tokens held per user id.
        var held: [String: Int] = [:]
        /// Requests admitted during the outage and not settled yet, by request id.
        var holds: [String: Hold] = [:]
    }

    let mode: Mode
    /// Tokens per user that this worker admits during one outage.
    let allowance: Int
    let identities: IdentityCache
    private let state = Mutex(State())

    init(mode: Mode, allowance: Int, identities: IdentityCache) {
        self.mode = mode
        self.allowance = max(0, allowance)
        self.identities = identities
    }

    /// Whether `error` means the database is unavailable (down, restarting, unreachable,
    /// overloaded, failing over), as opposed to refusing a statement. Only these journal a
    /// settlement and start the outage policy; a statement it refuses would be refused again.
    static func isOutage(_ error: StoreError) -> Bool {
        switch error.code {
        case .connectionFailed, .connectionLost, .timeout: return true
        case .queryFailed:
            // Connection exceptions, operator intervention (shutdown, recovery), insufficient
            // resources, serialization failure and deadlock, and a read-only standby after failover.
            guard let state = error.sqlState else { return false }
            return ["08", "57", "53", "40"].contains(String(state.prefix(2))) || state == "25006"
        default: return false
        }
    }

    /// The database answered an admission: any outage is over; remember or forget the caller.
    func learn(_ answer: AdmissionAnswer, caller: Caller) {
        endOutage()
        guard mode == .allow else { return }
        guard answer.outcome == .admitted, let userID = answer.userID else {
            identities.forget(Self.cacheKey(caller))
            return
        }
        identities.remember(
            IdentityCache.Identity(userID: userID, keyID: answer.keyID, isBYOK: answer.byokKey != nil),
            for: Self.cacheKey(caller))
    }

    /// Admission without the database, after `failure` (an outage): a ticket for a known caller
    /// within the allowance, else 503. `tokens` is the request's reservation size (0 for listings).
    func admit(_ caller: Caller, requestID: String, tokens: Int, platformKey: String, failure: StoreError) -> Admission
    {
        beginOutage(failure)
        guard mode == .allow, let identity = identities.identity(of: Self.cacheKey(caller)), !identity.isBYOK else {
            Log.debug("admission.outage_refused", [(.requestID, requestID), (.code, failure.code.rawValue)])
            return .rejected(.meteringUnavailable())
        }

        // Limitation: the allowance is per worker process and per outage, and the quota itself is
        // not checked meanwhile: with N workers a user may go up to N allowances past the quota,
        // and a database that flaps starts a new allowance with each outage.
        let hold = max(0, tokens)
        let admitted = state.withLock { state in
            let held = state.held[identity.userID, default: 0]
            guard held + hold <= allowance else { return false }
            state.held[identity.userID] = held + hold
            if hold > 0 { state.holds[requestID] = Hold(userID: identity.userID, tokens: hold) }
            return true
        }
        guard admitted else {
            Log.info(
                "admission.outage_allowance_spent", [(.requestID, requestID), (.detail, "user \(identity.userID)")])
            return .rejected(.meteringUnavailable())
        }
        Log.debug("admission.outage_admitted", [(.requestID, requestID), (.detail, "user \(identity.userID)")])
        return .admitted(
            AdmissionTicket(
                upstreamKey: platformKey, keySource: .platform, userID: identity.userID, keyID: identity.keyID))
    }

    /// A request is over: what it held against the allowance becomes the tokens it used.
    /// Does nothing for requests not admitted by this policy, or admitted before the last outage ended.
    func settled(requestID: String, totalTokens: Int) {
        state.withLock { state in
            guard let hold = state.holds.removeValue(forKey: requestID) else { return }
            let held = state.held[hold.userID, default: 0] - hold.tokens + max(0, totalTokens)
            state.held[hold.userID] = max(0, held)
        }
    }

    /// Tokens held for `userID` in the current outage.
    func held(by userID: String) -> Int {
        state.withLock { $0.held[userID, default: 0] }
    }

    private func beginOutage(_ failure: StoreError) {
        let began = state.withLock { state in
            defer { state.inOutage = true }
            return !state.inOutage
        }
        if began {
            Log.warning(
                "metering.outage_started", [(.code, failure.code.rawValue), (.detail, "policy \(mode.rawValue)")])
        }
    }

    private func endOutage() {
        let ended = state.withLock { state in
            guard state.inOutage else { return false }
            state = State()
            return true
        }
        if ended { Log.info("metering.outage_ended", [(.detail, "policy \(mode.rawValue)")]) }
    }

    /// The identity cache's key: the key hash (bearer mode) or the user name (header mode).
    static func cacheKey(_ caller: Caller) -> String {
        switch caller {
        case .keyHash(let hash): "key " + SHA256.hex(hash)
        case .userName(let name): "user " + name
        }
    }
}
