import CTetherLinux
import Glibc
import Synchronization
@testable import TetherDevice
import TetherSys
import Testing

/// A slice's tail is lent the control plane's real-time class (`WorkerPool.tailLendNanos`), but a
/// group's cost is the client's to choose (a listwalk over a cycle, a mandelbrot view in the set,
/// memory rewritten after the scheduler measured it): the loan must not let one client's kernel
/// hold a CPU in `SCHED_FIFO` for as long as its chunk of groups takes.
@Suite(.serialized) struct WorkerPoolLoanBoundTests {
    @Test("a device thread lent a slice's tail does not stay in SCHED_FIFO for a whole chunk of expensive groups",
          .enabled(if: tether_may_enter_fifo(1), "this process may not enter SCHED_FIFO: nothing is lent; skipped"))
    func tailLoanIsBounded() throws {
        // A tail needs both device threads inside the slice at once; with other suites beside
        // this one a `SCHED_IDLE` thread may get no CPU until the other has claimed every chunk.
        // Then nothing was lent and nothing is shown: try again, three times at most.
        for _ in 0..<3 {
            guard let fifo = try Self.runExpensiveTail() else { continue }
            // Bounded by `maxTailLoanNanos` (2 ms) plus the group running when it ends.
            #expect(fifo <= 4 * Self.groupNanos, "a device thread ran \(fifo / 1_000_000) ms of a client's groups in SCHED_FIFO")
            return
        }
        Issue.record("in three tries no device thread left the slice while the other was inside: nothing was lent, too little was tested")
    }

    static let groupNanos: UInt64 = 3_000_000

    /// One slice whose last chunk is expensive; returns the ns of its groups run in `SCHED_FIFO`,
    /// or nil when the slice had no tail.
    static func runExpensiveTail() throws -> UInt64? {
        let pool = WorkerPool(threads: 2, inlineGroups: 0)
        defer { pool.stop() }
        // 2,048 groups over 2 threads: chunks of 64. The last chunk's groups take 3 ms each (192 ms
        // together), every other group 2 µs (~2 ms together, so that both threads are inside the
        // slice): the thread that claimed the last chunk is the tail, lent after 20 µs.
        let end: UInt32 = 2_048, expensiveFrom: UInt32 = end - 64, groupNanos = Self.groupNanos
        let fifoNanos = Atomic<UInt64>(0)
        let expensiveRun = Atomic<Int>(0)
        let hadTail = Atomic<Bool>(false)
        let waiter = startJoinableThread(name: "test-finish") {
            enterControlPlane()
            let job = pool.start(base: 0, end: end, shouldStop: { false }) { group in
                guard group >= expensiveFrom else {
                    let until = monotonicNanos() + 2_000
                    while monotonicNanos() < until {}
                    return
                }
                let realTime = sched_getscheduler(0) == SCHED_FIFO
                let until = monotonicNanos() + groupNanos
                while monotonicNanos() < until {}
                expensiveRun.add(1, ordering: .relaxed)
                if realTime { fifoNanos.add(groupNanos, ordering: .relaxed) }
            }
            _ = pool.finish(job)
            hadTail.store(pool.tailSince(job) != nil, ordering: .relaxed)
        }
        pthread_join(waiter, nil)
        #expect(expensiveRun.load(ordering: .relaxed) == 64)
        return hadTail.load(ordering: .relaxed) ? fifoNanos.load(ordering: .relaxed) : nil
    }
}
