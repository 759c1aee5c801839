#if canImport(Glibc)
    import Glibc
#endif

/// Reads a journal file line by line from an offset, with `pread` in 64 KiB chunks, so a file
/// of any length is replayed in little memory. Does not own the descriptor.
struct SettlementJournalReader {
    /// One line without its `\n`; incomplete when the file ends before the newline (a write cut
    /// short by a crash).
    struct Line {
        var text: Substring
        var isComplete: Bool
    }

    static let chunkBytes = 64 * 1024

    let descriptor: Int32
    /// File offset of the first byte not returned yet.
    private(set) var offset: Int64
    /// Set when reading failed; the lines before were returned.
    private(set) var failure: StoreError?
    /// Read bytes; those before `next` were returned already.
    private var buffer: [UInt8] = []
    private var next = 0
    private var atEnd = false

    init(descriptor: Int32, offset: Int64) {
        self.descriptor = descriptor
        self.offset = offset
    }

    /// The next line and the file offset where it starts; nil at the end of the file or on failure.
    mutating func nextLine() -> (line: Line, start: Int64)? {
        while true {
            if let newline = buffer[next...].firstIndex(of: 0x0A) {
                return take(upTo: newline, consuming: newline + 1 - next, isComplete: true)
            }
            if atEnd {
                guard next < buffer.count else { return nil }
                return take(upTo: buffer.count, consuming: buffer.count - next, isComplete: false)
            }
            guard readChunk() else { return nil }
        }
    }

    private mutating func take(upTo end: Int, consuming count: Int, isComplete: Bool) -> (line: Line, start: Int64) {
        let text = String(decoding: buffer[next..<end], as: UTF8.self)
        let start = offset
        next += count
        offset += Int64(count)
        return (Line(text: text[...], isComplete: isComplete), start)
    }

    /// Appends the next chunk after what is buffered; false on a read error.
    private mutating func readChunk() -> Bool {
        buffer.removeFirst(next)
        next = 0
        var chunk = [UInt8](repeating: 0, count: Self.chunkBytes)
        let position = offset + Int64(buffer.count)
        let count = chunk.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, off_t(position)) }
        if count < 0 {
            if errno == EINTR { return true }
            failure = SettlementJournal.failure("pread", path: "descriptor \(descriptor)")
            return false
        }
        if count == 0 {
            atEnd = true
        } else {
            buffer.append(contentsOf: chunk[..<count])
        }
        return true
    }
}
