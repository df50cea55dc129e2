/// A connection's request budget: a token bucket of `perSecond` requests a second, at most
/// `burst` at once. The event loop reads a request only with a token in hand; a connection out of
/// tokens is not read until the next one is due, so its requests wait in its socket and its client
/// blocks in `sendmsg` — the flood costs neither the daemon's control plane (which runs above
/// device work) nor the machine's CPU the time it would take to refuse it request by request.
///
/// Event loop only.
struct RequestBudget {
    let nanosPerToken: UInt64
    let burst: UInt64
    /// Nanoseconds of tokens a full bucket holds, `burst × nanosPerToken`, at most `UInt64.max`
    /// (the flags allow 2^40 a second at 1 a second: 2^40 × 10^9 does not fit).
    private let fullNanos: UInt64
    /// The time at which the bucket would be empty: `tokens = (now − emptyAt) / nanosPerToken`,
    /// capped at `burst` (one number instead of a count and a time).
    private var emptyAt: UInt64
    /// What the last request read cost, in nanoseconds of budget (`spend`'s rate), so that a
    /// refusal costs 64 of them at that rate.
    private var lastCost: UInt64

    init(perSecond: UInt64, burst: UInt64, now: UInt64) {
        nanosPerToken = max(1_000_000_000 / max(perSecond, 1), 1)
        self.burst = max(burst, 1)
        let (full, overflow) = self.burst.multipliedReportingOverflow(by: nanosPerToken)
        fullNanos = overflow ? .max : full
        lastCost = nanosPerToken
        emptyAt = Self.filledAt(now, fullNanos: fullNanos)
    }

    /// `emptyAt` of a full bucket at `now` (the monotonic clock starts at boot, so a bucket larger
    /// than the time since then holds what it earned since boot; `now − fullNanos` would wrap).
    private static func filledAt(_ now: UInt64, fullNanos: UInt64) -> UInt64 { now > fullNanos ? now - fullNanos : 0 }

    /// Whether a token is there now.
    func hasToken(now: UInt64) -> Bool { now >= nextToken() }

    /// Spends a token (taken after `hasToken` said there was one), or what `rate` requests a
    /// second would cost one (a slower rate: the bucket goes into debt for the difference).
    mutating func spend(now: UInt64, rate: UInt64? = nil) {
        // A bucket that filled up while idle holds `burst` tokens, no more.
        emptyAt = max(emptyAt, Self.filledAt(now, fullNanos: fullNanos))
        lastCost = max(nanosPerToken, rate.map { 1_000_000_000 / max($0, 1) } ?? 0)
        emptyAt &+= lastCost
    }

    /// Charges the request just read (`spend`) at the connection's own rate instead of the slower
    /// one it was read at: for a `ringDoorbell` rung for a submission, which the ring budget pays
    /// for at the shared rate. Charged twice, a ring client's doorbells beside a neighbour were
    /// read at `sharedRequestsPerSecond` and set its round trip (measured, lavapipe, `tether bench
    /// load --floods spawns` with `--max-shared-requests-per-second 1000`: dispatch p50 beside the
    /// flood 1,080 and 1,084 µs, 363 and 92 µs once excused; docs/performance.md).
    mutating func chargeOwnRate() {
        emptyAt &-= lastCost - nanosPerToken
        lastCost = nanosPerToken
    }

    /// Tokens a request refused for a limit (`resourceExhausted`) costs in all. A client that
    /// keeps asking past its quota is slowed to 1/64 of its request rate while it does, so that
    /// refusing it costs the daemon (and the flooder's own CPU, blocked in `sendmsg`) next to
    /// nothing; a client that stops asking gets its rate back within a fraction of a second.
    static let refusalCost: UInt64 = 64

    /// Charges a refused request the rest of `refusalCost` (its first token was spent when it was
    /// read), at the rate it was read at (a shared connection's: fair admission). The bucket may
    /// go into debt: no request is read until it is paid.
    mutating func chargeRefusal() {
        emptyAt &+= (Self.refusalCost - 1) * lastCost
    }

    /// When the next token is due.
    func nextToken() -> UInt64 { emptyAt &+ nanosPerToken }
}
