/// Told by an `EventLoop` when a descriptor it watches is ready. Runs on the loop's thread and
/// must not block.
public protocol LoopHandler: AnyObject {
    func loopEvents(_ events: LoopEvents, on descriptor: Int32)
}

/// Runs work on an event loop's thread, handed in from any thread.
public protocol LoopExecutor: AnyObject, Sendable {
    func execute(_ work: @escaping @Sendable () -> Void)
}
