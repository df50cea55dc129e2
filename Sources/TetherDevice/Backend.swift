import TetherCore

/// A device as `tether devices` shows it.
public struct DeviceDescription: Sendable, Codable, Equatable {
    public var name: String
    public var backend: BackendKind
    /// `discrete-gpu`, `integrated-gpu`, `virtual-gpu`, `cpu` (a Vulkan CPU driver) or `software`.
    public var type: String
    public var driver: String
    public var apiVersion: String
    public var vendorID: UInt32
    public var deviceID: UInt32
    public var externalMemoryHost: Bool
    public var bufferDeviceAddress: Bool
    public var timelineSemaphore: Bool
    /// The DRM render node matched by PCI ids, if any.
    public var renderNode: String?

    public var isGPU: Bool { type.hasSuffix("gpu") }
    /// Tether can run on it: everything it needs is there.
    public var usable: Bool { externalMemoryHost && bufferDeviceAddress && timelineSemaphore }
    /// The reason it cannot be used, for `tether devices`.
    public var missing: [String] {
        var m: [String] = []
        if !externalMemoryHost { m.append("VK_EXT_external_memory_host") }
        if !bufferDeviceAddress { m.append("bufferDeviceAddress") }
        if !timelineSemaphore { m.append("timelineSemaphore") }
        return m
    }
}

/// The program a device thread runs.
public enum KernelProgram: Sendable {
    case builtin(BuiltinKernel)
    /// Trusted SPIR-V with the pointer ABI of the built-ins (entry point `main`, the push-constant
    /// layout of `KernelABI`): raw device addresses, so never from an untrusted client.
    case spirv(words: [UInt32], invocationsPerGroup: Int)
    /// A user module with descriptor bindings, checked against its reflection (`UserLaunch`).
    case module(UserLaunch)

    /// A user kernel that reads `gl_NumWorkGroups` runs its whole grid as one slice.
    public var runsUnsliced: Bool {
        if case .module(let launch) = self { return launch.module.description.usesNumWorkgroups }
        return false
    }

    public var name: String {
        switch self {
        case .builtin(let k): k.rawValue
        case .spirv: "spirv"
        case .module(let launch): "\(launch.module.id):\(launch.module.description.entryPoint)"
        }
    }
}

/// Memory imported into a device. Freeing the import is `deinit`; the pages stay mapped by their
/// owner, who must unmap only after the import is gone.
public protocol ImportedMemory: AnyObject, Sendable {
    /// Where device code finds the first byte (a buffer device address, or a host pointer).
    var deviceBase: UInt64 { get }
}

/// Workgroups `[groupBase, groupBase + groupCount)` of a device thread's grid, with what the
/// kernel needs to run them.
public struct SliceLaunch: Sendable {
    public var args: [UInt64]
    public var regions: [RegionTableEntry]
    public var groupBase: UInt32
    public var groupCount: UInt32
    public var groupTotal: UInt32
    public var round: UInt32
    /// Someone waits for this slice and it is known to be tiny (measured before within
    /// `Scheduler.maxNanosOnSubmitter` or the backend's `submitterSliceNanos`, for work whose cost
    /// does not depend on memory): a backend may run it on the calling thread, in the caller's
    /// scheduling class, instead of handing it over (the software backend does, see
    /// `WorkerPool.runInline`; on Vulkan the caller waits for its fence). False for a direct
    /// caller that owns the device.
    public var mayRunOnCaller: Bool

    public init(args: [UInt64], regions: [RegionTableEntry], groupBase: UInt32, groupCount: UInt32,
                groupTotal: UInt32, round: UInt32 = 0, mayRunOnCaller: Bool = false) {
        self.mayRunOnCaller = mayRunOnCaller
        self.args = args
        self.regions = regions
        self.groupBase = groupBase
        self.groupCount = groupCount
        self.groupTotal = groupTotal
        self.round = round
    }
}

/// Per-device-thread execution state: the control block and whatever the backend needs to run a
/// slice. Used by one thread at a time (the scheduler's worker); the control word may be written
/// from any thread.
///
/// Slices are started and finished in order, at most the backend's `sliceDepth` unfinished.
public protocol ThreadContext: AnyObject, Sendable {
    var control: UnsafeMutablePointer<ControlBlock> { get }
    /// Starts a slice; it may run to its end before returning (a backend of depth 1 does).
    func startSlice(_ slice: SliceLaunch) throws(TetherError)
    /// Waits until the oldest started slice is done. Returns its device time where the backend
    /// measures it (the software pool, whose threads may run the end of one slice beside the
    /// start of the next); nil where slices run one after another, and the scheduler takes the
    /// time from the previous slice's end to this one's.
    @discardableResult
    func finishSlice() throws(TetherError) -> UInt64?
    /// Waits at most `nanos` for the oldest started slice to be done; true if it is (`finishSlice`
    /// then returns at once), false if it still runs. A backend whose slices are done when
    /// `startSlice` returns says true at once.
    func waitForOldestSlice(nanos: UInt64) -> Bool
    /// Called after the control word changed, for a backend whose slices can notice sooner
    /// than by the next poll of device code (the software pool wakes its waiting caller).
    func interrupt()
    /// After the control word told them to stop: blocks until none of the slices started here
    /// runs any more, and returns true; false if the backend cannot tell before they are
    /// finished in start order (a Vulkan queue runs them in that order anyway). May be called
    /// from any thread while the scheduler's worker finishes them. A backend that knows which
    /// of its threads run the slices lends them the caller's priority meanwhile.
    func waitUntilStopped() -> Bool
}

/// A compute device: a Vulkan physical device or the software backend.
public protocol ComputeBackend: AnyObject, Sendable {
    var device: DeviceDescription { get }
    /// How many slices of one context may be started and not yet finished. Above 1, the device
    /// has the next slice queued while one runs and goes on without waiting for the host.
    var sliceDepth: Int { get }
    /// How many slices the scheduler keeps on the device unless told otherwise (≤ `sliceDepth`;
    /// `sliceDepth` unless the backend says otherwise).
    var defaultSlicesInFlight: Int { get }
    /// Imports `size` bytes at `base` (page-aligned, whole pages) for device access.
    func importMemory(base: UnsafeMutableRawPointer, size: Int) throws(TetherError) -> any ImportedMemory
    func makeContext(program: KernelProgram) throws(TetherError) -> any ThreadContext
    /// What user kernels may use on this device; nil where the backend cannot run them.
    var userKernelLimits: UserKernelLimits? { get }
    /// A slice of at most this many groups launched with `mayRunOnCaller` runs on the caller
    /// (the software backend's small slices); 0 where every slice runs on the device's threads.
    var callerSliceGroups: Int { get }
    /// How long (ns) an awaited slice may be expected to take for the scheduler to let the thread
    /// that submits it start it and wait for its end itself, the device otherwise idle
    /// (`Scheduler.submit(_:runHere:)`); 0 where it never does.
    var submitterSliceNanos: Double { get }
    /// How long (ns) a thread that started such a slice waits for its end before the scheduler's
    /// worker finishes it instead (where the device's own threads run it).
    var submitterWaitNanos: UInt64 { get }
    /// Compiles a validated user module (once, when it is loaded).
    func prepare(_ module: UserModule) throws(TetherError)
}

extension ComputeBackend {
    public var defaultSlicesInFlight: Int { sliceDepth }
    public var userKernelLimits: UserKernelLimits? { nil }
    public var callerSliceGroups: Int { 0 }
    public var submitterSliceNanos: Double { 0 }
    public var submitterWaitNanos: UInt64 { 60_000_000_000 }
    public func prepare(_ module: UserModule) throws(TetherError) {
        throw TetherError(.unsupported, "user kernels need a Vulkan backend; this daemon runs \(device.backend.rawValue)")
    }
}

extension ThreadContext {
    /// Runs one slice to its end.
    public func runSlice(_ slice: SliceLaunch) throws(TetherError) {
        try startSlice(slice)
        try finishSlice()
    }

    /// Asks device code of this thread to stop (kill or yield); it polls the word.
    public func signal(_ word: UInt32) {
        tetherAtomicStore(&control.pointee.word, word)
        interrupt()
    }

    public func interrupt() {}
    public func waitUntilStopped() -> Bool { false }
    public func waitForOldestSlice(nanos: UInt64) -> Bool { true }
    public func resetControl() {
        tetherAtomicStore(&control.pointee.word, KernelABI.controlRun)
        control.pointee.fault = 0
        control.pointee.faultAddress = 0
    }
    public var fault: (code: UInt32, address: UInt64) {
        (control.pointee.fault, control.pointee.faultAddress)
    }
}
