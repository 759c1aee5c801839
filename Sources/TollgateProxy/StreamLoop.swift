/// Serves upstream streams without holding a thread each: one event loop per worker process
/// waits on every open stream's upstream transfer and client connection at once.
///
/// A request thread admits the request, detaches its client connection and hands both over
/// with `start`; the loop then feeds `handler` as the upstream answers, exactly as
/// `Upstream.send` would, watches the client for hang-up, enforces the upstream timeouts, calls
/// `completion` with the outcome on its own thread, and finally ends and closes the client
/// connection once everything written has reached nginx.
public protocol StreamLoop: AnyObject, Sendable {
    func start(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler, client: any DetachedClient,
        completion: @escaping (UpstreamOutcome) -> Void)
}
