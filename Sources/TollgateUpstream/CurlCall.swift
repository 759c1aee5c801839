import CCurl
import TollgateProxy

/// One upstream call in a `CurlUpstream`: the request, the libcurl handle running it, its
/// header list and body (which libcurl reads in place, so they live as long as the call), and
/// the completion to run once it ends.
///
/// Belongs to its loop's thread. The easy handle is borrowed from the upstream and given back
/// when the call ends.
final class CurlCall: UpstreamCall {
    let request: UpstreamRequest
    let transfer: CurlTransfer
    let startedAt = ContinuousClock.now
    private unowned let upstream: CurlUpstream
    private var completion: ((UpstreamOutcome) -> Void)?
    /// The request body, at an address that stays put while libcurl sends it.
    private let body: UnsafeMutableRawBufferPointer
    private var headers: CurlHeaderList?
    private(set) var easy: UnsafeMutableRawPointer?

    init(
        request: UpstreamRequest, handler: any UpstreamResponseHandler, upstream: CurlUpstream,
        completion: @escaping (UpstreamOutcome) -> Void
    ) {
        var request = request
        let body = UnsafeMutableRawBufferPointer.allocate(byteCount: request.body.count, alignment: 1)
        request.body.withUnsafeBytes { body.copyMemory(from: $0) }
        request.body = []
        self.body = body
        self.request = request
        self.transfer = CurlTransfer(handler: handler)
        self.upstream = upstream
        self.completion = completion
    }

    deinit {
        body.deallocate()
    }

    func adopt(_ easy: UnsafeMutableRawPointer) {
        self.easy = easy
        transfer.easy = easy
    }

    /// Sets the handle up for the request; false when a header cannot be sent or libcurl refused.
    func configure(_ settings: UpstreamSettings) -> Bool {
        guard let headers = CurlHeaderList(request: request) else { return false }
        self.headers = headers
        return transfer.configure(request, body: UnsafeRawBufferPointer(body), headers: headers, settings: settings)
    }

    /// Gives the handle back (for reuse) and frees the header list.
    func releaseHandle() -> UnsafeMutableRawPointer? {
        defer {
            easy = nil
            transfer.easy = nil
            headers = nil
        }
        return easy
    }

    /// Runs the completion, once.
    func complete(_ outcome: UpstreamOutcome) {
        guard let completion else { return }
        self.completion = nil
        completion(outcome)
    }

    func cancel() {
        // The client's departure may be learnt inside a libcurl callback of this very call (a
        // write to nginx failing), where libcurl forbids removing the transfer: end it just after.
        upstream.loop.runSoon { [self] in upstream.end(self, .clientGone) }
    }

    func resume() {
        upstream.resume(self)
    }
}
