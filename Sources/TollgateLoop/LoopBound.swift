/// A value that belongs to one loop's thread, carried through another thread only to be used
/// back on that loop (a metering answer's reply, a connection's owner).
///
/// `@unchecked Sendable`: whoever wraps a value promises to unwrap it on its loop's thread only.
public struct LoopBound<Value>: @unchecked Sendable {
    public let value: Value

    public init(_ value: Value) {
        self.value = value
    }
}
