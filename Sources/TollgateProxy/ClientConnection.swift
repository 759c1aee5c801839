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

    /// Ends the response: nginx completes it for the client, so what follows (settling the
    /// request in the database) no longer delays the client. Nothing may be sent afterwards.
    func end()
}

extension ClientConnection {
    /// Hands the connection over to an event loop, or nil when this transport cannot. After a
    /// successful detach the original connection must not be used again.
    public func detach() -> (any DetachedClient)? {
        (self as? any DetachableClient)?.detachFromThread()
    }
}

/// A transport whose connection can leave its request thread for a `StreamLoop`.
public protocol DetachableClient: ClientConnection {
    func detachFromThread() -> (any DetachedClient)?
}

/// A client connection taken off its request thread and driven by an event loop. Its writes
/// never block: what nginx does not take at once stays pending until `descriptor` turns
/// writable and the loop calls `writePending`. `flush` returns false once the client is gone.
///
/// Owned by the loop's thread after the hand-over; never shared.
public protocol DetachedClient: ClientConnection {
    /// The connection to nginx: writable when pending bytes may go, readable or hung up when
    /// the client went away.
    var descriptor: Int32 { get }

    /// Bytes accepted by `send` that nginx has not taken yet.
    var pendingBytes: Int { get }

    /// Writes what nginx takes now, without blocking. False once the client is gone.
    func writePending() -> Bool

    /// Reads and discards what nginx sent after the request (such as the last, empty record of
    /// its body), without blocking. False once nginx closed the connection: the client left.
    func discardInput() -> Bool

    /// Closes the connection, whatever is still pending.
    func close()
}
