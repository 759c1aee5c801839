/// Splits the bytes nginx sends on one connection into FastCGI records, whatever pieces they
/// arrive in. Pure: no sockets, so it is tested (and fuzzed) on bytes alone.
struct FastCGIRecordReader {
    enum Failure: Error, Equatable {
        /// A record header that does not start with FastCGI version 1: not a FastCGI peer.
        case unsupportedVersion(UInt8)
    }

    private var buffer: [UInt8] = []
    /// Buffer capacity kept once everything has been read, and given back beyond it.
    static let retainedCapacity = 16 << 10
    /// Where the unread bytes of `buffer` start.
    private var start = 0

    /// Bytes received and not yet returned as records.
    var buffered: Int { buffer.count - start }

    /// Bytes the buffer holds memory for.
    var capacity: Int { buffer.capacity }

    /// Gives back the buffer's memory when nothing is left in it (a request was read whole).
    mutating func shrink() {
        guard start == buffer.count, buffer.capacity > Self.retainedCapacity else { return }
        buffer = []
        start = 0
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && start == buffer.count {
            // A large body leaves a large buffer; an open stream keeps its connection for
            // minutes, and must not keep that too.
            buffer.removeAll(keepingCapacity: buffer.capacity <= Self.retainedCapacity)
            start = 0
        } else if start >= 64 << 10 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete record, or nil until more bytes arrive.
    mutating func next() throws(Failure) -> FastCGIRecord? {
        let available = buffer.count - start
        guard available >= FastCGIRecord.headerLength else { return nil }
        let header = buffer[start..<start + FastCGIRecord.headerLength]
        let base = header.startIndex
        guard header[base] == FastCGIRecord.version else { throw .unsupportedVersion(header[base]) }
        let requestID = UInt16(header[base + 2]) << 8 | UInt16(header[base + 3])
        let contentLength = Int(header[base + 4]) << 8 | Int(header[base + 5])
        let padding = Int(header[base + 6])
        let total = FastCGIRecord.headerLength + contentLength + padding
        guard available >= total else { return nil }
        let contentStart = start + FastCGIRecord.headerLength
        let record = FastCGIRecord(
            type: header[base + 1], requestID: requestID,
            content: Array(buffer[contentStart..<contentStart + contentLength]))
        start += total
        return record
    }
}
