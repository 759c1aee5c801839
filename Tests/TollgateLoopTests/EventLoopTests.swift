import Dispatch
import Synchronization
import Testing
import TollgateLoop

#if canImport(Glibc)
    import Glibc
#endif

/// Writes down the events it is told of, on the loop's thread, and stops the loop.
final class RecordingHandler: LoopHandler {
    let loop: EventLoop
    private(set) var events: [LoopEvents] = []
    let onEvent: (LoopEvents) -> Void

    init(loop: EventLoop, onEvent: @escaping (LoopEvents) -> Void) {
        self.loop = loop
        self.onEvent = onEvent
    }

    func loopEvents(_ events: LoopEvents, on descriptor: Int32) {
        self.events.append(events)
        onEvent(events)
    }
}

/// Runs a loop on a thread of its own for one test, and waits for it to end.
struct RunningLoop {
    let loop: EventLoop
    let ended = DispatchSemaphore(value: 0)

    init() throws {
        loop = try EventLoop()
        try NativeThread.start(name: "test-loop", stackSize: 1 << 20) { [loop, ended] in
            _ = loop.run()
            ended.signal()
        }
    }

    func stopAndWait() {
        loop.stop()
        ended.wait()
    }
}

@Suite("Event loop", .timeLimit(.minutes(1)))
struct EventLoopTests {
    @Test("work handed in from other threads runs on the loop's thread, in order")
    func executesInOrder() throws {
        let running = try RunningLoop()
        let seen = Mutex<[Int]>([])
        let loopThread = Mutex<[pthread_t]>([])
        let done = DispatchSemaphore(value: 0)
        for index in 0..<100 {
            running.loop.execute {
                seen.withLock { $0.append(index) }
                loopThread.withLock { $0.append(pthread_self()) }
                if index == 99 { done.signal() }
            }
        }
        done.wait()
        running.stopAndWait()

        #expect(seen.withLock { $0 } == Array(0..<100))
        let threads = loopThread.withLock { $0 }
        #expect(threads.allSatisfy { pthread_equal($0, threads[0]) != 0 })
        #expect(pthread_equal(threads[0], pthread_self()) == 0)
    }

    @Test("a timer runs once after its delay; a cancelled one never; a rescheduled one at its new time")
    func timers() throws {
        let running = try RunningLoop()
        let fired = Mutex<[String]>([])
        let done = DispatchSemaphore(value: 0)
        running.loop.execute { [loop = running.loop] in
            let started = ContinuousClock.now
            let cancelled = LoopTimer { fired.withLock { $0.append("cancelled") } }
            let moved = LoopTimer { fired.withLock { $0.append("moved") } }
            let last = LoopTimer {
                fired.withLock { $0.append("last after \(ContinuousClock.now - started >= .milliseconds(30))") }
                done.signal()
            }
            loop.schedule(cancelled, after: .milliseconds(5))
            loop.schedule(moved, after: .milliseconds(50))
            loop.schedule(moved, after: .milliseconds(10))
            loop.schedule(last, after: .milliseconds(30))
            loop.cancel(cancelled)
        }
        done.wait()
        running.stopAndWait()

        #expect(fired.withLock { $0 } == ["moved", "last after true"])
    }

    @Test("a watched descriptor reports readable data, then the peer's hang-up; unwatched, nothing more")
    func watchesDescriptors() throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        let running = try RunningLoop()
        let reported = DispatchSemaphore(value: 0)
        let loop = running.loop
        let descriptor = pair[0]
        let recorder = RecordingHandler(loop: loop) { events in
            var scratch = [UInt8](repeating: 0, count: 16)
            _ = read(descriptor, &scratch, scratch.count)
            if !events.isDisjoint(with: [.hangUp, .error]) { loop.unwatch(descriptor) }
            reported.signal()
        }
        // The recorder is only touched on the loop's thread until the loop has stopped.
        let bound = LoopBound(recorder)
        loop.execute { _ = loop.watch(descriptor, for: [.readable, .hangUp], bound.value) }
        var byte: UInt8 = 1
        #expect(write(pair[1], &byte, 1) == 1)
        reported.wait()
        close(pair[1])
        reported.wait()
        running.stopAndWait()
        close(pair[0])

        let events = recorder.events
        #expect(events.count == 2)
        #expect(events.first?.contains(.readable) == true)
        #expect(events.last?.contains(.hangUp) == true)
    }
}
