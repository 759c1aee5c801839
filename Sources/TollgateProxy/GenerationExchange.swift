import TollgateCore

/// One chat or Responses request from admission to settlement, on its loop's thread: asks the
/// metering for admission, forwards the request with the admitted key, and hands the
/// settlement over once the client's answer is complete.
///
/// Keeps only what settlement needs once the upstream call has started: a stream may stay open
/// for minutes, and its request body (often a long chat history) is not held that long.
final class GenerationExchange {
    let handler: ProxyHandler
    let requestID: String
    let client: any ClientConnection
    let api: API
    let model: String
    let stream: Bool
    let clientWantsUsage: Bool
    /// Input tokens estimated from the request, for a settlement the upstream reports nothing for.
    let estimatedInputTokens: Int
    /// Wall-clock start in microseconds since the Unix epoch, for the ledger.
    let startedAt: Int64
    let start: ContinuousClock.Instant
    /// What admission is asked, until it is asked.
    private var admission: AdmissionRequest?
    /// The upstream call, all but its key, until admission answers.
    private var call: UpstreamRequest?

    init(
        handler: ProxyHandler, request: ProxyRequest, client: any ClientConnection, inspected: InspectedRequest,
        decision: PolicyDecision, startedAt: Int64, start: ContinuousClock.Instant
    ) {
        self.handler = handler
        self.requestID = request.id
        self.client = client
        self.api = inspected.api
        self.model = inspected.model
        self.stream = inspected.stream
        self.clientWantsUsage = inspected.clientWantsUsage
        self.estimatedInputTokens = inspected.estimatedInputTokens
        self.startedAt = startedAt
        self.start = start
        admission = AdmissionRequest(
            requestID: request.id, api: inspected.api, model: inspected.model, stream: inspected.stream,
            reservedTokens: Self.reservation(input: inspected.estimatedInputTokens, output: decision.outputTokens),
            estimatedInputTokens: inspected.estimatedInputTokens, client: request)
        call = UpstreamRequest(
            method: "POST", path: inspected.api.upstreamPath, query: request.query, body: decision.body, apiKey: "",
            headers: handler.forwardedHeaders(of: request, stream: inspected.stream))
    }

    /// Asks for admission; the rest follows from the answer. Kept alive by the pending reply.
    func begin() {
        guard let admission else { return }
        self.admission = nil
        handler.service.metering.admit(admission, replyingOn: handler.executor) { [self] answer in
            admitted(answer)
        }
    }

    private func admitted(_ admission: Admission) {
        guard var call else { return }
        self.call = nil
        let ticket: AdmissionTicket
        switch admission {
        case .rejected(let error):
            handler.refuse(error, requestID: requestID, client)
            return
        case .admitted(let admitted):
            ticket = admitted
        }
        // The client may have left while admission waited on the database: the reservation is
        // released by a settlement that nothing reached the upstream.
        guard client.flush() else {
            let result = ForwardResult(
                status: 0, outcome: .clientAborted, reportedUsage: nil, relayedOutputBytes: 0,
                upstreamResponded: false)
            settle(result, ticket: ticket, firstByteAt: nil)
            return
        }

        call.apiKey = ticket.upstreamKey
        let service = handler.service
        let forwarder: any Forwarder =
            stream
            ? StreamForwarder(
                client: client, api: api, clientWantsUsage: clientWantsUsage,
                maxResponseBytes: service.maxResponseBytes)
            : BufferedForwarder(client: client, api: api, maxResponseBytes: service.maxResponseBytes)
        UpstreamRelay(client: client, forwarder: forwarder).start(call, on: handler.upstream) {
            [self] result, firstByteAt in
            settle(result, ticket: ticket, firstByteAt: firstByteAt)
        }
    }

    private func settle(_ result: ForwardResult, ticket: AdmissionTicket, firstByteAt: ContinuousClock.Instant?) {
        var usage = result.reportedUsage ?? Usage()
        let estimated = result.reportedUsage == nil && result.upstreamResponded && result.outcome != .completed
        if estimated {
            usage = Usage(
                inputTokens: estimatedInputTokens,
                outputTokens: TokenEstimator.tokens(forTextBytes: result.relayedOutputBytes))
        }
        handler.service.metering.settle(
            Settlement(
                requestID: requestID, ticket: ticket, api: api, model: model,
                stream: stream, outcome: result.outcome, status: result.status, usage: usage,
                usageIsEstimated: estimated, startedAtMicroseconds: startedAt,
                timeToFirstByte: firstByteAt.map { $0 - start }, duration: ContinuousClock.now - start))
    }

    /// Most tokens one reservation holds: far above any quota, and far from overflowing a sum
    /// in Swift or a bigint in PostgreSQL, whatever output limit a client asks for.
    static let largestReservation = 1 << 50

    /// Tokens to hold for a request: its estimated input plus its output cap, bounded.
    static func reservation(input: Int, output: Int) -> Int {
        min(input, largestReservation) + min(output, largestReservation)
    }
}
