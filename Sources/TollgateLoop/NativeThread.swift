import CEventLoop

#if canImport(Glibc)
    import Glibc
#endif

/// Starts detached POSIX threads with a chosen stack size: the event loops and the metering
/// threads of a worker process.
public enum NativeThread {
    public struct StartError: Error {
        public let code: Int32
    }

    /// Starts `body` on a new detached thread whose stack is `stackSize` bytes, named `name`
    /// (15 bytes at most; what `top -H` and profilers show).
    public static func start(
        name: String, stackSize: Int, _ body: @escaping @Sendable () -> Void
    ) throws(StartError) {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, stackSize)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))

        let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var thread = pthread_t()
        let code = pthread_create(&thread, &attributes, runThreadBody, context)
        guard code == 0 else {
            Unmanaged<ThreadBody>.fromOpaque(context).release()
            throw StartError(code: code)
        }
        _ = tg_thread_set_name(thread, String(name.utf8.prefix(15)) ?? "tollgate")
    }
}

/// The closure a new thread runs, passed through pthread_create's context pointer.
private final class ThreadBody {
    let run: @Sendable () -> Void

    init(_ run: @escaping @Sendable () -> Void) {
        self.run = run
    }
}

private func runThreadBody(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let context else { return nil }
    Unmanaged<ThreadBody>.fromOpaque(context).takeRetainedValue().run()
    return nil
}
