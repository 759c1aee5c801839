#if canImport(Glibc)
    import Glibc
#endif

/// Hands accepted FastCGI connections from the acceptor thread to idle request threads, and
/// counts what is in flight so a stopping worker knows when it has drained.
///
/// The most recently idle thread gets the next connection (a stack, not a queue): under light
/// load a few threads do all the work, keeping their upstream connections open and their
/// memory warm, while the rest of the pool sleeps until a burst of streams needs it.
///
/// `@unchecked Sendable`: every mutable field is read and written only with `mutex` held.
final class ConnectionQueue: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// One condition per request thread, signalled when a connection is assigned to it.
    private let assignedSignal: UnsafeMutablePointer<pthread_cond_t>
    /// Signalled when a thread turns idle; the acceptor waits on it.
    private let room = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Signalled when a connection is finished; a stopping worker waits on it.
    private let finished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let threadCount: Int
    /// The connection assigned to each thread, -1 when none.
    private var assigned: [Int32]
    /// Idle threads, the most recently idle last.
    private var idle: [Int] = []
    private var busyThreads = 0
    private var closed = false

    init(threads: Int) {
        threadCount = threads
        assigned = Array(repeating: -1, count: threads)
        assignedSignal = .allocate(capacity: threads)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        for index in 0..<threads { pthread_cond_init(assignedSignal + index, &attributes) }
        pthread_cond_init(room, &attributes)
        pthread_cond_init(finished, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        for index in 0..<threadCount { pthread_cond_destroy(assignedSignal + index) }
        assignedSignal.deallocate()
        for condition in [room, finished] {
            pthread_cond_destroy(condition)
            condition.deallocate()
        }
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Gives an accepted connection to the most recently idle thread. The acceptor calls it
    /// only after `waitForIdleThread` returned true, so there is always one.
    func push(_ descriptor: Int32) {
        locked {
            guard let thread = idle.popLast() else {
                Glibc.close(descriptor)
                return
            }
            assigned[thread] = descriptor
            busyThreads += 1
            pthread_cond_signal(assignedSignal + thread)
        }
    }

    /// Called by request thread `thread` (0..<threads): blocks until a connection is assigned
    /// to it and returns it; nil once the queue is closed, when the thread should end.
    func take(thread: Int) -> Int32? {
        locked {
            idle.append(thread)
            pthread_cond_signal(room)
            while assigned[thread] < 0 && !closed {
                pthread_cond_wait(assignedSignal + thread, mutex)
            }
            let descriptor = assigned[thread]
            guard descriptor >= 0 else {
                idle.removeAll { $0 == thread }
                return nil
            }
            assigned[thread] = -1
            return descriptor
        }
    }

    /// Marks the caller's connection finished.
    func done() {
        locked {
            busyThreads -= 1
            pthread_cond_signal(finished)
        }
    }

    /// Blocks while every thread is busy, so the acceptor leaves new connections in the
    /// kernel's queue for a worker that has room. Returns false once the queue is closed.
    func waitForIdleThread() -> Bool {
        locked {
            while !closed && idle.isEmpty {
                pthread_cond_wait(room, mutex)
            }
            return !closed
        }
    }

    /// Stops handing out work: idle threads end, busy ones finish their connection first.
    func close() {
        locked {
            closed = true
            for index in 0..<threadCount { pthread_cond_signal(assignedSignal + index) }
            pthread_cond_broadcast(room)
            pthread_cond_broadcast(finished)
        }
    }

    /// Connections being served right now.
    var inFlight: Int {
        locked { busyThreads }
    }

    /// Waits until no connection is being served, or until `deadline` (a CLOCK_MONOTONIC
    /// instant). Returns how many were still in flight.
    func waitUntilDrained(deadline: timespec) -> Int {
        locked {
            var limit = deadline
            while busyThreads > 0 {
                if pthread_cond_timedwait(finished, mutex, &limit) == ETIMEDOUT { break }
            }
            return busyThreads
        }
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }
}
