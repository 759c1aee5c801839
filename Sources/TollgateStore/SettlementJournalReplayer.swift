import Synchronization
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// The background thread of a worker process that replays the settlement journal about every
/// `interval`: this worker's journaled settlements, and the files of dead workers it adopts.
///
/// A turn with nothing to replay costs one directory listing. A turn stopped by the database
/// being still down is logged once per outage, not every turn. `stop` ends the thread within
/// about 100 ms and waits for it (a turn in progress finishes first).
public final class SettlementJournalReplayer: Sendable {
    public let journal: SettlementJournal
    public let interval: Duration
    private let settle: @Sendable ([Settlement]) -> [Result<Bool, StoreError>]
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<pthread_t?>(nil)

    /// `settle` records a batch of settlements in the database and answers each (see
    /// `SettlementJournal.Settle`).
    public init(
        journal: SettlementJournal, interval: Duration = .seconds(1),
        settle: @escaping @Sendable ([Settlement]) -> [Result<Bool, StoreError>]
    ) {
        self.journal = journal
        self.interval = interval
        self.settle = settle
    }

    /// Starts the thread; false when the system refuses one (then nothing replays until restart).
    public func start() -> Bool {
        let context = Unmanaged.passRetained(self).toOpaque()
        var created = pthread_t()
        guard pthread_create(&created, nil, runReplayer, context) == 0 else {
            Unmanaged<SettlementJournalReplayer>.fromOpaque(context).release()
            Log.error("journal.replayer_not_started", [(.worker, journal.workerID)])
            return false
        }
        thread.withLock { $0 = created }
        return true
    }

    /// Ends the thread and waits for it.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        guard
            let running = thread.withLock({ state -> pthread_t? in
                defer { state = nil }
                return state
            })
        else { return }
        pthread_join(running, nil)
    }

    /// One turn: replays what there is and logs what happened. Returns the report.
    @discardableResult
    public func replayOnce() -> SettlementJournal.Report {
        journal.replay(using: settle)
    }

    fileprivate func run() {
        var waiting = false
        while !stopping.load(ordering: .acquiring) {
            let report = replayOnce()
            if let failure = report.failure {
                if !waiting {
                    Log.warning(
                        "journal.replay_waiting",
                        [(.worker, journal.workerID), (.code, failure.code.rawValue), (.detail, failure.description)])
                }
                waiting = true
            } else {
                waiting = false
            }
            pause()
        }
    }

    /// Sleeps `interval` in slices of at most 100 ms, so that `stop` is quick.
    private func pause() {
        var left = interval
        while left > .zero && !stopping.load(ordering: .acquiring) {
            let slice = min(left, .milliseconds(100))
            let (seconds, attoseconds) = slice.components
            var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
            nanosleep(&request, nil)
            left -= slice
        }
    }
}

private func runReplayer(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let context else { return nil }
    Unmanaged<SettlementJournalReplayer>.fromOpaque(context).takeRetainedValue().run()
    return nil
}
