import CTetherLinux
import Glibc
import Synchronization
import TetherCore
import TetherSys

/// The native Swift device: built-in kernels' twins run on every core, one workgroup at a time,
/// checking the control word between workgroups. Device memory *is* the mapping, so importing is
/// free and `deviceBase` is the host address.
///
/// Its worker threads run at the device-work nice value (below the daemon's control plane), like
/// a GPU's execution units would not compete with the CPU that manages them.
public final class SoftwareBackend: ComputeBackend, Sendable {
    public let device: DeviceDescription
    let pool: WorkerPool

    public init(workers: Int? = nil) {
        device = Self.description(workers: workers)
        pool = WorkerPool(threads: Self.threadCount(workers))
    }

    /// The device a backend with `workers` threads (default: one per core) would be, without
    /// starting it (for `tether devices`).
    public static func description(workers: Int? = nil) -> DeviceDescription {
        let n = threadCount(workers)
        return DeviceDescription(
            name: "Tether software device (\(n) thread\(n == 1 ? "" : "s"))", backend: .software, type: "software",
            driver: "tether-swift", apiVersion: "-", vendorID: 0, deviceID: 0,
            externalMemoryHost: true, bufferDeviceAddress: true, timelineSemaphore: true, renderNode: nil)
    }

    /// One per CPU the daemon may run on: under a cpuset or `taskset`, more would only take
    /// turns on the same CPUs.
    private static func threadCount(_ workers: Int?) -> Int {
        max(1, workers ?? Int(tether_allowed_cpu_count()))
    }

    deinit { pool.stop() }

    public func importMemory(base: UnsafeMutableRawPointer, size: Int) throws(TetherError) -> any ImportedMemory {
        SoftwareMemory(deviceBase: UInt64(UInt(bitPattern: base)))
    }

    /// Two: the device threads go from one slice to the next while the scheduler's worker wakes
    /// up and accounts (a futex wake-up here costs tens of µs; a stopped slice is skipped at once).
    public var sliceDepth: Int { 2 }

    public var callerSliceGroups: Int { pool.inlineGroups }

    /// Its small slices run on the calling thread itself (`callerSliceGroups`), so the submitter
    /// takes their whole cost: `Scheduler.maxNanosOnSubmitter`.
    public var submitterSliceNanos: Double { Scheduler.maxNanosOnSubmitter }

    public func makeContext(program: KernelProgram) throws(TetherError) -> any ThreadContext {
        guard case .builtin(let kernel) = program else {
            throw TetherError(.unsupported, "custom SPIR-V kernels need a Vulkan backend; this daemon runs the software backend")
        }
        return SoftwareThreadContext(kernel: kernel, pool: pool)
    }
}

final class SoftwareMemory: ImportedMemory {
    let deviceBase: UInt64
    init(deviceBase: UInt64) { self.deviceBase = deviceBase }
}

/// Persistent device threads (one per core) that run slices' workgroups, one slice after another.
///
/// Workgroups are claimed in small chunks from an atomic counter (no lock), and the control word
/// is checked before every group, so a kill waits for at most one group per thread. Slices queue
/// in start order: a device thread that finds nothing left to claim in one slice goes on to the
/// next without waiting for the caller, which accounts the finished slice meanwhile. The caller —
/// the scheduler's worker, part of the control plane — hands slices over and waits: device work
/// runs on these threads, at the device-work priority, and the worker never holds a lock the
/// control plane needs while starved of CPU at a low priority. The one exception is a slice known
/// to be tiny that someone waits for (`runInline`): the worker or the event loop runs it itself,
/// holding no lock.
final class WorkerPool: @unchecked Sendable {
    /// One group: a tiny thread's whole grid, and every thread's first (probe) slice.
    static let defaultInlineGroups = 1

    final class Job: @unchecked Sendable {
        let run: (UInt32) -> Void
        let shouldStop: () -> Bool
        let end: UInt32
        let next: Atomic<UInt32>
        /// Groups claimed at once: small groups (256 saxpy elements take ~0.1 µs) would otherwise
        /// spend their time bouncing the counter's cache line between cores.
        let chunk: UInt32
        /// Device threads inside `work()`, and those of them lent a higher priority to end it
        /// (both protected by the pool's monitor).
        var inside: [pid_t] = []
        var lent: [pid_t] = []
        /// When a device thread first left the slice while others were still inside it (under
        /// the pool's monitor): from then on only its tail runs (`finish`).
        var tailSince: UInt64?
        /// Run by its caller (`runInline`), not by the device threads, which never claim it.
        var runsInline = false
        var active: Int { inside.count }
        /// Time the device threads spent inside `work()`, summed over them.
        var busyNanos: UInt64 = 0
        init(base: UInt32, end: UInt32, threads: Int, shouldStop: @escaping () -> Bool, run: @escaping (UInt32) -> Void) {
            self.run = run
            self.shouldStop = shouldStop
            self.end = end
            next = Atomic(base)
            chunk = max(1, min(64, (end - base) / UInt32(threads * 16)))
        }
        /// Every group is claimed, or the slice was told to stop.
        var exhausted: Bool { next.load(ordering: .relaxed) >= end || shouldStop() }
        func work() {
            while !shouldStop() {
                let first = next.add(chunk, ordering: .relaxed).oldValue
                if first >= end { return }
                var g = first
                let last = min(end, first + chunk)
                while g < last && !shouldStop() {
                    run(g)
                    g += 1
                }
            }
        }
    }

    /// Protects the jobs and their `inside` lists. Only the control plane waits on its condition
    /// (for slices to end); device threads sleep on `newWork`, so waking them never blocks.
    private let monitor = Monitor()
    /// Started slices that are not finished, in start order.
    private var jobs: [Job] = []
    /// Moves when a slice starts (or the pool stops). A device thread with nothing to do spins on
    /// it briefly, because the next slice of a running thread usually follows within
    /// microseconds and a futex sleep + wake-up costs tens of them per slice.
    private let newWork = WakeCounter()
    static let spinNanos: UInt64 = 30_000
    private var stopped = false
    /// Slices run by their caller so far (`runInline`), under `monitor`.
    private var inlineCount = 0
    /// Slices run by their caller so far (for tests).
    var slicesRunInline: Int { monitor.withLock { inlineCount } }
    let threads: Int
    /// Slices of at most this many groups may run on their caller (`runInline`); 0 never.
    let inlineGroups: Int

    init(threads: Int, inlineGroups: Int = WorkerPool.defaultInlineGroups) {
        self.threads = max(1, threads)
        self.inlineGroups = max(0, inlineGroups)
        for i in 0..<self.threads {
            startThread(name: "tether-sw\(i)") { [self] in deviceThreadLoop() }
        }
    }

    func stop() {
        monitor.withLock { stopped = true }
        newWork.advance()
    }

    /// Wakes a caller of `finish` to look at the control word again (after a kill or yield).
    func interrupt() {
        monitor.withLock { monitor.broadcast() }
    }

    /// Queues `run(group)` for every group in `[base, end)`; the device threads take it up once
    /// the slices before it have nothing left to claim.
    func start(base: UInt32, end: UInt32, shouldStop: @escaping () -> Bool, _ run: @escaping (UInt32) -> Void) -> Job {
        let job = Job(base: base, end: end, threads: threads, shouldStop: shouldStop, run: run)
        monitor.withLock { jobs.append(job) }
        newWork.advance()
        return job
    }

    /// Runs a small slice (at most `inlineGroups` groups) on the calling thread — the scheduler's
    /// worker, or the event loop that submits a `run`; false (nothing run) when it is larger or
    /// the pool is stopped.
    ///
    /// Why: handing a tiny slice to the device threads costs two wake-ups (a device thread, then
    /// the worker waiting for it), tens of µs each on this VM, for a few µs of work; on a 2-core
    /// machine whose other core a client spins on, a sleeping device thread may not even find a
    /// core. Bounded: at most `inlineGroups` groups, and the scheduler asks only for a slice
    /// known to take at most `Scheduler.maxNanosOnSubmitter` (so it stays in the caller's
    /// real-time class: leaving it would cost two `sched_setscheduler` calls, ~20 % of a tiny
    /// `run`'s time in the daemon on a VM; a slice of unknown cost, which could be a whole loop
    /// cap's worth, goes to the device threads). It may run beside other
    /// slices in the pool (whose threads skip an inline job); its time is charged to its own
    /// thread like theirs. `register` is called (with the job) before it runs, so a kill can find
    /// the job and wait for it (`waitStopped`).
    func runInline(_ job: Job, register: (Job) -> Void) -> Bool {
        guard job.end - job.next.load(ordering: .relaxed) <= UInt32(inlineGroups) else { return false }
        let tid = DeviceThreads.currentID
        let claimed: Bool = monitor.withLock {
            guard !stopped else { return false }
            job.runsInline = true
            inlineCount += 1
            job.inside.append(tid)
            jobs.append(job)
            return true
        }
        guard claimed else { return false }
        register(job)
        let entered = monotonicNanos()
        job.work()
        let busy = monotonicNanos() - entered
        monitor.withLock {
            // Charged like a device thread's time in the pool: the job's share of the device.
            job.busyNanos &+= busy
            job.inside.removeAll { $0 == tid }
            job.lent.removeAll { $0 == tid }
            if job.active == 0 { monitor.broadcast() }
        }
        return true
    }

    /// Returns when every group of `job` is done, or as soon as its `shouldStop` holds and no
    /// device thread is inside one of its groups. Returns the job's device time: the time its
    /// device threads spent in it over their number — the end of one slice and the start of the
    /// next may run side by side, and each is charged only its share of the device.
    func finish(_ job: Job) -> UInt64 {
        monitor.withLock {
            while !(job.active == 0 && job.exhausted) {
                guard let since = job.tailSince else {
                    monitor.wait()
                    continue
                }
                let lendAt = since &+ Self.tailLendNanos, loanEnds = lendAt &+ Self.maxTailLoanNanos
                let now = monotonicNanos()
                if now < lendAt {
                    monitor.wait(untilNanos: lendAt)
                } else if now < loanEnds {
                    lendInside(job)
                    monitor.wait(untilNanos: loanEnds)
                } else {
                    endTailLoan(job)
                    monitor.wait()
                }
            }
            jobs.removeAll { $0 === job }
            return job.busyNanos / UInt64(threads)
        }
    }

    /// As `finish`, but leaves the job to be finished, and lends the device threads inside the
    /// job the control plane's priority until they leave it: otherwise a busy machine (a burst of
    /// process exits) would starve the very threads a kill waits for. Only those threads, only
    /// that long — priority inheritance — so no device thread runs other work at a real-time
    /// priority (a spinning real-time thread would starve the machine).
    func waitStopped(_ job: Job) {
        monitor.withLock {
            lendInside(job)
            waitUntilDone(job)
        }
    }

    /// Lends the device threads inside `job` the control plane's priority until they leave it
    /// (they demote themselves then). Under `monitor`.
    private func lendInside(_ job: Job) {
        for tid in job.inside where !job.lent.contains(tid) && DeviceThreads.lend(tid) {
            job.lent.append(tid)
        }
    }

    /// How long `finish` waits for a slice's tail — every group claimed, a device thread done
    /// with it and others still inside — before it lends those the control plane's priority
    /// until they leave the slice, for at most `maxTailLoanNanos` (priority inheritance, as
    /// `waitStopped`). Device threads run in `SCHED_IDLE`: one that shares its CPU with any busy
    /// process hardly runs, and the whole slice would wait for the groups it claimed until the
    /// kernel moves it (measured, software, 2 cores, a saxpy of 2^20 beside a process spinning
    /// on one CPU: 0.27 ms alone, 4–16 ms beside it; 0.55–3.9 ms with the loan, four runs of
    /// `tether bench load --floods cpu`). The wait first: a tail that ends on its own within it
    /// costs no system call. The waiter lends, not the device thread that left: that one may be
    /// starved itself.
    static let tailLendNanos: UInt64 = 20_000

    /// How long a tail's loan lasts at most. A group's cost is the client's to choose (a listwalk
    /// over a cycle, a mandelbrot view inside the set, memory rewritten after the scheduler
    /// measured its slices: up to ~64 groups of tens of ms each in a chunk), so the rest of a chunk
    /// is no bound in time; one quantum (`Scheduler`'s default 2 ms) is, and still covers the
    /// tails the loan is for (0.05–0.35 ms lent, `WorkerPoolTailTests`).
    static let maxTailLoanNanos: UInt64 = 2_000_000

    /// Takes a tail's loan back (`maxTailLoanNanos`): its threads end the slice in `SCHED_IDLE`
    /// again. A kill's loan (`waitStopped`: the slice is told to stop) stays. Under `monitor`.
    private func endTailLoan(_ job: Job) {
        guard !job.lent.isEmpty, !job.shouldStop() else { return }
        for tid in job.lent { DeviceThreads.demote(tid) }
        job.lent.removeAll()
    }

    /// When `job`'s tail began (`Job.tailSince`), for tests.
    func tailSince(_ job: Job) -> UInt64? { monitor.withLock { job.tailSince } }

    private func waitUntilDone(_ job: Job) {
        while !(job.active == 0 && job.exhausted) { monitor.wait() }
    }

    private func deviceThreadLoop() {
        DeviceThreads.demoteCurrentThread()
        let tid = DeviceThreads.currentID
        while true {
            let seen = newWork.value
            let found: Job?? = monitor.withLock {
                if stopped { return nil }
                guard let job = jobs.first(where: { !$0.runsInline && !$0.exhausted }) else { return .some(nil) }
                job.inside.append(tid)
                return job
            }
            guard let found else { return }
            if let job = found {
                let entered = monotonicNanos()
                job.work()
                let left = monotonicNanos()
                let wasLent: Bool = monitor.withLock {
                    job.busyNanos &+= left - entered
                    job.inside.removeAll { $0 == tid }
                    if job.active == 0 {
                        monitor.broadcast()
                    } else if job.tailSince == nil {
                        // The others still inside are the slice's tail: its waiter decides on a loan.
                        job.tailSince = left
                        monitor.broadcast()
                    }
                    guard let i = job.lent.firstIndex(of: tid) else { return false }
                    job.lent.remove(at: i)
                    return true
                }
                if wasLent { DeviceThreads.demoteCurrentThread() }
                continue
            }
            // Nothing to claim: spin briefly for the next slice, then sleep until one comes.
            let spinUntil = monotonicNanos() + Self.spinNanos
            while newWork.value == seen && monotonicNanos() < spinUntil {}
            newWork.sleep(whileValueIs: seen)
        }
    }
}

final class SoftwareThreadContext: ThreadContext, @unchecked Sendable {
    let kernel: BuiltinKernel
    let pool: WorkerPool
    let control: UnsafeMutablePointer<ControlBlock>

    init(kernel: BuiltinKernel, pool: WorkerPool) {
        self.kernel = kernel
        self.pool = pool
        control = .allocate(capacity: 1)
        control.initialize(to: ControlBlock())
    }

    deinit { control.deallocate() }

    func interrupt() { pool.interrupt() }

    /// Slices started and not finished, oldest first.
    private let pending = Mutex<[WorkerPool.Job]>([])

    func startSlice(_ slice: SliceLaunch) throws(TetherError) {
        let context = SoftwareKernelContext(args: slice.args, regions: slice.regions, control: control,
                                            groupTotal: slice.groupTotal, round: slice.round)
        let kernel = self.kernel
        let run: (UInt32) -> Void = { group in SoftwareKernels.runGroup(kernel, group: group, context: context) }
        let end = slice.groupBase + slice.groupCount
        if slice.mayRunOnCaller {
            let small = WorkerPool.Job(base: slice.groupBase, end: end, threads: 1, shouldStop: { context.shouldStop }, run: run)
            if pool.runInline(small, register: { job in pending.withLock { $0.append(job) } }) { return }
        }
        let job = pool.start(base: slice.groupBase, end: end, shouldStop: { context.shouldStop }, run)
        pending.withLock { $0.append(job) }
    }

    func finishSlice() -> UInt64? {
        guard let job = pending.withLock({ $0.first }) else { return nil }
        let nanos = pool.finish(job)
        pending.withLock { _ = $0.removeFirst() }
        return nanos
    }

    /// Slices of other threads ahead in the pool do not hold a killed one back: two device
    /// threads may run two slices at once, and the worker finishes them in start order.
    func waitUntilStopped() -> Bool {
        for job in pending.withLock({ $0 }) { pool.waitStopped(job) }
        return true
    }
}
