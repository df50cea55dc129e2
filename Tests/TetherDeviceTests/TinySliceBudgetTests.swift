@testable import TetherDevice
import Testing

/// The worker's share for tiny slices nobody waits for (`TinySliceBudget`), on a manual clock.
@Suite struct TinySliceBudgetTests {
    @Test("a flood that runs every slice the budget allows gets at most 5 % of the worker, after a 5 ms burst")
    func floodIsBoundedToItsShare() {
        var budget = TinySliceBudget()
        var now: UInt64 = 1_000_000_000, worked: UInt64 = 0
        // A slice of 19 µs every 10 µs for a simulated minute: far more than the share.
        let end = now + 60_000_000_000
        while now < end {
            if budget.allows(at: now) {
                budget.charge(19_000)
                worked += 19_000
            }
            now += 10_000
        }
        let bound = TinySliceBudget.capacityNanos + 60 * TinySliceBudget.refillPerSecondNanos + 19_000
        #expect(worked <= bound, "\(worked) ns worked, bound \(bound)")
        #expect(worked >= bound * 9 / 10, "the share is given, not withheld: \(worked) ns of \(bound)")
    }

    @Test("what a flood of one-group spins at the socket's shared rate needs is always allowed")
    func sharedRateFloodFits() {
        var budget = TinySliceBudget()
        var now: UInt64 = 5_000_000_000, refused = 0
        // 5,000 a second of 2 µs each, for ten simulated seconds.
        for _ in 0..<50_000 {
            if budget.allows(at: now) { budget.charge(2_000) } else { refused += 1 }
            now += 200_000
        }
        #expect(refused == 0)
    }

    @Test("slices that lie about their cost (50 ms each) still get at most 5 % of the worker: their debt is paid in full")
    func lyingSlicesAreBoundedToTheShare() {
        var budget = TinySliceBudget()
        var now: UInt64 = 1_000_000_000, worked: UInt64 = 0
        let slice: UInt64 = 50_000_000, end = now + 60_000_000_000
        // Each allowed slice holds the worker 50 ms; a refused one is asked again 10 µs later.
        while now < end {
            if budget.allows(at: now) {
                budget.charge(slice)
                worked += slice
                now += slice
            } else {
                now += 10_000
            }
        }
        let bound = TinySliceBudget.capacityNanos + 60 * TinySliceBudget.refillPerSecondNanos + slice
        #expect(worked <= bound, "\(worked) ns worked in a minute, bound \(bound)")
    }

    @Test("the refill does not lose time to rounding when the worker asks every few nanoseconds")
    func refillKeepsTheRemainder() {
        var budget = TinySliceBudget()
        var now: UInt64 = 1_000_000_000
        _ = budget.allows(at: now)
        budget.charge(TinySliceBudget.capacityNanos)
        #expect(budget.tokens == 0)
        // 20 µs in steps of 10 ns earn 1 µs at 50 ms a second.
        for _ in 0..<2_000 {
            now += 10
            _ = budget.allows(at: now)
        }
        #expect(budget.tokens == 1_000)
    }

    @Test("a deep debt is paid back at the refill rate, and after a long idle the bucket is full")
    func debtIsPaidBack() {
        var budget = TinySliceBudget()
        let now: UInt64 = 1_000_000_000
        let first = budget.allows(at: now)
        #expect(first)
        budget.charge(3_000_000_000)
        #expect(budget.tokens == Int64(TinySliceBudget.capacityNanos) - 3_000_000_000)
        // 2.995 s of debt at 50 ms a second takes 59.9 s.
        let early = budget.allows(at: now + 59_000_000_000)
        #expect(!early)
        let paid = budget.allows(at: now + 60_000_000_000)
        #expect(paid)
        var idle = TinySliceBudget()
        _ = idle.allows(at: now)
        idle.charge(UInt64.max)
        let afterIdle = idle.allows(at: now + 1_000_000_000_000)
        #expect(afterIdle)
        #expect(idle.tokens == Int64(TinySliceBudget.capacityNanos))
    }
}
