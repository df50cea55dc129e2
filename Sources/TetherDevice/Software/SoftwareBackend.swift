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
        pool = WorkerPool(helpers: count - 1)
        device = DeviceDescription(
            name: "Tether software device (\(count) threads)", backend: .software, type: "software",
            driver: "tether-swift", apiVersion: "-", vendorID: 0, deviceID: 0,
            externalMemoryHost: true, bufferDeviceAddress: true, timelineSemaphore: true, renderNode: nil)
    }

    deinit { pool.stop() }

    public func importMemory(base: UnsafeMutableRawPointer, size: Int) throws(TetherError) -> any ImportedMemory {
        SoftwareMemory(deviceBase: UInt64(UInt(bitPattern: base)))
    }

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

/// Persistent helper threads that join the calling thread to run one slice's workgroups.
/// Workgroups are claimed one at a time from an atomic counter, so a kill waits for at most one
/// group per thread and claiming costs no lock.
final class WorkerPool: @unchecked Sendable {
    final class Job: @unchecked Sendable {
        let run: (UInt32) -> Void
        let shouldStop: () -> Bool
        let end: UInt32
        let next: Atomic<UInt32>
        init(base: UInt32, end: UInt32, shouldStop: @escaping () -> Bool, run: @escaping (UInt32) -> Void) {
            self.run = run
            self.shouldStop = shouldStop
            self.end = end
            next = Atomic(base)
        }
        func work() {
            while !shouldStop() {
                let g = next.add(1, ordering: .relaxed).oldValue
                if g >= end { return }
                run(g)
            }
        }
    }

    private let monitor = Monitor()
    private var job: Job?
    private var busy = 0
    private var generation = 0
    private var stopped = false
    let helpers: Int

    init(helpers: Int) {
        self.helpers = helpers
        for i in 0..<helpers {
            startThread(name: "tether-sw\(i)") { [self] in helperLoop() }
        }
    }

    func stop() {
        monitor.withLock {
            stopped = true
            monitor.broadcast()
        }
    }

    /// Runs `run(group)` for every group in `[base, end)` on the caller and the helpers; returns
    /// when all claimed groups finished. Calls must not overlap (one scheduler worker per pool).
    func run(base: UInt32, end: UInt32, shouldStop: @escaping () -> Bool, _ run: @escaping (UInt32) -> Void) {
        let job = Job(base: base, end: end, shouldStop: shouldStop, run: run)
        if end - base > 1 && helpers > 0 {
            monitor.withLock {
                self.job = job
                generation += 1
                monitor.broadcast()
            }
        }
        job.work()
        monitor.withLock {
            self.job = nil
            while busy > 0 { monitor.wait() }
        }
    }

    private func helperLoop() {
        setCurrentThreadNice(deviceWorkNice)
        var seen = 0
        while true {
            let job: Job? = monitor.withLock {
                while !stopped && (generation == seen || self.job == nil) { monitor.wait() }
                if stopped { return nil }
                seen = generation
                busy += 1
                return self.job
            }
            guard let job else { return }
            job.work()
            monitor.withLock {
                busy -= 1
                monitor.broadcast()
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

    func runSlice(args: [UInt64], regions: [RegionTableEntry], groupBase: UInt32, groupCount: UInt32,
                  groupTotal: UInt32, round: UInt32) throws(TetherError) {
        let context = SoftwareKernelContext(args: args, regions: regions, control: control,
                                            groupTotal: groupTotal, round: round)
        let kernel = self.kernel
        pool.run(base: groupBase, end: groupBase + groupCount, shouldStop: { context.shouldStop }) { group in
            SoftwareKernels.runGroup(kernel, group: group, context: context)
        }
    }
}
