#if canImport(Glibc)
    import Glibc
#endif

/// Signals a process handles synchronously: blocked in every thread and taken one at a time
/// with `sigtimedwait`, so no handler runs at an arbitrary point of the code.
struct SignalSet {
    private(set) var set = sigset_t()

    init(_ signals: [Int32]) {
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
    }

    /// Blocks these signals in the calling thread and in every thread it starts afterwards.
    func block() {
        var set = self.set
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits up to `milliseconds` for one of the signals; nil on timeout.
    func wait(milliseconds: Int) -> Int32? {
        var set = self.set
        var timeout = timespec(tv_sec: milliseconds / 1000, tv_nsec: (milliseconds % 1000) * 1_000_000)
        let signal = sigtimedwait(&set, nil, &timeout)
        return signal > 0 ? signal : nil
    }
}
