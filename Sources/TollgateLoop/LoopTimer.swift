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
