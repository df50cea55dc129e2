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

    @Test("one slice that overran (a lying cost) leaves a bounded debt, paid back at the refill rate")
    func debtIsBounded() {
        var budget = TinySliceBudget()
        let now: UInt64 = 1_000_000_000
        let first = budget.allows(at: now)
        #expect(first)
        budget.charge(3_000_000_000)
        #expect(budget.tokens == -Int64(TinySliceBudget.capacityNanos))
        let inDebt = budget.allows(at: now + 100_000_000)
        #expect(!inDebt)
        // Debt and a slice's worth back: 2 × capacity at 50 ms a second is 200 ms.
        let paid = budget.allows(at: now + 200_000_001)
        #expect(paid)
    }
}
