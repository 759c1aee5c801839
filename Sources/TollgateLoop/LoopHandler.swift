import CEventLoop

/// What a watched descriptor is ready for (or waited on for).
public struct LoopEvents: OptionSet, Sendable {
    public let rawValue: UInt32

    public init(rawValue: UInt32) {
        self.rawValue = rawValue
    }

    public static let readable = LoopEvents(rawValue: tg_loop_readable)
    public static let writable = LoopEvents(rawValue: tg_loop_writable)
    /// The peer closed its side of the connection (reported whether asked for or not with
    /// `error`; ask for it explicitly to hear of a half-close).
    public static let hangUp = LoopEvents(rawValue: tg_loop_hang_up)
    /// The connection failed or was closed by both sides; always reported.
    public static let error = LoopEvents(rawValue: tg_loop_error)
    /// For a listening socket shared by several loops: only one of them is woken per
    /// connection (EPOLLEXCLUSIVE), which spares the others a useless wake-up.
    public static let exclusive = LoopEvents(rawValue: tg_loop_exclusive)
}

/// Told by an `EventLoop` when a descriptor it watches is ready. Runs on the loop's thread and
/// must not block.
public protocol LoopHandler: AnyObject {
    func loopEvents(_ events: LoopEvents, on descriptor: Int32)
}

/// Runs work on an event loop's thread, handed in from any thread.
public protocol LoopExecutor: AnyObject, Sendable {
    func execute(_ work: @escaping @Sendable () -> Void)
}

/// An action an `EventLoop` runs once its deadline has passed; scheduled and cancelled through
/// the loop, on the loop's thread.
public final class LoopTimer {
    /// When the action runs; nil while the timer is not scheduled.
    public internal(set) var deadline: ContinuousClock.Instant?
    let action: () -> Void

    public init(_ action: @escaping () -> Void) {
        self.action = action
    }
}

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
