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
        let cores = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let count = max(1, workers ?? cores)
        pool = WorkerPool(threads: count)
        device = DeviceDescription(
            name: "Tether software device (\(count) threads)", backend: .software, type: "software",
            driver: "tether-swift", apiVersion: "-", vendorID: 0, deviceID: 0,
            externalMemoryHost: true, bufferDeviceAddress: true, timelineSemaphore: true, renderNode: nil)
    }

    deinit { pool.stop() }

    public func importMemory(base: UnsafeMutableRawPointer, size: Int) throws(TetherError) -> any ImportedMemory {
        SoftwareMemory(deviceBase: UInt64(UInt(bitPattern: base)))
    }

    /// The pool's hand-off costs microseconds: slices run to their end in `startSlice`.
    public var sliceDepth: Int { 1 }

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

/// Persistent device threads (one per core) that run one slice's workgroups at a time.
///
/// Workgroups are claimed in small chunks from an atomic counter (no lock), and the control word
/// is checked before every group, so a kill waits for at most one group per thread. The caller — the scheduler's worker, part of the
/// control plane — only hands the slice over and waits: device work runs on these threads alone,
/// at the device-work priority, and the worker never holds a lock the control plane needs while
/// starved of CPU at a low priority.
final class WorkerPool: @unchecked Sendable {
    final class Job: @unchecked Sendable {
        let run: (UInt32) -> Void
        let shouldStop: () -> Bool
        let end: UInt32
        let next: Atomic<UInt32>
        /// Groups claimed at once: small groups (256 saxpy elements take ~0.1 µs) would otherwise
        /// spend their time bouncing the counter's cache line between cores.
        let chunk: UInt32
        init(base: UInt32, end: UInt32, threads: Int, shouldStop: @escaping () -> Bool, run: @escaping (UInt32) -> Void) {
            self.run = run
            self.shouldStop = shouldStop
            self.end = end
            next = Atomic(base)
            chunk = max(1, min(64, (end - base) / UInt32(threads * 16)))
        }
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

    private let monitor = Monitor()
    private var job: Job?
    private var generation = 0
    /// `generation`, readable without the lock: a device thread that just finished a slice spins
    /// on it briefly, because the next slice of a running thread usually follows within
    /// microseconds and a futex sleep + wake-up costs tens of them per slice.
    private let published = Atomic<Int>(0)
    static let spinNanos: UInt64 = 30_000
    /// Device threads inside `Job.work()` now. A slice ends when its groups are claimed (or it
    /// was told to stop) and none is active: a thread still waking up does not hold a kill back.
    private var active = 0
    private var stopped = false
    let threads: Int

    init(threads: Int) {
        self.threads = max(1, threads)
        for i in 0..<self.threads {
            startThread(name: "tether-sw\(i)") { [self] in deviceThreadLoop() }
        }
    }

    func stop() {
        monitor.withLock {
            stopped = true
            monitor.broadcast()
        }
    }

    /// Wakes the caller of `run` to look at the control word again (after a kill or yield).
    func interrupt() {
        monitor.withLock { monitor.broadcast() }
    }

    /// Runs `run(group)` for every group in `[base, end)` on the device threads and returns when
    /// all are done, or as soon as `shouldStop` holds and no device thread is inside a group.
    /// Calls must not overlap (one scheduler worker per pool).
    func run(base: UInt32, end: UInt32, shouldStop: @escaping () -> Bool, _ run: @escaping (UInt32) -> Void) {
        monitor.withLock {
            let job = Job(base: base, end: end, threads: threads, shouldStop: shouldStop, run: run)
            self.job = job
            generation += 1
            published.store(generation, ordering: .releasing)
            monitor.broadcast()
            while !(active == 0 && (job.next.load(ordering: .relaxed) >= end || shouldStop())) { monitor.wait() }
            self.job = nil
        }
    }

    private func deviceThreadLoop() {
        DeviceThreads.enter()
        var seen = 0
        while true {
            let spinUntil = monotonicNanos() + Self.spinNanos
            while published.load(ordering: .acquiring) == seen && monotonicNanos() < spinUntil {}
            let claimed: Job? = monitor.withLock {
                while !stopped && (generation == seen || self.job == nil) { monitor.wait() }
                seen = generation
                if stopped { return nil }
                active += 1
                return self.job
            }
            guard let claimed else { return }
            claimed.work()
            monitor.withLock {
                active -= 1
                if active == 0 { monitor.broadcast() }
            }
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

    func startSlice(_ slice: SliceLaunch) throws(TetherError) {
        let context = SoftwareKernelContext(args: slice.args, regions: slice.regions, control: control,
                                            groupTotal: slice.groupTotal, round: slice.round)
        let kernel = self.kernel
        pool.run(base: slice.groupBase, end: slice.groupBase + slice.groupCount,
                 shouldStop: { context.shouldStop }) { group in
            SoftwareKernels.runGroup(kernel, group: group, context: context)
        }
    }

    func finishSlice() {}
}
