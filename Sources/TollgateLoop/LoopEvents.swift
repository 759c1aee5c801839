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
