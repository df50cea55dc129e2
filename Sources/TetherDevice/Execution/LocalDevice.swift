import TetherCore
import TetherSys

/// A device opened inside this process: one address space (this one), its regions and threads.
///
/// This is the direct, in-process path — `tether run --local`, the baselines of the dispatch and
/// throughput benchmarks, and device tests. Programs use the daemon through the `Tether` library
/// instead; a process that loads Vulkan must never fork (see DESIGN.md).
public final class LocalDevice: @unchecked Sendable {
    public let backend: any ComputeBackend
    public let scheduler: Scheduler
    public let space = SpaceID(rawValue: 1)
    private let table = RegionTable()
    private var regions: [DeviceRegion] = []
    private var nextRegion: UInt64 = 1
    private var nextThread: UInt64 = 1
    private var nextModule: UInt64 = 1

    public init(backend: any ComputeBackend, quantumNanos: UInt64 = 2_000_000, slicesInFlight: Int? = nil) {
        self.backend = backend
        scheduler = Scheduler(backend: backend, quantumNanos: quantumNanos, slicesInFlight: slicesInFlight)
    }

    /// Kills every thread and frees every region and device object.
    public func close() {
        scheduler.shutdown()
        regions.forEach { $0.release() }
        regions = []
        table.set([])
    }

    deinit { close() }

    /// Mirrored memory of at least `bytes`: memfd pages mapped here and imported into the device.
    /// Owner addresses are this mapping's addresses (`localBase`).
    public func mirror(bytes: Int) throws(TetherError) -> DeviceRegion {
        let size = Memfd.pageRounded(bytes)
        let fd: OwnedDescriptor
        do { fd = try Memfd.create(name: "tether-local", size: size) } catch {
            throw TetherError(.resourceExhausted, "\(error)")
        }
        let region = try DeviceRegion(id: RegionID(rawValue: nextRegion), memfd: fd, ownerBase: nil, size: size, backend: backend)
        nextRegion += 1
        regions.append(region)
        table.set(regions.map(\.entry))
        return region
    }

    /// Validates, reflects and compiles a user module (raw pointers allowed: this process is
    /// its own owner).
    public func loadModule(words: [UInt32], entryPoint: String = "") throws(TetherError) -> UserModule {
        guard let limits = backend.userKernelLimits else {
            throw TetherError(.unsupported, "user kernels need a Vulkan backend; this device is \(backend.device.backend.rawValue)")
        }
        let module = try UserModule(id: ModuleID(rawValue: nextModule), words: words, entryPoint: entryPoint,
                                    limits: limits, allowRawPointers: false)
        nextModule += 1
        try backend.prepare(module)
        return module
    }

    /// A user module's launch, checked against this device's regions.
    public func launch(_ module: UserModule, _ launch: ModuleLaunch) throws(TetherError) -> (KernelProgram, Launch) {
        let regions = self.regions
        let checked = try UserLaunch(launch, module: module, limits: backend.userKernelLimits!) { address, bytes in
            regions.first { $0.entry.translate(address, bytes: bytes) != nil }
        }
        return (.module(checked), Launch(args: [], groups: UInt32(launch.grid.total)))
    }

    /// Starts a device thread.
    public func spawn(_ program: KernelProgram, launch: Launch, persistentNanos: UInt64 = 0,
                      priority: PriorityClass = .normal) throws(TetherError) -> DeviceThread {
        let context = try scheduler.contexts.acquire(program)
        let thread = DeviceThread(id: ThreadID(rawValue: nextThread), space: space, program: program, args: launch.args,
                                  groups: launch.groups, persistentNanos: persistentNanos, priority: priority,
                                  context: context, regions: table)
        nextThread += 1
        try scheduler.submit(thread)
        return thread
    }

    /// Runs a thread to its end and returns how it ended.
    public func run(_ program: KernelProgram, launch: Launch, persistentNanos: UInt64 = 0) throws(TetherError) -> ThreadOutcome {
        let thread = try spawn(program, launch: launch, persistentNanos: persistentNanos)
        return scheduler.wait(thread)!
    }
}
