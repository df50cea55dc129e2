@testable import TetherDevice
import Testing

/// The leaky bucket of time a user's runs may hold the daemon's event loop past their bound.
@Suite struct OverrunBudgetTests {
    static let ms: UInt64 = 1_000_000

    @Test("overruns at the rate an honest lavapipe client saw here (10 a second of up to 2 ms) never deny its runs")
    func honestRateIsNeverDenied() {
        var budget = OverrunBudget()
        var now: UInt64 = 5_000 * Self.ms
        for _ in 0..<600 {  // a minute
            let denied = budget.overran(nanos: 2 * Self.ms, at: now)
            #expect(!denied)
            now += 100 * Self.ms
        }
        #expect(budget.allows(at: now))
    }

    @Test("runs that overrun back to back are denied once they held the event loop past the burst, for a second, then allowed again")
    func backToBackOverrunsAreDenied() {
        var budget = OverrunBudget()
        var now: UInt64 = 5_000 * Self.ms
        var held: UInt64 = 0
        var denied = false
        for _ in 0..<100 where !denied {
            held += 2 * Self.ms
            denied = budget.overran(nanos: 2 * Self.ms, at: now)
            if !denied { now += 3 * Self.ms }
        }
        #expect(denied)
        #expect(held > OverrunBudget.burstNanos && held <= OverrunBudget.burstNanos + OverrunBudget.burstNanos / 2,
                "denied after \(held / Self.ms) ms held")
        #expect(!budget.allows(at: now))
        #expect(!budget.allows(at: now + OverrunBudget.denialNanos - 1))
        #expect(budget.allows(at: now + OverrunBudget.denialNanos))
    }

    @Test("past the burst, a client that keeps overrunning holds the event loop for at most the drain rate: 2 % of it")
    func sustainedOverrunsAreBoundedByTheDrain() {
        var budget = OverrunBudget()
        var now: UInt64 = 5_000 * Self.ms
        var held: UInt64 = 0
        let end = now + 60_000 * Self.ms
        while now < end {
            if budget.allows(at: now) {
                _ = budget.overran(nanos: 2 * Self.ms, at: now)
                held += 2 * Self.ms
            }
            now += 2 * Self.ms
        }
        // 60 s at 20 ms a second, and one burst.
        #expect(held <= 60 * OverrunBudget.drainPerSecondNanos + OverrunBudget.burstNanos + 2 * Self.ms, "held \(held / Self.ms) ms in 60 s")
    }
}
