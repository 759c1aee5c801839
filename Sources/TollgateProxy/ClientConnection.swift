/// The client side of one request, as the proxy service sees it. The FastCGI transport
/// implements it over a libfcgi request; tests implement it in memory.
///
/// Owned by the one thread that serves the request; never shared.
public protocol ClientConnection: AnyObject {
    /// Sends the status line and headers. Called at most once, before any body bytes.
    func sendHead(status: Int, headers: [(String, String)])

    /// Buffers body bytes for the client; `flush()` pushes them out.
    func send(_ bytes: [UInt8])

    /// Writes everything buffered to nginx now. Blocks until written. Returns false once the
    /// client has gone away, after which further writes are discarded.
    func flush() -> Bool

    /// A descriptor that turns readable or hung up when the client goes away while Tollgate
    /// waits on the upstream, or -1 when the transport cannot tell.
    var disconnectDescriptor: Int32 { get }
}
