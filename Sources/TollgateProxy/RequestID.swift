import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Tollgate's ids for requests: UUIDs of version 7, a millisecond timestamp followed by 74
/// random bits. Unique across workers and machines without coordination, stored as `uuid` by
/// the ledger, and ordered by time, so that the ledger's primary-key index grows at its end
/// instead of at random pages as the ledger gets large.
///
/// One generator per event loop (it is not thread-safe); the random bits come from the kernel
/// a few kilobytes at a time, not one system call per id.
public struct RequestID {
    private var pool = [UInt8](repeating: 0, count: 4096)
    private var used = 4096

    public init() {}

    /// A new id, e.g. `0193a1c4-5e2f-7a3b-9c4d-5e6f708192a3`.
    public mutating func next() -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        let milliseconds = UInt64(WallClock.nowMicroseconds() / 1000)
        for index in 0..<6 {
            bytes[index] = UInt8(truncatingIfNeeded: milliseconds >> (40 - index * 8))
        }
        for index in 6..<16 {
            bytes[index] = randomByte()
        }
        bytes[6] = (bytes[6] & 0x0F) | 0x70
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        return Self.text(bytes)
    }

    /// A new id from a shared, locked generator: for code off the event loops.
    public static func make() -> String {
        shared.withLock { $0.next() }
    }

    private static let shared = Mutex(RequestID())

    private mutating func randomByte() -> UInt8 {
        if used == pool.count {
            refill()
            used = 0
        }
        defer { used += 1 }
        return pool[used]
    }

    private mutating func refill() {
        let source = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        let filled = pool.withUnsafeMutableBytes { buffer in
            source >= 0 ? read(source, buffer.baseAddress, buffer.count) : -1
        }
        if source >= 0 { close(source) }
        guard filled != pool.count else { return }
        // Without /dev/urandom (a chroot), the standard generator, one system call per 8 bytes.
        var generator = SystemRandomNumberGenerator()
        for index in pool.indices { pool[index] = generator.next() }
    }

    private static func text(_ bytes: [UInt8]) -> String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(36)
        for (index, byte) in bytes.enumerated() {
            if index == 4 || index == 6 || index == 8 || index == 10 { text.append(UInt8(ascii: "-")) }
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
