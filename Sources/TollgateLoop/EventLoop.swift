import CEventLoop
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One thread that waits on many descriptors at once (epoll) and runs what is ready: the
/// FastCGI connections from nginx, libcurl's upstream sockets, timers, and work other threads
/// hand in with `execute` (the metering threads' answers).
///
/// Everything but `execute` and `stop` must be called on the loop's own thread, from inside a
/// handler, a timer or executed work. Handlers must never block: a blocked handler stalls
/// every request the loop serves.
///
/// `@unchecked Sendable`: `execute` and `stop` only touch `queued`, `stopping` and the wake-up
/// eventfd, which are safe from any thread; every other property belongs to the loop's thread.
public final class EventLoop: LoopExecutor, @unchecked Sendable {
    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    private let epoll: Int32
    private let wakeup: Int32
    /// Registered handlers, indexed by descriptor.
    private var handlers: [(any LoopHandler)?] = []
    private let queued = Mutex<[@Sendable () -> Void]>([])
    /// Set while a wake-up is written and not yet consumed, so `execute` writes it only once.
    private let wakeupPending = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    /// Work for the end of the current iteration (see `runSoon`).
    private var soon: [() -> Void] = []
    private var timers: [LoopTimer] = []

    public init() throws(StartError) {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeup = tg_loop_eventfd()
        guard epoll >= 0, wakeup >= 0, tg_loop_watch(epoll, wakeup, tg_loop_readable, 1) == 0 else {
            throw StartError(description: "epoll or eventfd failed (errno \(errno))")
        }
    }

    deinit {
        close(epoll)
        close(wakeup)
    }

    /// Runs the loop on the calling thread until `stop` is called; returns 0 then, or the errno
    /// of an epoll failure that ended it.
    public func run() -> Int32 {
        var ready = [tg_loop_ready](repeating: tg_loop_ready(), count: 512)
        while !stopping.load(ordering: .acquiring) {
            let count = tg_loop_wait(epoll, &ready, Int32(ready.count), waitMilliseconds())
            if count < 0 && errno != EINTR { return errno }
            for index in 0..<max(0, Int(count)) {
                dispatch(ready[index])
            }
            runDueTimers()
            runQueued()
            runSoonWork()
        }
        return 0
    }

    /// Makes `run` return after its current iteration. Any thread.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        signal()
    }

    /// Runs `work` on the loop's thread, soon. Any thread.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        queued.withLock { $0.append(work) }
        signal()
    }

    /// Runs `work` once the loop has dispatched what is ready now: for what must not happen
    /// inside a library callback (libcurl forbids removing a transfer from its own callback).
    public func runSoon(_ work: @escaping () -> Void) {
        soon.append(work)
    }

    /// Starts telling `handler` when `descriptor` is ready for `events`. False when epoll
    /// refused it (errno says why).
    public func watch(_ descriptor: Int32, for events: LoopEvents, _ handler: any LoopHandler) -> Bool {
        guard descriptor >= 0, tg_loop_watch(epoll, descriptor, events.rawValue, 1) == 0 else { return false }
        if Int(descriptor) >= handlers.count {
            handlers.append(contentsOf: repeatElement(nil, count: Int(descriptor) + 1 - handlers.count + 64))
        }
        handlers[Int(descriptor)] = handler
        return true
    }

    /// Changes what a watched descriptor is waited on for.
    @discardableResult
    public func change(_ descriptor: Int32, to events: LoopEvents) -> Bool {
        tg_loop_watch(epoll, descriptor, events.rawValue, 0) == 0
    }

    /// Stops watching `descriptor`; call before closing it.
    public func unwatch(_ descriptor: Int32) {
        guard descriptor >= 0, Int(descriptor) < handlers.count, handlers[Int(descriptor)] != nil else { return }
        handlers[Int(descriptor)] = nil
        _ = tg_loop_unwatch(epoll, descriptor)
    }

    /// Runs `timer`'s action once `delay` has passed (replacing an earlier schedule).
    public func schedule(_ timer: LoopTimer, after delay: Duration) {
        if timer.deadline == nil { timers.append(timer) }
        timer.deadline = ContinuousClock.now + delay
    }

    public func cancel(_ timer: LoopTimer) {
        guard timer.deadline != nil else { return }
        timer.deadline = nil
        timers.removeAll { $0 === timer }
    }

    private func dispatch(_ ready: tg_loop_ready) {
        let descriptor = ready.fd
        if descriptor == wakeup {
            var count: UInt64 = 0
            _ = read(wakeup, &count, 8)
            wakeupPending.store(false, ordering: .releasing)
            return
        }
        guard Int(descriptor) < handlers.count, let handler = handlers[Int(descriptor)] else { return }
        handler.loopEvents(LoopEvents(rawValue: ready.events), on: descriptor)
    }

    private func signal() {
        guard !wakeupPending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
    }

    private func runQueued() {
        let work = queued.withLock { queued in
            defer { queued.removeAll(keepingCapacity: true) }
            return queued
        }
        for item in work { item() }
    }

    private func runSoonWork() {
        while !soon.isEmpty {
            let work = soon
            soon.removeAll(keepingCapacity: true)
            for item in work { item() }
        }
    }

    private func runDueTimers() {
        guard !timers.isEmpty else { return }
        let now = ContinuousClock.now
        let due = timers.filter { ($0.deadline ?? now) <= now }
        guard !due.isEmpty else { return }
        timers.removeAll { ($0.deadline ?? now) <= now }
        for timer in due {
            timer.deadline = nil
            timer.action()
        }
    }

    private func waitMilliseconds() -> Int32 {
        if !soon.isEmpty { return 0 }
        guard let next = timers.lazy.compactMap(\.deadline).min() else { return -1 }
        let wait = next - ContinuousClock.now
        guard wait > .zero else { return 0 }
        let (seconds, attoseconds) = wait.components
        // Rounded up, so a timer never fires early and spins the loop.
        return Int32(min(Int64(seconds) * 1000 + attoseconds / 1_000_000_000_000_000 + 1, 60_000))
    }
}
