/// A latch: `wait` returns once `complete` has been called. Fork-safe like `Monitor` (pthread
/// primitives only), so the client library may use it.
public final class Completion: @unchecked Sendable {
    private let monitor = Monitor()
    /// Under `monitor`.
    private var done = false

    public init() {}

    public func complete() {
        monitor.withLock {
            done = true
            monitor.broadcast()
        }
    }

    public func wait() {
        monitor.withLock {
            while !done { monitor.wait() }
        }
    }

    /// Waits at most until `deadline` (CLOCK_MONOTONIC ns); returns whether it completed.
    public func wait(untilNanos deadline: UInt64) -> Bool {
        monitor.withLock {
            while !done {
                if !monitor.wait(untilNanos: deadline) { break }
            }
            return done
        }
    }
}
