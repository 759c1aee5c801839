import TollgateCore
import TollgateLoop

/// Serves the requests of one event loop: routes each, refuses what must be refused, and starts
/// an exchange for the rest. Never blocks: admission answers and upstream answers arrive later,
/// on the same loop.
///
/// Owns nothing shared: it belongs to its loop's thread, like the upstream client it calls.
public final class ProxyHandler {
    let service: ProxyService
    let upstream: any Upstream
    let executor: any LoopExecutor

    init(service: ProxyService, upstream: any Upstream, executor: any LoopExecutor) {
        self.service = service
        self.upstream = upstream
        self.executor = executor
    }

    /// Starts answering one request; the answer completes later on this loop, ending `client`.
    public func handle(_ request: ProxyRequest, client: any ClientConnection) {
        switch service.router.route(method: request.method, path: request.path) {
        case .chatCompletions:
            forwardGeneration(.chatCompletions, request, client)
        case .responses:
            forwardGeneration(.responses, request, client)
        case .models:
            forwardModelList(request, client)
        case .notFound:
            refuse(.notFound(method: request.method, path: request.path), requestID: request.id, client)
        case .methodNotAllowed(let allowed):
            refuse(
                .methodNotAllowed(method: request.method, path: request.path, allowed: allowed), requestID: request.id,
                client)
        }
    }

    private func forwardGeneration(_ api: API, _ request: ProxyRequest, _ client: any ClientConnection) {
        let startedAt = WallClock.nowMicroseconds()
        let start = ContinuousClock.now
        let inspected: InspectedRequest
        do {
            inspected = try RequestInspector.inspect(api: api, body: request.body)
        } catch {
            refuse(error, requestID: request.id, client)
            return
        }

        switch service.policy.apply(to: inspected) {
        case .failure(let error):
            refuse(error, requestID: request.id, client)
        case .success(let decision):
            let exchange = GenerationExchange(
                handler: self, request: request, client: client, inspected: inspected, decision: decision,
                startedAt: startedAt, start: start)
            exchange.begin()
        }
    }

    private func forwardModelList(_ request: ProxyRequest, _ client: any ClientConnection) {
        service.metering.admitListing(from: request, replyingOn: executor) { [self] admission in
            switch admission {
            case .rejected(let error):
                refuse(error, requestID: request.id, client)
            case .admitted(let ticket):
                let policy = service.policy
                let forwarder = BufferedForwarder(client: client, api: nil, maxResponseBytes: service.maxResponseBytes)
                {
                    policy.allowedModels.isEmpty ? nil : policy.filterModelList($0)
                }
                let call = UpstreamRequest(
                    method: "GET", path: "/models", query: request.query, apiKey: ticket.upstreamKey,
                    headers: forwardedHeaders(of: request, stream: false))
                UpstreamRelay(client: client, forwarder: forwarder).start(call, on: upstream) { result, _ in
                    Log.debug("models.listed", [(.requestID, request.id), (.status, String(result.status))])
                }
            }
        }
    }

    /// Answers with an error and ends the response.
    func refuse(_ error: OpenAIError, requestID: String, _ client: any ClientConnection) {
        client.sendError(error)
        client.end()
        Log.info(
            "request.refused",
            [(.requestID, requestID), (.status, String(error.status)), (.code, error.code ?? error.type)])
    }

    /// Client headers the upstream may see. Authorization is never among them: the upstream
    /// gets the admitted key instead.
    func forwardedHeaders(of request: ProxyRequest, stream: Bool) -> [(String, String)] {
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
}
