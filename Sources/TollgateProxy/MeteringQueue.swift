#if canImport(Glibc)
    import Glibc
#endif

/// The work `MeteringThreads` share, and when it goes to the store: admissions, model-list
/// admissions, records of leased admissions and settlements waiting for a metering thread, and
/// the settlements not yet recorded.
///
/// A batch costs the database a fixed price plus a little per request, so the queue keeps few
/// batches under way and lets work gather behind them: a batch of admissions starts while no
/// other is under way (a client waits on each admission, so never later than that), and
/// settlements, which nobody waits on, also wait up to `settlementLinger` for company. Records of
/// leased admissions wait up to `recordLinger`: a request that settles meanwhile needs none, and
/// its record is handed back to the caller of `push` instead. A settlement whose record is in a
/// batch under way waits for that batch, so that the database sees the reservation first. Under light
/// load every admission goes alone at once; under heavy load each round trip carries many. A
/// batch that takes longer than `overdueAfter` (a slow database) lets another start beside it.
///
/// `@unchecked Sendable`: every mutable field is read and written only with `mutex` held.
final class MeteringQueue: @unchecked Sendable {
    enum Item {
        case admission(PendingAdmission)
        case listing(PendingListing)
        case settlement(Settlement)
        case record(LeasedAdmission)
    }

    /// What one thread takes at a time.
    enum Work {
        case admissions([PendingAdmission])
        case listing(PendingListing)
        case settlements([Settlement])
        case records([LeasedAdmission])
    }

    /// When batches start.
    struct Pacing: Sendable {
        var largestBatch = 256
        /// A batch under way this long no longer holds back the next one of its kind.
        var overdueAfter = Duration.milliseconds(5)
        /// How long a settlement may wait for others before its batch starts anyway. At light load
        /// a settlement batch costs the database nearly as much as the admissions it competes with
        /// for the CPU: at one connection on two cores, 50 ms instead of 5 ms took the p50 latency
        /// of a metered request from 2.1 to 1.7 ms. A worker that stops sends what waits at once; one that
        /// crashes leaves reservations, which become estimated `worker_lost` ledger rows.
        var settlementLinger = Duration.milliseconds(50)
        /// How many waiting settlements are company enough: their batch starts without waiting out
        /// the linger. A batch holds the database busy for its length; on two cores a request whose
        /// thread lands beside a batch of a hundred settlements waits the few milliseconds it takes.
        /// At one connection with quota leases (about 2,500 requests/s) 16 instead of 256 took the
        /// p99 added over nginx alone from 4.4-4.7 ms to 2.0-2.6 ms, with 64 connections unchanged.
        var settlementCompany = 16
        /// How long the record of a leased admission waits before its batch starts: longer saves
        /// the database a reservation written and deleted for every request that ends sooner;
        /// shorter narrows the window in which a worker that dies leaves no ledger row for a
        /// request it admitted.
        // Limitation: a worker killed within this linger of admitting a request from a lease
        // leaves no ledger row for it (its upstream call dies with it).
        var recordLinger = Duration.milliseconds(20)
    }

    let pacing: Pacing
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// Signalled when work arrives or a batch ends; idle metering threads wait on it.
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Broadcast when the last waiting settlement is recorded.
    private let drained = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var admissions: [PendingAdmission] = []
    private var listings: [PendingListing] = []
    private var settlements: [Settlement] = []
    private var records: [LeasedAdmission] = []
    /// Settlements of requests whose record is in a batch under way.
    private var parked: [Settlement] = []
    /// The request ids of the records in batches under way.
    private var recording: Set<String> = []
    /// When the oldest waiting settlement arrived.
    private var settlementsSince: ContinuousClock.Instant?
    /// When the oldest waiting record arrived.
    private var recordsSince: ContinuousClock.Instant?
    /// Start times of the batches under way, by kind.
    private var admissionBatches: [ContinuousClock.Instant] = []
    private var settlementBatches: [ContinuousClock.Instant] = []
    private var recordBatches: [ContinuousClock.Instant] = []
    /// Settlements handed over and not yet recorded (queued or in a batch under way).
    private var unsettled = 0
    /// Set while someone waits for every settlement: nothing lingers then.
    private var draining = 0
    private var idleThreads = 0
    /// The earliest moment an idle thread waits for, if one waits for a moment: lingering work
    /// that comes due no sooner needs no wake-up.
    private var timedWait: ContinuousClock.Instant?

    init(pacing: Pacing = Pacing()) {
        self.pacing = pacing
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(changed, &attributes)
        pthread_cond_init(drained, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_cond_destroy(drained)
        pthread_mutex_destroy(mutex)
        changed.deallocate()
        drained.deallocate()
        mutex.deallocate()
    }

    /// Queues `item`. For a settlement whose request's record is still waiting, that record leaves
    /// the queue unsent and is returned: the caller tells the store it is forgotten.
    @discardableResult
    func push(_ item: Item) -> LeasedAdmission? {
        pthread_mutex_lock(mutex)
        let now = ContinuousClock.now
        // Waking a thread costs as much as a small batch's worth of work on a virtual machine:
        // wake one only when this item lets a batch start, or starts a settlement's linger.
        var wake: Bool
        var unsent: LeasedAdmission?
        switch item {
        case .admission(let pending):
            admissions.append(pending)
            wake = mayStart(admissionBatches, at: now)
        case .listing(let pending):
            listings.append(pending)
            wake = true
        case .settlement(let settlement):
            unsettled += 1
            if !records.isEmpty, let index = records.firstIndex(where: { $0.requestID == settlement.requestID }) {
                unsent = records.remove(at: index)
                if records.isEmpty { recordsSince = nil }
            }
            if recording.contains(settlement.requestID) {
                parked.append(settlement)
                wake = false
            } else {
                wake = settlements.isEmpty && !awake(by: now + pacing.settlementLinger)
                if settlements.isEmpty { settlementsSince = now }
                settlements.append(settlement)
                wake = wake || (settlementsDue(at: now) && mayStart(settlementBatches, at: now))
            }
        case .record(let record):
            wake = records.isEmpty && !awake(by: now + pacing.recordLinger)
            if records.isEmpty { recordsSince = now }
            records.append(record)
        }
        wake = wake && idleThreads > 0
        pthread_mutex_unlock(mutex)
        if wake { pthread_cond_signal(changed) }
        return unsent
    }

    /// Blocks until a batch may start, then takes it. The caller reports its end with `finished`.
    func next() -> (work: Work, started: ContinuousClock.Instant) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            let now = ContinuousClock.now
            if let work = take(at: now) {
                // Work of another kind may be startable too, or lingering with no idle thread
                // waiting for it: pass the wake-up on.
                if idleThreads > 0 && (startable(at: now) || (timedWait == nil && nextChange(after: now) != nil)) {
                    pthread_cond_signal(changed)
                }
                return (work, now)
            }
            idleThreads += 1
            let moment = nextChange(after: now)
            if let moment, !awake(by: moment) {
                // This thread keeps the time for the others, which wait for a wake-up.
                timedWait = moment
                wait(until: moment)
                if timedWait == moment { timedWait = nil }
            } else {
                wait(until: nil)
            }
            idleThreads -= 1
        }
    }

    /// Takes a batch that may start now, without waiting for one; nil when none may.
    func poll() -> (work: Work, started: ContinuousClock.Instant)? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let now = ContinuousClock.now
        return take(at: now).map { ($0, now) }
    }

    /// A batch taken by `next` at `started` has been answered. The caller calls `next` again soon.
    func finished(_ work: Work, started: ContinuousClock.Instant) {
        pthread_mutex_lock(mutex)
        var empty = false
        switch work {
        case .admissions:
            admissionBatches.firstIndex(of: started).map { _ = admissionBatches.remove(at: $0) }
        case .listing:
            break
        case .settlements(let done):
            settlementBatches.firstIndex(of: started).map { _ = settlementBatches.remove(at: $0) }
            unsettled -= done.count
            empty = unsettled == 0
        case .records(let done):
            recordBatches.firstIndex(of: started).map { _ = recordBatches.remove(at: $0) }
            for record in done { recording.remove(record.requestID) }
            unpark()
        }
        pthread_mutex_unlock(mutex)
        // No wake-up: the thread that ends a batch asks `next` for the next one right after, and
        // passes a wake-up on when more than one batch can start.
        if empty { pthread_cond_broadcast(drained) }
    }

    /// Waits until no settlement is left unrecorded, or `timeout` ran out; returns how many are.
    func waitUntilSettled(timeout: Duration) -> Int {
        let deadline = ContinuousClock.now + timeout
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        draining += 1
        pthread_cond_broadcast(changed)
        while unsettled > 0 && ContinuousClock.now < deadline {
            var until = Self.monotonicTime(after: deadline - .now)
            _ = pthread_cond_timedwait(drained, mutex, &until)
        }
        draining -= 1
        return unsettled
    }

    private func take(at now: ContinuousClock.Instant) -> Work? {
        if !listings.isEmpty { return .listing(listings.removeFirst()) }
        if !admissions.isEmpty && mayStart(admissionBatches, at: now) {
            let taken = Array(admissions.prefix(pacing.largestBatch))
            admissions.removeFirst(taken.count)
            admissionBatches.append(now)
            return .admissions(taken)
        }
        if recordsDue(at: now) && mayStart(recordBatches, at: now) {
            let taken = Array(records.prefix(pacing.largestBatch))
            records.removeFirst(taken.count)
            recordsSince = records.isEmpty ? nil : now
            for record in taken { recording.insert(record.requestID) }
            recordBatches.append(now)
            return .records(taken)
        }
        guard settlementsDue(at: now), mayStart(settlementBatches, at: now) else { return nil }
        let taken = Array(settlements.prefix(pacing.largestBatch))
        settlements.removeFirst(taken.count)
        settlementsSince = settlements.isEmpty ? nil : now
        settlementBatches.append(now)
        return .settlements(taken)
    }

    /// Whether a batch could start now (what `take` would take).
    private func startable(at now: ContinuousClock.Instant) -> Bool {
        !listings.isEmpty || (!admissions.isEmpty && mayStart(admissionBatches, at: now))
            || (recordsDue(at: now) && mayStart(recordBatches, at: now))
            || (settlementsDue(at: now) && mayStart(settlementBatches, at: now))
    }

    private func recordsDue(at now: ContinuousClock.Instant) -> Bool {
        guard let since = recordsSince else { return false }
        return draining > 0 || records.count >= pacing.largestBatch || now - since >= pacing.recordLinger
    }

    /// Moves the parked settlements whose records are written to the settlements waiting.
    private func unpark() {
        guard !parked.isEmpty else { return }
        let ready = parked.filter { !recording.contains($0.requestID) }
        guard !ready.isEmpty else { return }
        parked.removeAll { !recording.contains($0.requestID) }
        if settlements.isEmpty { settlementsSince = .now }
        settlements += ready
    }

    /// Whether an idle thread will wake by `moment` without being signalled.
    private func awake(by moment: ContinuousClock.Instant) -> Bool {
        timedWait.map { $0 <= moment } ?? false
    }

    private func settlementsDue(at now: ContinuousClock.Instant) -> Bool {
        guard let since = settlementsSince else { return false }
        return draining > 0 || settlements.count >= pacing.settlementCompany || now - since >= pacing.settlementLinger
    }

    /// True while no batch of that kind is under way, or every one is overdue.
    private func mayStart(_ underWay: [ContinuousClock.Instant], at now: ContinuousClock.Instant) -> Bool {
        underWay.allSatisfy { now - $0 >= pacing.overdueAfter }
    }

    /// When waiting work may become startable without anything else happening: a lingering
    /// settlement comes due, or a batch under way becomes overdue. Nil: only a push or an end.
    private func nextChange(after now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        var moments: [ContinuousClock.Instant] = []
        if let since = settlementsSince { moments.append(since + pacing.settlementLinger) }
        if let since = recordsSince { moments.append(since + pacing.recordLinger) }
        if !records.isEmpty, let newest = recordBatches.max() { moments.append(newest + pacing.overdueAfter) }
        if !admissions.isEmpty, let newest = admissionBatches.max() { moments.append(newest + pacing.overdueAfter) }
        if !settlements.isEmpty, let newest = settlementBatches.max() {
            moments.append(newest + pacing.overdueAfter)
        }
        return moments.min()
    }

    private func wait(until moment: ContinuousClock.Instant?) {
        guard let moment else {
            pthread_cond_wait(changed, mutex)
            return
        }
        var until = Self.monotonicTime(after: moment - .now)
        _ = pthread_cond_timedwait(changed, mutex, &until)
    }

    /// CLOCK_MONOTONIC now plus `delay` (at least zero), as the conditions' deadlines want it.
    private static func monotonicTime(after delay: Duration) -> timespec {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        let (seconds, attoseconds) = max(delay, .zero).components
        let nanoseconds = Int(time.tv_nsec) + Int(attoseconds / 1_000_000_000)
        time.tv_sec += Int(seconds) + nanoseconds / 1_000_000_000
        time.tv_nsec = nanoseconds % 1_000_000_000
        return time
    }
}
