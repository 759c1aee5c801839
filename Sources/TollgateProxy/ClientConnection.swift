/// The client side of one request, as the proxy service sees it. The FastCGI transport
/// implements it over its connection to nginx; tests implement it in memory.
///
/// Writes never block: what nginx does not take at once stays pending and goes out as nginx
/// reads, while the transport tells the `observer` when the client catches up or leaves.
/// Owned by the event loop's thread; never shared.
public protocol ClientConnection: AnyObject {
    /// Sends the status line and headers. Called at most once, before any body bytes.
    func sendHead(status: Int, headers: [(String, String)])

    /// Queues body bytes for the client; `flush()` pushes them out.
    func send(_ bytes: [UInt8])

    /// Writes to nginx what it takes now. Returns false once the client has gone away, after
    /// which further writes are discarded.
    func flush() -> Bool

    /// Bytes sent but not yet taken by nginx.
    var pendingBytes: Int { get }

    /// Ends the response: nginx completes it for the client once the pending bytes are out.
    /// Nothing may be sent afterwards.
    func end()

    /// Told when the client goes away or catches up with pending output; nil for nobody.
    var observer: (any ClientObserver)? { get set }
}

/// Hears what happens on a client connection while its request is served.
public protocol ClientObserver: AnyObject {
    /// nginx closed the connection: the client went away. Told at most once.
    func clientDidLeave()

    /// Everything pending has been written to nginx.
    func clientDidCatchUp()
}
