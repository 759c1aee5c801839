import CFastCGI
import TollgateCore
import TollgateLoop
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// One connection from nginx, on one event loop: reads FastCGI records without blocking, hands
/// each complete request to the proxy handler, and writes the answer's records as fast as nginx
/// takes them. nginx sends one request at a time on a connection; with FCGI_KEEP_CONN the
/// connection then waits for the next one, otherwise it is closed once the answer is out.
///
/// nginx closes the connection when its client goes away: a read that finds the end of the
/// connection (or a hang-up) while a request is served tells that request's observer at once.
final class FastCGIConnection: LoopHandler {
    let descriptor: Int32
    private unowned let owner: FastCGILoop
    private var reader = FastCGIRecordReader()
    private var incoming: FastCGIIncomingRequest?
    /// The answer being written; nil between requests.
    private var response: FastCGIResponse?
    private var responseEnded = false
    private var output: [UInt8] = []
    /// How much of `output` nginx has taken.
    private var written = 0
    private var watchingWritable = false
    private(set) var closed = false

    /// Output capacity kept between writes up to this size, and given back beyond it.
    static let retainedCapacity = 16 << 10

    init(descriptor: Int32, owner: FastCGILoop) {
        self.descriptor = descriptor
        self.owner = owner
    }

    /// Neither reading a request nor answering one.
    var isIdle: Bool { incoming == nil && response == nil }

    var pendingBytes: Int { output.count - written }

    func loopEvents(_ events: LoopEvents, on descriptor: Int32) {
        if events.contains(.writable) {
            let lagging = pendingBytes > 0
            guard writePending() else { return }
            if lagging && pendingBytes == 0 && !responseEnded { response?.observer?.clientDidCatchUp() }
        }
        if !closed && !events.isDisjoint(with: [.readable, .hangUp, .error]) { readAvailable() }
    }

    // MARK: - Reading requests

    private func readAvailable() {
        let scratch = owner.scratch
        let count = read(descriptor, scratch.baseAddress, scratch.count)
        if count > 0 {
            reader.append(UnsafeRawBufferPointer(rebasing: scratch[0..<count]))
            readRecords()
        } else if count == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            peerClosed()
        }
    }

    private func readRecords() {
        do {
            while !closed, let record = try reader.next() {
                receive(record)
            }
        } catch {
            Log.warning("fastcgi.protocol_error", [(.detail, String(describing: error))])
            peerClosed()
        }
    }

    private func receive(_ record: FastCGIRecord) {
        switch record.kind {
        case .beginRequest?:
            begin(record)
        case .params?:
            guard incoming?.id == record.requestID, incoming?.parameters == nil else { return protocolError() }
            receiveParameters(record.content)
        case .standardInput?:
            guard incoming?.id == record.requestID, incoming?.parameters != nil else { return protocolError() }
            receiveBody(record.content)
        case .abortRequest?:
            guard response?.fastCGIRequestID == record.requestID, !responseEnded else { return }
            response?.observer?.clientDidLeave()
        case .getValues?:
            let answer = FastCGIParameters.encode([("FCGI_MPXS_CONNS", "0")])
            answer.withUnsafeBytes { FastCGIRecord.append(.getValuesResult, requestID: 0, content: $0, to: &output) }
            _ = writePending()
        default:
            // A management record this application does not know gets UNKNOWN_TYPE; a stray
            // record of a request (DATA, for a filter role) is ignored.
            guard record.requestID == UInt16(FCGI_NULL_REQUEST_ID) else { return }
            let body: [UInt8] = [record.type, 0, 0, 0, 0, 0, 0, 0]
            body.withUnsafeBytes { FastCGIRecord.append(.unknownType, requestID: 0, content: $0, to: &output) }
            _ = writePending()
        }
    }

    private func begin(_ record: FastCGIRecord) {
        let body = record.content
        guard isIdle, body.count >= 8 else { return protocolError() }
        let role = Int32(body[0]) << 8 | Int32(body[1])
        guard role == FCGI_RESPONDER else {
            FastCGIRecord.appendEndRequest(
                requestID: record.requestID, protocolStatus: UInt8(FCGI_UNKNOWN_ROLE), to: &output)
            _ = writePending()
            return
        }
        incoming = FastCGIIncomingRequest(id: record.requestID, keepConnection: Int32(body[2]) & FCGI_KEEP_CONN != 0)
    }

    private func receiveParameters(_ content: [UInt8]) {
        guard var request = incoming else { return }
        guard content.isEmpty else {
            guard request.parameterBytes.count + content.count <= FastCGIIncomingRequest.largestParameters else {
                return protocolError()
            }
            request.parameterBytes.append(contentsOf: content)
            incoming = request
            return
        }
        do {
            request.parameters = try FastCGIParameters.decode(request.parameterBytes)
        } catch {
            return protocolError()
        }
        request.parameterBytes = []
        incoming = request
        if (request.announcedLength ?? 0) > owner.maxBodyBytes { refuseLargeBody() }
    }

    private func receiveBody(_ content: [UInt8]) {
        guard var request = incoming else { return }
        if content.isEmpty {
            request.bodyComplete = true
            incoming = request
            if request.bodyTooLarge { finishRequest() } else { dispatch() }
            return
        }
        guard !request.bodyTooLarge else { return }
        guard request.body.count + content.count <= owner.maxBodyBytes else {
            refuseLargeBody()
            return
        }
        request.body.append(contentsOf: content)
        incoming = request
    }

    /// Hands the complete request to the proxy service.
    private func dispatch() {
        guard var request = incoming else { return }
        let response = startResponse(for: request)
        let proxyRequest = request.proxyRequest(id: response.requestID)
        request.body = []
        incoming = request
        reader.shrink()
        owner.handler.handle(proxyRequest, client: response)
    }

    /// Answers 413 at once; the rest of the body is read and dropped, so nginx can finish sending it.
    private func refuseLargeBody() {
        guard var request = incoming, !request.bodyTooLarge else { return }
        request.bodyTooLarge = true
        request.body = []
        incoming = request
        let response = startResponse(for: request)
        Log.info("request.body_too_large", [(.requestID, response.requestID)])
        response.sendError(.bodyTooLarge(limit: owner.maxBodyBytes))
        response.end()
    }

    private func startResponse(for request: FastCGIIncomingRequest) -> FastCGIResponse {
        let response = FastCGIResponse(
            connection: self, fastCGIRequestID: request.id, requestID: owner.requestIDs.next())
        self.response = response
        responseEnded = false
        owner.requestStarted()
        return response
    }

    private func protocolError() {
        Log.warning("fastcgi.protocol_error", [(.detail, "unexpected record")])
        peerClosed()
    }

    // MARK: - Writing answers

    /// Queues body bytes of `response` as standard-output records.
    func queueOutput(_ bytes: [UInt8], for response: FastCGIResponse) {
        guard response === self.response, !closed, !responseEnded else { return }
        FastCGIRecord.appendOutput(bytes, requestID: response.fastCGIRequestID, to: &output)
    }

    /// Ends the answer; the request is over once nginx has taken everything.
    func endResponse(_ response: FastCGIResponse) {
        guard response === self.response, !closed, !responseEnded else { return }
        responseEnded = true
        FastCGIRecord.appendEnd(requestID: response.fastCGIRequestID, to: &output)
        _ = writePending()
    }

    /// Writes what nginx takes now, without blocking; waits for writability when some is left.
    /// False once the connection is closed.
    func writePending() -> Bool {
        guard !closed else { return false }
        while written < output.count {
            let count = output.withUnsafeBytes { buffer in
                write(descriptor, buffer.baseAddress.map { $0 + written }, buffer.count - written)
            }
            if count > 0 {
                written += count
            } else if count < 0 && errno == EINTR {
                continue
            } else if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                peerClosed()
                return false
            }
        }
        if written == output.count {
            output.removeAll(keepingCapacity: output.capacity <= Self.retainedCapacity)
            written = 0
        } else if written >= Self.retainedCapacity {
            output.removeFirst(written)
            written = 0
        }
        watchWritable(pendingBytes > 0)
        if responseEnded && pendingBytes == 0 { finishRequest() }
        return !closed
    }

    private func watchWritable(_ writable: Bool) {
        guard writable != watchingWritable else { return }
        watchingWritable = writable
        owner.loop.change(descriptor, to: writable ? [.readable, .hangUp, .writable] : [.readable, .hangUp])
    }

    /// The answer is out (and the body, if refused, read): ready for the next request or closed.
    private func finishRequest() {
        guard responseEnded, pendingBytes == 0, incoming?.bodyComplete ?? true else { return }
        let keep = incoming?.keepConnection ?? false
        response?.detach()
        response = nil
        responseEnded = false
        incoming = nil
        owner.requestFinished()
        if !keep || owner.retiring { close() }
    }

    /// nginx closed the connection (its client left) or it failed: the request being served, if
    /// any, is told its client is gone.
    private func peerClosed() {
        guard !closed else { return }
        let abandoned = responseEnded ? nil : response
        if response != nil { owner.requestFinished() }
        response?.detach()
        response = nil
        close()
        abandoned?.observer?.clientDidLeave()
    }

    /// Closes an idle kept-alive connection, or one whose request is over.
    func close() {
        guard !closed else { return }
        closed = true
        owner.loop.unwatch(descriptor)
        _ = Glibc.close(descriptor)
        owner.connectionClosed(self)
    }
}
