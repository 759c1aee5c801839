/// Passes an upstream answer through to a handler, noting when the first body byte arrived.
final class FirstByteTracker: UpstreamResponseHandler {
    let handler: any UpstreamResponseHandler
    private(set) var firstByteAt: ContinuousClock.Instant?

    init(_ handler: any UpstreamResponseHandler) {
        self.handler = handler
    }

    func upstreamDidReceiveHead(status: Int, headers: [(String, String)]) -> Bool {
        handler.upstreamDidReceiveHead(status: status, headers: headers)
    }

    func upstreamDidReceiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if firstByteAt == nil { firstByteAt = ContinuousClock.now }
        return handler.upstreamDidReceiveBody(bytes)
    }
}
