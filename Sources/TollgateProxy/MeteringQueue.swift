#if canImport(Glibc)
    import Glibc
#endif

/// The work `MeteringThreads` share: admissions, model-list admissions and settlements waiting
/// for a metering thread, and the count of settlements not yet recorded.
///
/// `@unchecked Sendable`: every mutable field is read and written only with `mutex` held.
final class MeteringQueue: @unchecked Sendable {
    enum Item {
        case admission(PendingAdmission)
        case listing(PendingListing)
        case settlement(Settlement)
    }

    /// What one thread takes at a time.
    enum Work {
        case admissions([PendingAdmission])
        case listing(PendingListing)
        case settlements([Settlement])
    }

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// Signalled when work arrives; idle metering threads wait on it.
    private let arrived = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Broadcast when the last waiting settlement is recorded.
    private let drained = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var admissions: [PendingAdmission] = []
    private var listings: [PendingListing] = []
    private var settlements: [Settlement] = []
    /// Settlements handed over and not yet recorded (queued or in a batch under way).
    private var unsettled = 0
    private var idleThreads = 0

    init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(arrived, &attributes)
        pthread_cond_init(drained, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(arrived)
        pthread_cond_destroy(drained)
        pthread_mutex_destroy(mutex)
        arrived.deallocate()
        drained.deallocate()
        mutex.deallocate()
    }

    func push(_ item: Item) {
        pthread_mutex_lock(mutex)
        switch item {
        case .admission(let pending): admissions.append(pending)
        case .listing(let pending): listings.append(pending)
        case .settlement(let settlement):
            settlements.append(settlement)
            unsettled += 1
        }
        let wake = idleThreads > 0
        pthread_mutex_unlock(mutex)
        if wake { pthread_cond_signal(arrived) }
    }

    /// Blocks until there is work, then takes up to `limit` items of one kind: admissions first
    /// unless `preferSettlements`.
    func next(preferSettlements: Bool, limit: Int) -> Work {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if preferSettlements, let work = takeSettlements(limit) { return work }
            if !admissions.isEmpty {
                let taken = Array(admissions.prefix(limit))
                admissions.removeFirst(taken.count)
                return .admissions(taken)
            }
            if !listings.isEmpty { return .listing(listings.removeFirst()) }
            if let work = takeSettlements(limit) { return work }
            idleThreads += 1
            pthread_cond_wait(arrived, mutex)
            idleThreads -= 1
        }
    }

    /// Counts `count` settlements of a finished batch as recorded.
    func settled(_ count: Int) {
        pthread_mutex_lock(mutex)
        unsettled -= count
        let empty = unsettled == 0
        pthread_mutex_unlock(mutex)
        if empty { pthread_cond_broadcast(drained) }
    }

    /// Waits until no settlement is left unrecorded, or `timeout` ran out; returns how many are.
    func waitUntilSettled(timeout: Duration) -> Int {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = Int(deadline.tv_nsec) + Int(attoseconds / 1_000_000_000)
        deadline.tv_sec += Int(seconds) + nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while unsettled > 0 {
            if pthread_cond_timedwait(drained, mutex, &deadline) == ETIMEDOUT { break }
        }
        return unsettled
    }

    private func takeSettlements(_ limit: Int) -> Work? {
        guard !settlements.isEmpty else { return nil }
        let taken = Array(settlements.prefix(limit))
        settlements.removeFirst(taken.count)
        return .settlements(taken)
    }
}
