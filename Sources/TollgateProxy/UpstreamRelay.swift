/// One upstream call on behalf of one client, on its loop's thread: feeds the answer to a
/// forwarder, which writes the client's answer; cancels the call the moment the client leaves;
/// holds it while the client lags behind, and lets it go on once the client caught up.
///
/// Kept alive by the upstream call it runs (as that call's handler) until the call has ended.
final class UpstreamRelay: UpstreamResponseHandler, ClientObserver {
    let client: any ClientConnection
    let forwarder: any Forwarder
    private var call: (any UpstreamCall)?
    private var completion: ((ForwardResult, ContinuousClock.Instant?) -> Void)?
    /// When the first body byte arrived from the upstream; nil until it has.
    private(set) var firstByteAt: ContinuousClock.Instant?
    private var paused = false

    /// Client output pending above which the upstream call is held until nginx catches up.
    static let pauseAbove = 64 << 10

    init(client: any ClientConnection, forwarder: any Forwarder) {
        self.client = client
        self.forwarder = forwarder
    }

    /// Runs the call. `completion` gets what the forwarder made of it and when the first byte
    /// arrived, once the client's answer is complete and ended.
    func start(
        _ request: UpstreamRequest, on upstream: any Upstream,
        then completion: @escaping (ForwardResult, ContinuousClock.Instant?) -> Void
    ) {
        self.completion = completion
        client.observer = self
        let call = upstream.start(request, to: self) { [self] outcome in finish(outcome) }
        if self.completion != nil { self.call = call }
    }

    private func finish(_ outcome: UpstreamOutcome) {
        guard let completion else { return }
        self.completion = nil
        call = nil
        client.observer = nil
        let result = forwarder.finish(outcome)
        client.end()
        completion(result, firstByteAt)
    }

    func upstreamDidReceiveHead(status: Int, headers: [(String, String)]) -> Bool {
        forwarder.upstreamDidReceiveHead(status: status, headers: headers)
    }

    func upstreamDidReceiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if firstByteAt == nil { firstByteAt = .now }
        return forwarder.upstreamDidReceiveBody(bytes)
    }

    var upstreamShouldPause: Bool {
        paused = client.pendingBytes > Self.pauseAbove
        return paused
    }

    func clientDidLeave() {
        call?.cancel()
    }

    func clientDidCatchUp() {
        guard paused else { return }
        paused = false
        call?.resume()
    }
}
