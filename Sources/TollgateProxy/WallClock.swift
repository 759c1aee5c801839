#if canImport(Glibc)
    import Glibc
#endif

/// Wall-clock time for records that leave the process (ledger start times).
public enum WallClock {
    /// Microseconds since the Unix epoch.
    public static func nowMicroseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1_000
    }
}
