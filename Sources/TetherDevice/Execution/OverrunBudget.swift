/// How long one user's `run`s may hold a submitter — the daemon's event loop, whose other clients
/// wait meanwhile — past their bound (`Scheduler.submit(_:runHere:)`), as a leaky bucket of time:
/// every run that held it longer than `Scheduler.submitterOverrunNanos` adds what it held, the
/// bucket drains by `drainPerSecondNanos` each second, and once it holds more than `burstNanos`
/// the user's runs go to the scheduler's worker for `denialNanos`.
///
/// Why time and not a count: on lavapipe an honest client's tiny runs overran 4–11 times a second
/// here (its device threads kept off the CPU by the machine, 0.6–5.7 ms each), and the rule this
/// replaces — two overruns within a second — sent its runs to the worker, 2–4× slower, for most
/// of every second (`tether bench dispatch`: ring p50 130–150 µs in those seconds, ~35 µs outside
/// them). With the submitter's wait bounded (`ComputeBackend.submitterWaitNanos`, 2 ms on Vulkan),
/// such overruns add well under the drain. A client whose work lies about its cost (cold pages,
/// data-dependent work) holds the event loop past its bound for at most `burstNanos`, then
/// `drainPerSecondNanos` a second: 2 % of the event loop.
public struct OverrunBudget: Sendable {
    public static let drainPerSecondNanos: UInt64 = 20_000_000
    public static let burstNanos: UInt64 = 10_000_000
    public static let denialNanos: UInt64 = 1_000_000_000

    private var heldNanos: UInt64 = 0
    private var lastOverrun: UInt64 = 0
    /// Until when (monotonic ns) this user's runs go to the worker.
    public private(set) var deniedUntil: UInt64 = 0

    public init() {}

    /// Whether a run of this user may be held by the submitter at `now`.
    public func allows(at now: UInt64) -> Bool { now >= deniedUntil }

    /// Records a run that overran, holding the submitter `nanos` in all, at `now`. Returns true
    /// when this denies the user's runs (until `deniedUntil`).
    public mutating func overran(nanos: UInt64, at now: UInt64) -> Bool {
        let drained = (now &- lastOverrun) / (1_000_000_000 / Self.drainPerSecondNanos)
        heldNanos = (heldNanos > drained ? heldNanos - drained : 0) &+ nanos
        lastOverrun = now
        guard heldNanos > Self.burstNanos else { return false }
        // Kept, not emptied: the denial drains it by a second's worth, so a client that goes on
        // overrunning after it is denied again `drainPerSecondNanos` later, not a burst later.
        deniedUntil = now &+ Self.denialNanos
        return true
    }
}
