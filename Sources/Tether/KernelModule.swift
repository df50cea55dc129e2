import Glibc
import TetherCore

/// A compute module of your own, loaded into the daemon once and spawned many times.
///
/// ```swift
/// let module = try device.loadModule(spirv: words)           // validated + reflected by the daemon
/// let memory = try device.mirror(bytes: 3 * n * 4)
/// let bytes = n * 4
/// let report = try device.run(module, bindings: [
///     BufferBinding(set: 0, binding: 0, memory: memory, offset: 0, bytes: bytes),
///     BufferBinding(set: 0, binding: 1, memory: memory, offset: bytes, bytes: bytes),
///     BufferBinding(set: 0, binding: 2, memory: memory, offset: 2 * bytes, bytes: bytes),
/// ], grid: Grid(UInt32(n / 128)))
/// ```
///
/// The kernel reaches memory only through its descriptor bindings, each a byte range of this
/// process's mirrored memory; push constants and specialization constants carry values. The
/// daemon refuses modules with raw pointers (`PhysicalStorageBufferAddresses`), images or
/// samplers, and anything its validator rejects, with a sentence saying why. Accesses past a
/// binding's range read zero and drop writes (robust buffer access).
///
/// In a forked child (an address space of its own) the module is loaded again at its first use.
public final class KernelModule: @unchecked Sendable {
    public let spirv: [UInt32]
    public let entryPoint: String
    /// What the daemon reflected: entry point, local size, bindings, push-constant size,
    /// specialization constants, whether it reads `gl_NumWorkGroups`.
    public let description: ModuleDescription
    /// The address space the module was last loaded into, and its id there (a forked child has a
    /// space of its own, so it loads the module again).
    private let loaded: Locked<(space: SpaceID, id: ModuleID)>

    init(spirv: [UInt32], entryPoint: String, description: ModuleDescription, space: SpaceID, id: ModuleID) {
        self.spirv = spirv
        self.entryPoint = entryPoint
        self.description = description
        loaded = Locked((space, id))
    }

    /// The id in `device`'s address space of the calling process, loading the module there first if needed.
    func id(in device: Device) throws(TetherError) -> ModuleID {
        _ = try device.connection()  // a forked child's own space, made now if need be
        let space = device.hello.space
        if let id = loaded.withLock({ $0.space == space ? $0.id : nil }) { return id }
        let (id, _) = try device.load(spirv, entryPoint: entryPoint)
        loaded.withLock { $0 = (space, id) }
        return id
    }
}

extension BufferBinding {
    /// `bytes` bytes at `offset` into `memory` back `layout(set, binding)` (nil: to its end).
    public init(set: UInt32, binding: UInt32, memory: MirroredMemory, offset: Int = 0, bytes: Int? = nil) {
        let length = bytes ?? (memory.size - offset)
        self.init(set: set, binding: binding, address: memory.address &+ UInt64(truncatingIfNeeded: offset),
                  bytes: UInt64(truncatingIfNeeded: length))
    }
}

/// Push-constant bytes from a value laid out like the shader's push block (std430: mind padding).
public func pushConstantBytes<T: BitwiseCopyable>(of value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

extension Device {
    /// Sends a SPIR-V compute module to the daemon, which validates it (SPIRV-Tools), reflects it
    /// (SPIRV-Cross) and compiles it. `entryPoint` "" picks the module's one compute entry point.
    ///
    /// Throws `invalidArgument` with the validator's or the reflection's sentence,
    /// `permissionDenied` for raw pointers, `unsupported` on a daemon without Vulkan.
    public func loadModule(spirv: [UInt32], entryPoint: String = "") throws(TetherError) -> KernelModule {
        guard !spirv.isEmpty, spirv.count <= Wire.maxSpirvWords else {
            throw TetherError(.invalidArgument, "a SPIR-V module must have 1 to \(Wire.maxSpirvWords) words, not \(spirv.count)")
        }
        guard entryPoint.utf8.count <= Wire.maxEntryPointBytes else {
            throw TetherError(.invalidArgument, "an entry point name is at most \(Wire.maxEntryPointBytes) bytes")
        }
        let (id, description) = try load(spirv, entryPoint: entryPoint)
        return KernelModule(spirv: spirv, entryPoint: entryPoint, description: description, space: hello.space, id: id)
    }

    func load(_ spirv: [UInt32], entryPoint: String) throws(TetherError) -> (ModuleID, ModuleDescription) {
        let reply = try call(.loadModule(words: spirv, entryPoint: entryPoint))
        guard case .module(let id, let description) = reply else { throw Self.unexpected(reply, to: "loadModule") }
        return (id, description)
    }

    /// Frees the daemon's copy of `module` (threads running it finish first).
    public func unloadModule(_ module: KernelModule) throws(TetherError) {
        let reply = try call(.unloadModule(try module.id(in: self)))
        guard case .done = reply else { throw Self.unexpected(reply, to: "unloadModule") }
    }

    /// Starts a device thread running `module` over `grid` workgroups. The daemon checks every
    /// binding against the module (each binding bound once, ranges at least the block's declared
    /// size, inside one mirrored region, offsets aligned as the device needs), the push-constant
    /// bytes against the block's size, and each specialization constant's id and type.
    public func spawn(_ module: KernelModule, bindings: [BufferBinding], pushConstants: [UInt8] = [],
                      specialization: [SpecValue] = [], grid: Grid, priority: PriorityClass = .normal)
        throws(TetherError) -> DeviceThreadHandle {
        let request = try moduleRequest(module, bindings, pushConstants, specialization, grid, priority)
        let reply = try call(.spawn(request))
        guard case .spawned(let id) = reply else { throw Self.unexpected(reply, to: "spawn") }
        return DeviceThreadHandle(id: id)
    }

    /// `spawn` and `join` in one round trip.
    public func run(_ module: KernelModule, bindings: [BufferBinding], pushConstants: [UInt8] = [],
                    specialization: [SpecValue] = [], grid: Grid, priority: PriorityClass = .normal,
                    timeoutSeconds: Double? = nil) throws(TetherError) -> ThreadReport {
        let request = try moduleRequest(module, bindings, pushConstants, specialization, grid, priority)
        let reply = try call(.run(request), timeoutSeconds: .some(timeoutSeconds))
        guard case .joined(let report) = reply else { throw Self.unexpected(reply, to: "run") }
        return report
    }

    private func moduleRequest(_ module: KernelModule, _ bindings: [BufferBinding], _ push: [UInt8],
                               _ spec: [SpecValue], _ grid: Grid, _ priority: PriorityClass) throws(TetherError) -> SpawnRequest {
        // What the wire cannot carry is refused here, with a sentence rather than a malformed message.
        guard bindings.count <= ModuleLaunch.maxBindings, push.count <= ModuleLaunch.maxPushConstantBytes,
              spec.count <= ModuleLaunch.maxSpecValues else {
            throw TetherError(.invalidArgument, "at most \(ModuleLaunch.maxBindings) bindings, \(ModuleLaunch.maxPushConstantBytes) push-constant bytes and \(ModuleLaunch.maxSpecValues) specialization constants")
        }
        let launch = ModuleLaunch(module: try module.id(in: self), bindings: bindings, pushConstants: push,
                                  specialization: spec, grid: grid)
        return SpawnRequest(program: .module(launch), args: [], groups: UInt32(truncatingIfNeeded: grid.total), priority: priority)
    }
}
