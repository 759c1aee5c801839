import Dispatch
import Synchronization

/// Counts the streams a worker has handed to its stream loop until each is settled, and runs
/// their settlements: a settlement waits on the database (or the journal's disk sync), which
/// the loop's thread must never do, so each runs on a queue of its own threads.
public final class DetachedStreams: Sendable {
    private let open = Mutex(0)
    private let settling = DispatchGroup()
    private let queue = DispatchQueue(label: "tollgate.settlement", attributes: .concurrent)

    /// Streams handed over and not yet settled.
    public var count: Int { open.withLock { $0 } }

    func begin() {
        open.withLock { $0 += 1 }
        settling.enter()
    }

    /// Settles a stream that `begin` counted, off the calling thread.
    func settle(_ settlement: Settlement, with metering: any Metering) {
        queue.async { [self] in
            metering.settle(settlement)
            open.withLock { $0 -= 1 }
            settling.leave()
        }
    }

    /// Waits until every stream handed over has been settled or `timeout` ran out; returns how
    /// many were still open.
    public func waitUntilSettled(timeout: Duration) -> Int {
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
        _ = settling.wait(timeout: .now() + .nanoseconds(nanoseconds))
        return count
    }
}
