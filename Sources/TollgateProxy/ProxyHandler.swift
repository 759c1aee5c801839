import TollgateCore

/// Serves requests on one thread, one at a time: route, inspect, admit, forward, settle.
///
/// Owns that thread's upstream (and so its upstream connection); never shared between threads.
public final class ProxyHandler {
    let service: ProxyService
    let upstream: any Upstream

    init(service: ProxyService, upstream: any Upstream) {
        self.service = service
        self.upstream = upstream
    }

    /// Answers one request completely. Blocks for as long as the upstream answer lasts.
    public func handle(_ request: ProxyRequest, client: any ClientConnection) {
        switch service.router.route(method: request.method, path: request.path) {
        case .chatCompletions:
            forwardGeneration(.chatCompletions, request, client)
        case .responses:
            forwardGeneration(.responses, request, client)
        case .models:
            forwardModelList(request, client)
        case .notFound:
            refuse(.notFound(method: request.method, path: request.path), request, client)
        case .methodNotAllowed(let allowed):
            refuse(.methodNotAllowed(method: request.method, path: request.path, allowed: allowed), request, client)
        }
    }

    private func forwardGeneration(_ api: API, _ request: ProxyRequest, _ client: any ClientConnection) {
        let startedAt = WallClock.nowMicroseconds()
        let start = ContinuousClock.now
        let inspected: InspectedRequest
        do {
            inspected = try RequestInspector.inspect(api: api, body: request.body)
        } catch {
            refuse(error, request, client)
            return
        }

        let decision: PolicyDecision
        switch service.policy.apply(to: inspected) {
        case .failure(let error):
            refuse(error, request, client)
            return
        case .success(let allowed):
            decision = allowed
        }

        let ticket: AdmissionTicket
        let admission = AdmissionRequest(
            requestID: request.id, api: api, model: inspected.model, stream: inspected.stream,
            reservedTokens: Self.reservation(input: inspected.estimatedInputTokens, output: decision.outputTokens),
            estimatedInputTokens: inspected.estimatedInputTokens, client: request)
        switch service.metering.admit(admission) {
        case .rejected(let error):
            refuse(error, request, client)
            return
        case .admitted(let admitted):
            ticket = admitted
        }

        let call = UpstreamRequest(
            method: "POST", path: api.upstreamPath, query: request.query, body: decision.body,
            apiKey: ticket.upstreamKey, headers: forwardedHeaders(of: request, stream: inspected.stream))
        let settle = { (result: ForwardResult, firstByteAt: ContinuousClock.Instant?) in
            Self.settlement(
                of: inspected, ticket: ticket, result: result, requestID: request.id, startedAt: startedAt,
                timeToFirstByte: firstByteAt.map { $0 - start }, duration: ContinuousClock.now - start)
        }

        if inspected.stream, let loop = service.streamLoop, let detached = client.detach() {
            // From here the loop serves the stream and this thread is free for the next request.
            let forwarder = StreamForwarder(
                client: detached, api: api, clientWantsUsage: inspected.clientWantsUsage,
                maxResponseBytes: service.maxResponseBytes)
            let tracker = FirstByteTracker(forwarder)
            let streams = service.detachedStreams
            let metering = service.metering
            streams.begin()
            loop.start(call, to: tracker, client: detached) { outcome in
                streams.settle(settle(forwarder.finish(outcome), tracker.firstByteAt), with: metering)
            }
            return
        }

        let forwarder: any Forwarder =
            inspected.stream
            ? StreamForwarder(
                client: client, api: api, clientWantsUsage: inspected.clientWantsUsage,
                maxResponseBytes: service.maxResponseBytes)
            : BufferedForwarder(client: client, api: api, maxResponseBytes: service.maxResponseBytes)
        let tracker = FirstByteTracker(forwarder)
        let outcome = upstream.send(call, to: tracker, watching: client.disconnectDescriptor)
        let result = forwarder.finish(outcome)
        client.end()
        service.metering.settle(settle(result, tracker.firstByteAt))
    }

    private func forwardModelList(_ request: ProxyRequest, _ client: any ClientConnection) {
        let ticket: AdmissionTicket
        switch service.metering.admitListing(from: request) {
        case .rejected(let error):
            refuse(error, request, client)
            return
        case .admitted(let admitted):
            ticket = admitted
        }
        let policy = service.policy
        let forwarder = BufferedForwarder(client: client, api: nil, maxResponseBytes: service.maxResponseBytes) {
            policy.allowedModels.isEmpty ? nil : policy.filterModelList($0)
        }
        let call = UpstreamRequest(
            method: "GET", path: "/models", query: request.query, apiKey: ticket.upstreamKey,
            headers: forwardedHeaders(of: request, stream: false))
        let result = forwarder.finish(upstream.send(call, to: forwarder, watching: client.disconnectDescriptor))
        Log.debug("models.listed", [(.requestID, request.id), (.status, String(result.status))])
    }

    private func refuse(_ error: OpenAIError, _ request: ProxyRequest, _ client: any ClientConnection) {
        client.sendError(error)
        Log.info(
            "request.refused",
            [(.requestID, request.id), (.status, String(error.status)), (.code, error.code ?? error.type)])
    }

    /// Most tokens one reservation holds: far above any quota, and far from overflowing a sum
    /// in Swift or a bigint in PostgreSQL, whatever output limit a client asks for.
    static let largestReservation = 1 << 50

    /// Tokens to hold for a request: its estimated input plus its output cap, bounded.
    static func reservation(input: Int, output: Int) -> Int {
        min(input, largestReservation) + min(output, largestReservation)
    }

    /// Client headers the upstream may see. Authorization is never among them: the upstream
    /// gets the admitted key instead.
    private func forwardedHeaders(of request: ProxyRequest, stream: Bool) -> [(String, String)] {
        var headers: [(String, String)] = [("accept", stream ? "text/event-stream" : "application/json")]
        for name in ["openai-beta", "idempotency-key"] {
            // A control character could split the header on the wire: such a value is dropped.
            guard let value = request.header(name),
                !value.utf8.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F })
            else { continue }
            headers.append((name, value))
        }
        return headers
    }

    private static func settlement(
        of inspected: InspectedRequest, ticket: AdmissionTicket, result: ForwardResult, requestID: String,
        startedAt: Int64, timeToFirstByte: Duration?, duration: Duration
    ) -> Settlement {
        var usage = result.reportedUsage ?? Usage()
        let estimated = result.reportedUsage == nil && result.upstreamResponded && result.outcome != .completed
        if estimated {
            usage = Usage(
                inputTokens: inspected.estimatedInputTokens,
                outputTokens: TokenEstimator.tokens(forTextBytes: result.relayedOutputBytes))
        }
        return Settlement(
            requestID: requestID, ticket: ticket, api: inspected.api, model: inspected.model,
            stream: inspected.stream, outcome: result.outcome, status: result.status, usage: usage,
            usageIsEstimated: estimated, startedAtMicroseconds: startedAt, timeToFirstByte: timeToFirstByte,
            duration: duration)
    }
}
