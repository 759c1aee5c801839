#if canImport(Glibc)
    import Glibc
#endif

/// Runs a body on `count` real threads at once (a barrier lines them up), and waits for all.
/// Swift tasks would be capped at the core count; admission blocks its thread, as in a worker.
enum ThreadGroup {
    static func run(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
        let barrier = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)
        pthread_barrier_init(barrier, nil, UInt32(count))
        defer {
            pthread_barrier_destroy(barrier)
            barrier.deallocate()
        }
        var threads: [pthread_t] = []
        for index in 0..<count {
            let context = Unmanaged.passRetained(Work(index: index, barrier: barrier, body: body)).toOpaque()
            var thread = pthread_t()
            guard
                pthread_create(
                    &thread, nil,
                    { raw in
                        guard let raw else { return nil }
                        let work = Unmanaged<Work>.fromOpaque(raw).takeRetainedValue()
                        pthread_barrier_wait(work.barrier)
                        work.body(work.index)
                        return nil
                    }, context) == 0
            else { fatalError("pthread_create failed") }
            threads.append(thread)
        }
        for thread in threads { pthread_join(thread, nil) }
    }

    /// `@unchecked Sendable`: handed to exactly one thread, which only reads it.
    private final class Work: @unchecked Sendable {
        let index: Int
        let barrier: UnsafeMutablePointer<pthread_barrier_t>
        let body: @Sendable (Int) -> Void

        init(index: Int, barrier: UnsafeMutablePointer<pthread_barrier_t>, body: @escaping @Sendable (Int) -> Void) {
            self.index = index
            self.barrier = barrier
            self.body = body
        }
    }
}

/// Results collected from several threads. `@unchecked Sendable`: `values` is only touched with
/// `mutex` held.
final class Collected<Value>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var values: [Value] = []

    init() { pthread_mutex_init(mutex, nil) }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func append(_ value: Value) {
        pthread_mutex_lock(mutex)
        values.append(value)
        pthread_mutex_unlock(mutex)
    }

    var all: [Value] {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return values
    }
}
