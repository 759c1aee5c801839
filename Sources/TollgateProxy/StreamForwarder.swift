import TollgateCore

/// Forwards a stream request. A 200 event stream is relayed event by event: each complete SSE
/// event is written and flushed the moment it arrives. Any other answer (an upstream error)
/// is held and delivered whole, so the client gets a real status with a JSON body.
final class StreamForwarder: Forwarder {
    enum Mode {
        case awaitingHead
        case relaying
        case buffering
    }

    let client: any ClientConnection
    let api: API
    var relay: StreamRelay
    var parser = SSEParser()
    var mode = Mode.awaitingHead
    var buffered: BufferedResponse
    var clientGone = false
    var bodyReceived = false
    /// Set when the upstream sent an SSE event larger than the parser accepts.
    var oversizedEvent = false

    init(client: any ClientConnection, api: API, clientWantsUsage: Bool, maxResponseBytes: Int) {
        self.client = client
        self.api = api
        self.relay = StreamRelay(api: api, clientWantsUsage: clientWantsUsage)
        self.buffered = BufferedResponse(limit: maxResponseBytes)
    }

    func upstreamDidReceiveHead(status: Int, headers: [(String, String)]) -> Bool {
        let contentType = headers.first { $0.0 == "content-type" }?.1 ?? ""
        guard status == 200, contentType.lowercased().hasPrefix("text/event-stream") else {
            mode = .buffering
            buffered.status = status
            buffered.headers = headers
            return true
        }
        mode = .relaying
        var head = headers.filter { HeaderPolicy.passesToClient($0.0) && $0.0 != "content-type" }
        head.append(("content-type", "text/event-stream; charset=utf-8"))
        head.append(("cache-control", "no-cache"))
        // nginx consumes this header: it turns off response buffering for this answer even
        // where an operator left fastcgi_buffering on.
        head.append(("x-accel-buffering", "no"))
        client.sendHead(status: 200, headers: head)
        return flushToClient()
    }

    func upstreamDidReceiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bodyReceived = true
        switch mode {
        case .awaitingHead, .buffering:
            return buffered.append(bytes)
        case .relaying:
            do {
                return relayItems(try parser.feed(bytes))
            } catch {
                oversizedEvent = true
                return false
            }
        }
    }

    func finish(_ outcome: UpstreamOutcome) -> ForwardResult {
        var result = ForwardResult(
            status: 0, outcome: .upstreamError, reportedUsage: nil, relayedOutputBytes: 0,
            upstreamResponded: bodyReceived && (mode == .relaying || (200..<300).contains(buffered.status)))
        switch mode {
        case .awaitingHead, .buffering:
            finishUnstarted(outcome, into: &result)
        case .relaying:
            result.status = 200
            finishRelay(outcome, into: &result)
            result.reportedUsage = relay.usage
            result.relayedOutputBytes = relay.relayedOutputBytes
        }
        return result
    }

    /// The stream never started: answer like a non-stream request would.
    private func finishUnstarted(_ outcome: UpstreamOutcome, into result: inout ForwardResult) {
        switch outcome {
        case .clientGone:
            result.outcome = .clientAborted
        case .failed(let failure):
            let error = OpenAIError.forUpstream(failure)
            client.sendError(error)
            result.status = error.status
        case .abortedByHandler:
            client.sendError(.upstreamInvalidResponse())
            result.status = OpenAIError.upstreamInvalidResponse().status
        case .completed:
            result.status = buffered.deliver(to: client).status
        }
    }

    /// The stream started: end it cleanly, or with an SSE error event in the API's own form.
    private func finishRelay(_ outcome: UpstreamOutcome, into result: inout ForwardResult) {
        if outcome == .completed {
            _ = relayItems(parser.finish())
        }
        if clientGone || outcome == .clientGone {
            result.outcome = .clientAborted
            return
        }
        if outcome == .completed && relay.finished && !relay.sawError {
            result.outcome = .completed
            return
        }
        if !relay.sawError {
            let error: OpenAIError = outcome == .failed(.stalled) ? .upstreamTimeout() : .upstreamStreamBroken()
            client.send(relay.terminalError(error))
            _ = client.flush()
        }
        result.outcome = .upstreamError
    }

    private func relayItems(_ items: [SSEItem]) -> Bool {
        for item in items {
            guard let bytes = relay.relay(item) else { continue }
            client.send(bytes)
            guard flushToClient() else { return false }
        }
        return true
    }

    private func flushToClient() -> Bool {
        if client.flush() { return true }
        clientGone = true
        return false
    }
}
