/// How much of the scheduler's worker known-tiny slices nobody waits for yet may take
/// (`DeviceThread.tinySlicesOnWorker`), as a token bucket of time: it fills by
/// `refillPerSecondNanos` each second up to `capacityNanos`; such a slice runs on the worker only
/// while the bucket holds some, and the time the worker then spent on it is taken out in full
/// (the bucket goes into debt by that slice, up to `maxDebtNanos`). Beyond that they go to the
/// device's threads, as every slice nobody waits for did before.
///
/// Why a bound: the worker runs in the real-time class, above every client. Without one, a client
/// that floods spawns of work measured just under `Scheduler.maxNanosOnSubmitter` (20 µs) through
/// its ring (100,000 a second while the daemon is shared), or whose measured cost lies (cold
/// pages), would keep the worker — and the CPU it runs on — busy at a real-time priority, where
/// the device's threads (`SCHED_IDLE`) would have yielded to everyone. 5 % of a CPU is 25 times
/// what the flood it exists for costs: one-group spins at the socket's shared rate (5,000 a
/// second) take ~1–2 µs each on the worker.
///
/// The debt is not forgiven: a lying slice that held the worker L ns keeps the next ones off it
/// for L / 5 %, so over any window the worker gives such slices at most `capacityNanos` plus 5 %
/// of the window plus one slice (review 11: with the debt floored at one capacity, a slice of
/// 50 ms every ~150 ms took a third of a CPU).
///
/// Touched under the scheduler's lock only.
struct TinySliceBudget {
    static let refillPerSecondNanos: UInt64 = 50_000_000
    static let capacityNanos: UInt64 = 5_000_000
    /// The deepest debt (ns): a slice held the worker this long is paid back in 100 s; one that
    /// held it longer than this is a hung worker, beyond what a budget can bound.
    static let maxDebtNanos: UInt64 = 5_000_000_000
    /// Elapsed nanoseconds per nanosecond earned: 20 at 50 ms a second.
    static let nanosPerToken: UInt64 = 1_000_000_000 / refillPerSecondNanos

    /// Nanoseconds in the bucket (negative: debt).
    private(set) var tokens = Int64(capacityNanos)
    /// Up to where the elapsed time has been turned into tokens (monotonic ns).
    private var lastRefill: UInt64?

    /// Whether a slice may run on the worker at `now` (monotonic ns).
    mutating func allows(at now: UInt64) -> Bool {
        guard let last = lastRefill else {
            lastRefill = now
            return tokens > 0
        }
        if now > last {
            // Whole nanoseconds earned; the remainder of the elapsed time stays for the next
            // call (moving `lastRefill` to `now` would drop up to 19 ns a call).
            let room = UInt64(Int64(Self.capacityNanos) - tokens)  // tokens >= -maxDebtNanos
            let earned = (now - last) / Self.nanosPerToken
            if earned >= room {
                tokens = Int64(Self.capacityNanos)
                lastRefill = now
            } else {
                tokens += Int64(earned)
                lastRefill = last + earned * Self.nanosPerToken
            }
        }
        return tokens > 0
    }

    /// Takes out what a slice held the worker (ns), in full up to `maxDebtNanos` of debt.
    mutating func charge(_ nanos: UInt64) {
        tokens = max(-Int64(Self.maxDebtNanos), tokens - Int64(min(nanos, Self.maxDebtNanos)))
    }
}
