import Glibc
import Synchronization
import TetherSys
import Testing

@Suite struct WakeCounterTests {
    @Test("sleeping on a value that already moved returns at once")
    func movedValueReturnsAtOnce() {
        let counter = WakeCounter()
        let seen = counter.value
        counter.advance()
        #expect(counter.value == seen &+ 1)
        counter.sleep(whileValueIs: seen)  // would hang here if it slept
    }

    @Test("advance wakes a sleeper, and the sleeper sees the new value")
    func advanceWakesASleeper() {
        let counter = WakeCounter()
        let seen = counter.value
        let woke = Atomic<Bool>(false)
        let done = Monitor()
        startThread(name: "sleeper") {
            // Sleep may return early (a signal); loop as the pool does.
            while counter.value == seen { counter.sleep(whileValueIs: seen) }
            woke.store(true, ordering: .releasing)
            done.withLock { done.broadcast() }
        }
        usleep(10_000)  // let it reach the futex; if it has not, sleep returns at once anyway
        let early = woke.load(ordering: .acquiring)
        #expect(!early)
        counter.advance()
        let deadline = monotonicNanos() + 5_000_000_000
        done.withLock {
            while !woke.load(ordering: .acquiring) && monotonicNanos() < deadline { done.wait(untilNanos: deadline) }
        }
        let late = woke.load(ordering: .acquiring)
        #expect(late)
    }
}
