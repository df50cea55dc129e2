import TetherCore

/// One buffer binding of a checked spawn: `bytes` bytes at `offset` into a region's import.
public struct ResolvedBinding: @unchecked Sendable {
    public var binding: ModuleDescription.Binding
    public var region: RegionID
    public var memory: any ImportedMemory
    public var offset: UInt64
    public var bytes: UInt64
}

/// A spawn of a user module, checked against the module's reflection, the device's limits and
/// the owner's own regions: what the backend may run without looking at the client's bytes again.
public struct UserLaunch: @unchecked Sendable {
    public let module: UserModule
    /// The SPIR-V that runs, and its reflection (`UserModule.specialized`).
    public let specialized: SpecializedModule
    public let bindings: [ResolvedBinding]
    public let pushConstants: [UInt8]
    /// Sorted by id; every id is one the module declares, every value fits its type.
    public let specialization: [SpecValue]
    public let grid: Grid

    /// Checks `launch`. `region` finds the owner's region holding a byte range (the registry lock
    /// is held by the caller). Errors are `invalidArgument` (or `addressFault` for a range outside
    /// every region, `gridTooLarge` for a grid over the device's limits), naming the binding,
    /// constant or dimension at fault.
    /// The launch's specialization constants, sorted by id, each one the module declares, given
    /// once and fitting its type. Then `module.specialized(_:)` of them is what will run: the
    /// daemon makes it before it takes the registry lock (it runs the optimizer and validator),
    /// and `init` finds it made.
    public static func specialization(of launch: ModuleLaunch, module: UserModule) throws(TetherError) -> [SpecValue] {
        var spec: [SpecValue] = []
        for v in launch.specialization {
            guard let c = module.description.specConstant(id: v.id) else {
                let known = module.description.specConstants.map { String($0.id) }.joined(separator: ", ")
                throw TetherError(.invalidArgument, "the module has no specialization constant \(v.id) (it has: \(known.isEmpty ? "none" : known))")
            }
            guard !spec.contains(where: { $0.id == v.id }) else {
                throw TetherError(.invalidArgument, "specialization constant \(v.id) is given twice")
            }
            let fits = switch c.type {
            case .bool: v.bits <= 1
            case .int32, .uint32, .float32: v.bits <= UInt64(UInt32.max)
            case .int64, .uint64, .float64: true
            }
            guard fits else {
                throw TetherError(.invalidArgument, "specialization constant \(v.id) is a \(c.type); 0x\(String(v.bits, radix: 16)) does not fit")
            }
            spec.append(v)
        }
        return spec.sorted { $0.id < $1.id }
    }

    public init(_ launch: ModuleLaunch, module: UserModule, limits: UserKernelLimits,
                region: (_ address: UInt64, _ bytes: UInt64) -> DeviceRegion?) throws(TetherError) {
        // Specialization constants first: everything else depends on them.
        let spec = try Self.specialization(of: launch, module: module)
        let specialized = try module.specialized(spec)
        let d = specialized.description
        let grid = launch.grid
        for (axis, n) in zip(["x", "y", "z"], zip([grid.x, grid.y, grid.z], limits.maxWorkGroupCount)) where n.0 == 0 || n.0 > n.1 {
            throw TetherError(.gridTooLarge, "grid \(axis) = \(n.0) workgroups is outside 1…\(n.1) on this device")
        }
        guard grid.total <= UInt64(UInt32.max) else {
            throw TetherError(.gridTooLarge, "a grid of \(grid.total) workgroups exceeds \(UInt32.max)")
        }
        guard launch.pushConstants.count == Int(d.pushConstantBytes) else {
            throw TetherError(.invalidArgument, d.pushConstantBytes == 0
                ? "the module has no push constants, but \(launch.pushConstants.count) bytes were given"
                : "the module's push-constant block is \(d.pushConstantBytes) bytes; \(launch.pushConstants.count) were given")
        }
        var resolved: [ResolvedBinding] = []
        for b in launch.bindings {
            let name = "\(b.set).\(b.binding)"
            guard let declared = d.binding(set: b.set, binding: b.binding) else {
                let known = d.bindings.map(\.description).joined(separator: ", ")
                throw TetherError(.invalidArgument, "binding \(name) is not in the module (it uses: \(known.isEmpty ? "none" : known))")
            }
            guard !resolved.contains(where: { $0.binding.set == b.set && $0.binding.binding == b.binding }) else {
                throw TetherError(.invalidArgument, "binding \(name) is given twice")
            }
            guard b.bytes >= max(declared.minBytes, 1) else {
                throw TetherError(.invalidArgument, "binding \(name) needs at least \(max(declared.minBytes, 1)) bytes; \(b.bytes) were given")
            }
            let (range, alignment) = declared.kind == .uniform
                ? (limits.maxUniformBufferRange, limits.minUniformBufferOffsetAlignment)
                : (limits.maxStorageBufferRange, limits.minStorageBufferOffsetAlignment)
            guard b.bytes <= range else {
                throw TetherError(.invalidArgument, "\(declared.kind) binding \(name) is \(b.bytes) bytes; this device binds at most \(range)")
            }
            guard b.address <= UInt64.max - b.bytes, let r = region(b.address, b.bytes), let memory = r.importedMemory else {
                throw TetherError(.addressFault, "binding \(name) (\(b.bytes) bytes at 0x\(String(b.address, radix: 16))) is not inside one mirrored region of this process")
            }
            let offset = b.address - r.ownerBase
            guard offset % max(alignment, 1) == 0 else {
                throw TetherError(.invalidArgument, "binding \(name) starts \(offset) bytes into its region; this device needs a multiple of \(alignment)")
            }
            resolved.append(ResolvedBinding(binding: declared, region: r.id, memory: memory, offset: offset, bytes: b.bytes))
        }
        if let missing = d.bindings.first(where: { m in !resolved.contains { $0.binding == m } }) {
            throw TetherError(.invalidArgument, "binding \(missing)\(missing.name.isEmpty ? "" : " (\(missing.name))") of the module is not bound")
        }
        self.module = module
        self.specialized = specialized
        self.bindings = resolved
        self.pushConstants = launch.pushConstants
        self.specialization = spec
        self.grid = grid
    }
}
