import CTetherLinux
import Glibc
import Synchronization
@testable import TetherDevice
import TetherSys
import Testing

/// The software device's threads run in `SCHED_IDLE`: a slice must not wait for the groups a
/// device thread claimed and then could not run because a busy thread took its CPU.
@Suite(.serialized) struct WorkerPoolTailTests {
    static let twoCPUs = sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2

    @Test("a slice whose device thread is preempted mid-chunk by a busy thread on its CPU ends at once, not when the kernel next runs that thread",
          .enabled(if: twoCPUs, "one CPU: the pool's threads share it; skipped"))
    func starvedChunkIsLent() throws {
        let pool = WorkerPool(threads: 2, inlineGroups: 0)
        defer { pool.stop() }
        var tails: [UInt64] = []
        // A device thread lands on the busy thread's CPU in about half the rounds (placement is
        // the kernel's): up to 48 rounds for 16 tails (7 of 16 rounds once, beside other suites).
        var rounds = 0
        while rounds < 48 && tails.count < 16 {
            rounds += 1
            if let nanos = Self.slicePreemptedMidChunk(pool) { tails.append(nanos) }
        }
        #expect(tails.count >= 8, "a group ran on the busy thread's CPU in only \(tails.count) of \(rounds) rounds: too little was tested")
        // Without the loan the preempted device thread runs again only when the kernel moves it or
        // gives its SCHED_IDLE class a turn: most tails end within 0.1 ms here, but some take
        // 2–3 ms (in 2 of 3 runs of 8 rounds). Lent, it ends its chunk (at most 8 groups of 1 µs)
        // 20 µs after the tail began: every tail 0.05–0.4 ms here, with or without two other busy
        // processes.
        #expect(!tails.isEmpty && tails.max()! < 1_500_000, "tails took \(tails.sorted().map { $0 / 1000 }) µs")
    }

    /// One slice of 256 groups of 1 µs on `pool`, during which a busy thread, pinned to the first
    /// CPU this process may use, wakes there the moment a device thread is inside a group on that
    /// CPU (an ordinary thread waking preempts a SCHED_IDLE one at once). Returns how long the
    /// slice's tail took (from the moment a device thread left it with every group claimed to its
    /// end), or nil when no group ran on that CPU within 100 ms or the slice had no tail.
    static func slicePreemptedMidChunk(_ pool: WorkerPool) -> UInt64? {
        let hogCPU = Atomic<Int32>(-1)
        let wake = WakeCounter()
        let stop = Atomic<Bool>(false)
        let hogEnded = Completion()
        startThread(name: "test-hog") {
            _ = tether_pin_current_thread(0)
            hogCPU.store(tether_current_cpu(), ordering: .releasing)
            wake.sleep(whileValueIs: 0)
            while !stop.load(ordering: .relaxed) {}
            hogEnded.complete()
        }
        while hogCPU.load(ordering: .acquiring) < 0 { sched_yield() }
        let cpu = hogCPU.load(ordering: .acquiring)
        let triggeredAt = Atomic<UInt64>(0)
        let tail = Atomic<UInt64>(0)
        // Started and finished as the scheduler's worker does, in the control plane's real-time
        // class (an ordinary thread could itself wait behind the busy one).
        let waiter = startJoinableThread(name: "test-finish") {
            enterControlPlane()
            let job = pool.start(base: 0, end: 256, shouldStop: { false }) { _ in
                if tether_current_cpu() == cpu {
                    if triggeredAt.load(ordering: .relaxed) == 0 {
                        triggeredAt.store(monotonicNanos(), ordering: .relaxed)
                        wake.advance()
                    }
                } else {
                    // The other device thread waits (bounded) for the first to be inside a group,
                    // so that it does not take every group first on a machine busy with other tests.
                    let limit = monotonicNanos() + 100_000_000
                    while triggeredAt.load(ordering: .relaxed) == 0 && monotonicNanos() < limit {}
                }
                let until = monotonicNanos() + 1_000
                while monotonicNanos() < until {}
            }
            _ = pool.finish(job)
            let end = monotonicNanos()
            if let since = pool.tailSince(job) { tail.store(end - since, ordering: .relaxed) }
        }
        pthread_join(waiter, nil)
        stop.store(true, ordering: .relaxed)
        wake.advance()
        #expect(hogEnded.wait(untilNanos: monotonicNanos() + 10_000_000_000))
        return triggeredAt.load(ordering: .relaxed) == 0 || tail.load(ordering: .relaxed) == 0 ? nil : tail.load(ordering: .relaxed)
    }
}
