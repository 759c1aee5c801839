#if canImport(Glibc)
    import Glibc
#endif

/// Hands accepted FastCGI connections from the acceptor thread to idle request threads, and
/// counts what is in flight so a stopping worker knows when it has drained.
///
/// `@unchecked Sendable`: every mutable field is read and written only with `mutex` held.
final class ConnectionQueue: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// Signalled when a connection is queued; request threads wait on it.
    private let work = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Signalled when a thread turns idle; the acceptor waits on it.
    private let room = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Signalled when a connection is finished; a stopping worker waits on it.
    private let finished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var pending: [Int32] = []
    private var pendingHead = 0
    private var idleThreads = 0
    private var busyThreads = 0
    private var closed = false

    init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        for condition in [work, room, finished] { pthread_cond_init(condition, &attributes) }
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        for condition in [work, room, finished] {
            pthread_cond_destroy(condition)
            condition.deallocate()
        }
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    private var queued: Int { pending.count - pendingHead }

    /// Queues an accepted connection for the next idle thread.
    func push(_ descriptor: Int32) {
        locked {
            pending.append(descriptor)
            pthread_cond_signal(work)
        }
    }

    /// Blocks until a connection is queued and returns it, counting the caller busy; nil once
    /// the queue is closed and empty, when the thread should end.
    func take() -> Int32? {
        locked {
            idleThreads += 1
            pthread_cond_signal(room)
            while queued == 0 && !closed {
                pthread_cond_wait(work, mutex)
            }
            idleThreads -= 1
            guard queued > 0 else { return nil }
            let descriptor = pending[pendingHead]
            pendingHead += 1
            if pendingHead == pending.count {
                pending.removeAll(keepingCapacity: true)
                pendingHead = 0
            }
            busyThreads += 1
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

    /// Blocks while every thread is busy or already promised a queued connection, so the
    /// acceptor leaves new connections in the kernel's queue for a worker that has room.
    /// Returns false once the queue is closed.
    func waitForIdleThread() -> Bool {
        locked {
            while !closed && idleThreads <= queued {
                pthread_cond_wait(room, mutex)
            }
            return !closed
        }
    }

    /// Stops handing out work once the queued connections are served; wakes every waiter.
    func close() {
        locked {
            closed = true
            for condition in [work, room, finished] { pthread_cond_broadcast(condition) }
        }
    }

    /// Connections queued or being served right now.
    var inFlight: Int {
        locked { busyThreads + queued }
    }

    /// Waits until no connection is queued or being served, or until `deadline` (a
    /// CLOCK_MONOTONIC instant). Returns how many were still in flight.
    func waitUntilDrained(deadline: timespec) -> Int {
        locked {
            var limit = deadline
            while busyThreads + queued > 0 {
                if pthread_cond_timedwait(finished, mutex, &limit) == ETIMEDOUT { break }
            }
            return busyThreads + queued
        }
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }
}
