/// How much of the scheduler's worker known-tiny slices nobody waits for yet may take
/// (`DeviceThread.tinySlicesOnWorker`), as a token bucket of time: it fills by
/// `refillPerSecondNanos` each second up to `capacityNanos`; such a slice runs on the worker only
/// while the bucket holds some, and the time the worker then spent on it is taken out (the bucket
/// may go into debt by one slice). Beyond that they go to the device's threads, as every slice
/// nobody waits for did before.
///
/// Why a bound: the worker runs in the real-time class, above every client. Without one, a client
/// that floods spawns of work measured just under `Scheduler.maxNanosOnSubmitter` (20 µs) through
/// its ring (100,000 a second while the daemon is shared), or whose measured cost lies (cold
/// pages), would keep the worker — and the CPU it runs on — busy at a real-time priority, where
/// the device's threads (`SCHED_IDLE`) would have yielded to everyone. 5 % of a CPU is 25 times
/// what the flood it exists for costs: one-group spins at the socket's shared rate (5,000 a
/// second) take ~1–2 µs each on the worker.
///
/// Touched under the scheduler's lock only.
struct TinySliceBudget {
    static let refillPerSecondNanos: UInt64 = 50_000_000
    static let capacityNanos: UInt64 = 5_000_000

    /// Nanoseconds in the bucket (negative: debt).
    private(set) var tokens = Int64(capacityNanos)
    private var lastRefill: UInt64?

    /// Whether a slice may run on the worker at `now` (monotonic ns).
    mutating func allows(at now: UInt64) -> Bool {
        if let last = lastRefill, now > last {
            // Whole nanoseconds earned: 1 per 20 elapsed at 50 ms a second.
            let earned = (now - last) / (1_000_000_000 / Self.refillPerSecondNanos)
            tokens = min(Int64(Self.capacityNanos), tokens &+ Int64(min(earned, Self.capacityNanos)))
        }
        lastRefill = max(lastRefill ?? now, now)
        return tokens > 0
    }

    /// Takes out what a slice held the worker (ns); the debt is at most `capacityNanos`.
    mutating func charge(_ nanos: UInt64) {
        tokens = max(-Int64(Self.capacityNanos), tokens &- Int64(min(nanos, 2 * Self.capacityNanos)))
    }
}
