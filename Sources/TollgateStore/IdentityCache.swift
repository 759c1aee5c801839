import Synchronization

/// Callers who recently authenticated with success, remembered in the worker's memory so that
/// the `allow` outage policy can tell who is calling while the database is down.
///
/// Keyed by the key's SHA-256 (bearer mode) or the user name (header mode); never by a key.
/// An entry lives `lifetime` after the last successful authentication. A failed one (unknown,
/// revoked, disabled, over quota) removes it at once, but the database cannot say that during
/// an outage: a key revoked meanwhile stays usable at most `lifetime` after it last worked.
/// Shared by the metering threads; every call takes a mutex for a dictionary operation.
final class IdentityCache: Sendable {
    /// Who a caller is, as the database last said.
    struct Identity: Sendable, Equatable {
        var userID: String
        var keyID: String?
        /// The caller's upstream key is their own (BYOK). That key is never kept here.
        var isBYOK: Bool
    }

    private struct Entry: Sendable {
        var identity: Identity
        var authenticatedAt: ContinuousClock.Instant
    }

    let lifetime: Duration
    /// At most this many callers are remembered; past it the oldest tenth is forgotten.
    let capacity: Int
    private let now: @Sendable () -> ContinuousClock.Instant
    private let entries = Mutex<[String: Entry]>([:])

    init(
        lifetime: Duration, capacity: Int = 100_000,
        now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }
    ) {
        self.lifetime = lifetime
        self.capacity = max(1, capacity)
        self.now = now
    }

    func remember(_ identity: Identity, for caller: String) {
        let instant = now()
        entries.withLock { entries in
            entries[caller] = Entry(identity: identity, authenticatedAt: instant)
            if entries.count > capacity { evict(&entries, at: instant) }
        }
    }

    func forget(_ caller: String) {
        _ = entries.withLock { $0.removeValue(forKey: caller) }
    }

    /// The identity of `caller`, nil when unknown or older than `lifetime`.
    func identity(of caller: String) -> Identity? {
        // Limitation: during an outage a key revoked (or a user disabled) since its last successful
        // authentication here is still honoured until `lifetime` has passed; nothing can tell us.
        let instant = now()
        return entries.withLock { entries in
            guard let entry = entries[caller] else { return nil }
            guard instant - entry.authenticatedAt <= lifetime else {
                entries[caller] = nil
                return nil
            }
            return entry.identity
        }
    }

    var count: Int {
        entries.withLock { $0.count }
    }

    /// Drops expired entries, then, if still too many, the oldest tenth.
    private func evict(_ entries: inout [String: Entry], at instant: ContinuousClock.Instant) {
        entries = entries.filter { instant - $0.value.authenticatedAt <= lifetime }
        guard entries.count > capacity else { return }
        let oldest = entries.sorted { $0.value.authenticatedAt < $1.value.authenticatedAt }
            .prefix(max(1, capacity / 10) + entries.count - capacity)
        for (caller, _) in oldest { entries[caller] = nil }
    }
}
