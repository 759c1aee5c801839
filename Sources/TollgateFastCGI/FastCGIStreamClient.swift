import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// The client side of a request after it left its thread for the stream loop: writes FastCGI
/// records to nginx itself, never blocking. Bytes nginx does not take at once stay pending
/// until the loop sees the descriptor writable.
final class FastCGIStreamClient: DetachedClient {
    let descriptor: Int32
    private let fastCGIRequestID: UInt16
    private let requestID: String
    private var headSent: Bool
    private var pending: [UInt8] = []
    /// How much of `pending` nginx has already taken.
    private var written = 0
    private var gone = false
    private var closed = false

    init(descriptor: Int32, fastCGIRequestID: UInt16, requestID: String, headSent: Bool) {
        self.descriptor = descriptor
        self.fastCGIRequestID = fastCGIRequestID
        self.requestID = requestID
        self.headSent = headSent
        let flags = fcntl(descriptor, F_GETFL)
        if flags < 0 || fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) != 0 { gone = true }
    }

    deinit { close() }

    var disconnectDescriptor: Int32 { descriptor }

    var pendingBytes: Int { pending.count - written }

    func sendHead(status: Int, headers: [(String, String)]) {
        guard !headSent else { return }
        headSent = true
        send(FastCGIClient.head(status: status, headers: headers, requestID: requestID))
    }

    func send(_ bytes: [UInt8]) {
        guard !gone, !bytes.isEmpty else { return }
        var start = 0
        while start < bytes.count {
            let end = min(start + Self.largestRecordContent, bytes.count)
            appendRecord(type: Self.standardOutput, content: bytes[start..<end])
            start = end
        }
    }

    func flush() -> Bool {
        writePending()
    }

    func writePending() -> Bool {
        guard !gone else { return false }
        while written < pending.count {
            let count = pending.withUnsafeBytes { buffer in
                write(descriptor, buffer.baseAddress! + written, buffer.count - written)
            }
            if count > 0 {
                written += count
            } else if count < 0 && errno == EINTR {
                continue
            } else if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                gone = true
                return false
            }
        }
        if written == pending.count {
            pending.removeAll(keepingCapacity: pending.count <= Self.retainedCapacity)
            written = 0
        } else if written > Self.retainedCapacity {
            pending.removeFirst(written)
            written = 0
        }
        return true
    }

    func discardInput() -> Bool {
        guard !gone else { return false }
        var scratch = [UInt8](repeating: 0, count: 512)
        while true {
            let count = scratch.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count > 0 { continue }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return true }
            gone = true
            return false
        }
    }

    /// Queues the end of the response; the loop closes the connection once it is written.
    func end() {
        guard !gone else { return }
        // An empty stdout record ends the stream; END_REQUEST with status 0 completes the request.
        appendRecord(type: Self.standardOutput, content: [][...])
        appendRecord(type: Self.endRequest, content: [0, 0, 0, 0, 0, 0, 0, 0][...])
        _ = writePending()
    }

    func close() {
        guard !closed else { return }
        closed = true
        gone = true
        _ = Glibc.close(descriptor)
    }

    private func appendRecord(type: UInt8, content: ArraySlice<UInt8>) {
        let length = content.count
        pending.append(contentsOf: [
            1, type, UInt8(fastCGIRequestID >> 8), UInt8(fastCGIRequestID & 0xFF),
            UInt8(length >> 8), UInt8(length & 0xFF), 0, 0,
        ])
        pending.append(contentsOf: content)
    }

    static let standardOutput: UInt8 = 6
    static let endRequest: UInt8 = 3
    static let largestRecordContent = 65535
    /// A stream's buffer is kept between events up to this size, and given back beyond it.
    static let retainedCapacity = 16 << 10
}
