import CSPIRV
import Synchronization
import TetherCore

/// What a device lets user kernels use: the SPIR-V capabilities it enabled and the limits a
/// spawn is checked against (from `VkPhysicalDeviceLimits`).
public struct UserKernelLimits: Sendable {
    /// 2 or 3: the Vulkan version SPIR-V is validated for (SPIR-V 1.5 or 1.6 at most).
    public var vulkanMinor: Int
    /// `SpvCapability` values a module may declare (the device has the feature and Tether enabled it).
    public var capabilities: Set<UInt32>
    public var maxPushConstantsBytes: UInt32
    public var maxBoundDescriptorSets: UInt32
    public var maxStorageBuffers: UInt32
    public var maxUniformBuffers: UInt32
    public var maxStorageBufferRange: UInt64
    public var maxUniformBufferRange: UInt64
    public var minStorageBufferOffsetAlignment: UInt64
    public var minUniformBufferOffsetAlignment: UInt64
    public var maxWorkGroupInvocations: UInt32
    public var maxWorkGroupSize: [UInt32]
    public var maxWorkGroupCount: [UInt32]
    /// `maxComputeSharedMemorySize`: workgroup (shared) memory one workgroup may declare.
    public var maxSharedMemoryBytes: UInt64
}

/// A module with its specialization constants applied and folded: the SPIR-V that the backend
/// compiles, and what it really uses.
public struct SpecializedModule: Sendable {
    public let words: [UInt32]
    /// Reflected after specialization: the local size, block and push-constant sizes that will run.
    public let description: ModuleDescription
    /// Workgroup (shared) memory, laid out as drivers do (`tether_spirv_workgroup_bytes`).
    public let sharedBytes: UInt64
}

/// SPIR-V capabilities that give a module raw pointers (`OpConvertUToPtr`, buffer references):
/// with them it could address any memory the device can reach — another client's, or the
/// daemon's own on a CPU device. Refused unless the daemon allows raw pointers for this client.
public enum RawPointerCapability {
    public static let addresses: UInt32 = 4
    public static let physicalStorageBufferAddresses: UInt32 = 5347
    public static let all: Set<UInt32> = [addresses, physicalStorageBufferAddresses]
}

/// A user's compute module, validated (SPIRV-Tools) and reflected (SPIRV-Cross) before any driver
/// sees it, owned by one address space. Backends compile it (`ComputeBackend.prepare`) into
/// whatever they keep in `compiled`.
///
/// Errors (all `invalidArgument` unless noted), each one sentence naming what is wrong:
/// not SPIR-V, rejected by the validator (its diagnostic), no or several compute entry points, a
/// raw-pointer capability (`permissionDenied`), a capability the device lacks, an image or sampler
/// binding, an array of descriptors, two buffers at one binding, a set or count over the device's
/// limits, a push block over the device limit, a specialization constant of another type.
public final class UserModule: Sendable {
    public let id: ModuleID
    public let words: [UInt32]
    /// What the module declares, specialization constants at their defaults.
    public let description: ModuleDescription
    let limits: UserKernelLimits
    let allowRawPointers: Bool
    /// The backend's compiled form (descriptor set layouts, pipelines per specialization).
    public let compiled = Mutex<AnyObject?>(nil)
    /// Specializations made so far, by their sorted values (at most `maxSpecializations`).
    private let specializations = Mutex<[[SpecValue]: SpecializedModule]>([:])
    public static let maxSpecializations = 64

    public init(id: ModuleID, words: [UInt32], entryPoint: String, limits: UserKernelLimits,
                allowRawPointers: Bool) throws(TetherError) {
        guard words.count >= 5, words[0] == 0x0723_0203 else {
            throw TetherError(.invalidArgument, "the module is not SPIR-V (it must start with the magic number 0x07230203)")
        }
        guard entryPoint.utf8.count <= Wire.maxEntryPointBytes else {  // the reflection keeps 63 bytes
            throw TetherError(.invalidArgument, "an entry point name is at most \(Wire.maxEntryPointBytes) bytes")
        }
        self.id = id
        self.words = words
        self.limits = limits
        self.allowRawPointers = allowRawPointers
        self.description = try Self.reflect(words, entryPoint: entryPoint, limits: limits, allowRawPointers: allowRawPointers,
                                            what: "the module")
        // With its defaults, as a spawn without specialization constants would run it.
        _ = try specialized([])
    }

    /// Validates (SPIRV-Tools), reflects (SPIRV-Cross) and checks `words` against the containment
    /// rules. `what` names the module in errors ("the module", "the module specialized with …").
    private static func reflect(_ words: [UInt32], entryPoint: String, limits: UserKernelLimits, allowRawPointers: Bool,
                                what: String) throws(TetherError) -> ModuleDescription {
        var error = [CChar](repeating: 0, count: 1024)
        // The validator first: SPIRV-Cross and the drivers assume valid SPIR-V.
        let invalid = words.withUnsafeBufferPointer { w in
            tether_spirv_validate(w.baseAddress, w.count, Int32(limits.vulkanMinor), &error, error.count)
        }
        guard invalid == 0 else {
            throw TetherError(.invalidArgument, "\(what) is not valid SPIR-V for Vulkan 1.\(limits.vulkanMinor): \(Self.string(error))")
        }
        let reflected = UnsafeMutablePointer<tether_spv_module>.allocate(capacity: 1)
        defer { reflected.deallocate() }
        let failed = words.withUnsafeBufferPointer { w in
            tether_spirv_reflect(w.baseAddress, w.count, entryPoint, reflected, &error, error.count)
        }
        guard failed == 0 else { throw TetherError(.invalidArgument, Self.string(error)) }
        return try Self.check(reflected.pointee, limits: limits, allowRawPointers: allowRawPointers)
    }

    /// The module with `spec` (sorted by id, each checked against `description`) applied the way a
    /// driver applies it — every specialization constant frozen and every expression of them
    /// folded (SPIRV-Tools' optimizer) — then validated and reflected again, so that the local
    /// size, the block sizes and the workgroup memory checked are those that will run. A module
    /// whose `WorkgroupSize` is an expression of spec constants, or whose shared array is sized by
    /// one, is measured after folding, never from the defaults. Made once per set of values.
    ///
    /// Errors (`invalidArgument`): invalid once specialized, a local size or workgroup memory over
    /// the device's limits, more than `maxSpecializations` sets of values (`resourceExhausted`).
    public func specialized(_ spec: [SpecValue]) throws(TetherError) -> SpecializedModule {
        if let done = specializations.withLock({ $0[spec] }) { return done }
        var values: [tether_spv_value] = []
        for v in spec {
            let wide = description.specConstant(id: v.id)?.type.bytes == 8
            values.append(tether_spv_value(constant_id: v.id, words: wide ? 2 : 1,
                                           bits: (UInt32(truncatingIfNeeded: v.bits), UInt32(truncatingIfNeeded: v.bits >> 32))))
        }
        var error = [CChar](repeating: 0, count: 1024)
        var out: UnsafeMutablePointer<UInt32>?
        var count = 0
        let failed = words.withUnsafeBufferPointer { w in
            values.withUnsafeBufferPointer { v in
                tether_spirv_specialize(w.baseAddress, w.count, Int32(limits.vulkanMinor), v.baseAddress, v.count, &out, &count,
                                        &error, error.count)
            }
        }
        guard failed == 0, let out else { throw TetherError(.invalidArgument, Self.string(error)) }
        let frozen = Array(UnsafeBufferPointer(start: out, count: count))
        tether_spirv_free(out)
        let what = spec.isEmpty ? "the module" : "the module specialized with \(spec.map { "\($0.id)=0x\(String($0.bits, radix: 16))" }.joined(separator: ", "))"
        let d = try Self.reflect(frozen, entryPoint: description.entryPoint, limits: limits, allowRawPointers: allowRawPointers,
                                 what: what)
        for (axis, n) in zip(["x", "y", "z"], zip(d.localSize, limits.maxWorkGroupSize)) where n.0 == 0 || n.0 > n.1 {
            throw TetherError(.invalidArgument, "\(what) has local size \(axis) = \(n.0), outside 1…\(n.1) on this device")
        }
        // A hostile module may declare sizes whose product overflows 64 bits.
        let (xy, o1) = UInt64(d.localSize[0]).multipliedReportingOverflow(by: UInt64(d.localSize[1]))
        let (invocations, o2) = xy.multipliedReportingOverflow(by: UInt64(d.localSize[2]))
        guard !o1, !o2, invocations <= UInt64(limits.maxWorkGroupInvocations) else {
            throw TetherError(.invalidArgument, "\(what) has a workgroup of \(d.localSize.map(String.init).joined(separator: "×")) invocations, over this device's \(limits.maxWorkGroupInvocations)")
        }
        var shared: UInt64 = 0
        guard frozen.withUnsafeBufferPointer({ tether_spirv_workgroup_bytes($0.baseAddress, $0.count, &shared, &error, error.count) }) == 0 else {
            throw TetherError(.invalidArgument, "\(what): \(Self.string(error))")
        }
        guard shared <= limits.maxSharedMemoryBytes else {
            throw TetherError(.invalidArgument, "\(what) declares \(shared) bytes of workgroup (shared) memory; this device allows \(limits.maxSharedMemoryBytes)")
        }
        let made = SpecializedModule(words: frozen, description: d, sharedBytes: shared)
        return try specializations.withLock { (cache) throws(TetherError) -> SpecializedModule in
            if let done = cache[spec] { return done }
            guard cache.count < Self.maxSpecializations else {
                throw TetherError(.resourceExhausted, "a module keeps at most \(Self.maxSpecializations) specializations; load it again for more")
            }
            cache[spec] = made
            return made
        }
    }

    private static func string(_ chars: [CChar]) -> String {
        String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func string<T>(_ tuple: T) -> String {
        withUnsafeBytes(of: tuple) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
    }

    private static func array<T, E>(_ tuple: T, count: UInt32, of _: E.Type) -> [E] {
        withUnsafeBytes(of: tuple) { raw in Array(raw.bindMemory(to: E.self).prefix(Int(count))) }
    }

    /// Tether's containment rules on a reflected module.
    private static func check(_ m: tether_spv_module, limits: UserKernelLimits,
                              allowRawPointers: Bool) throws(TetherError) -> ModuleDescription {
        guard m.too_many == 0 else {
            throw TetherError(.invalidArgument, "the module declares more than \(Int(TETHER_SPV_MAX_BINDINGS)) buffers, specialization constants or capabilities")
        }
        let capabilities = array(m.capabilities, count: m.capability_count, of: UInt32.self)
        if let raw = capabilities.first(where: RawPointerCapability.all.contains), !allowRawPointers {
            let name = raw == RawPointerCapability.addresses ? "Addresses" : "PhysicalStorageBufferAddresses"
            throw TetherError(.permissionDenied, "the module declares \(name): raw pointers (buffer references, pointer/integer conversions) could reach memory outside this process's bindings, so user kernels may not use them; bind buffers with layout(set, binding) instead")
        }
        if let missing = capabilities.first(where: { !limits.capabilities.contains($0) && !RawPointerCapability.all.contains($0) }) {
            throw TetherError(.invalidArgument, "the module declares SPIR-V capability \(SPIRVCapabilityNames.name(missing)), which this device does not offer to user kernels")
        }
        let kind = string(m.unsupported_kind)
        if !kind.isEmpty {
            let name = string(m.unsupported_resource)
            throw TetherError(.invalidArgument, "the module uses a\(kind.first.map { "aeiou".contains($0) } == true ? "n" : "") \(kind)\(name.isEmpty ? "" : " (\(name))"); user kernels bind storage and uniform buffers only")
        }
        var bindings: [ModuleDescription.Binding] = []
        for b in array(m.bindings, count: m.binding_count, of: tether_spv_binding.self) {
            let d = ModuleDescription.Binding(set: b.set, binding: b.binding,
                                              kind: b.kind == TETHER_SPV_UNIFORM_BUFFER.rawValue ? .uniform : .storage,
                                              minBytes: b.min_bytes, runtimeStride: b.runtime_stride, name: string(b.name))
            guard b.array_dimensions == 0 else {
                throw TetherError(.invalidArgument, "binding \(d) is an array of buffers; bind one buffer per binding")
            }
            guard d.set < limits.maxBoundDescriptorSets else {
                throw TetherError(.invalidArgument, "binding \(d) uses set \(d.set); this device has sets 0…\(limits.maxBoundDescriptorSets - 1)")
            }
            guard !bindings.contains(where: { $0.set == d.set && $0.binding == d.binding }) else {
                throw TetherError(.invalidArgument, "two buffers share binding \(d)")
            }
            if d.kind == .uniform, d.minBytes > limits.maxUniformBufferRange {
                throw TetherError(.invalidArgument, "uniform binding \(d) declares \(d.minBytes) bytes, over the device's \(limits.maxUniformBufferRange)")
            }
            bindings.append(d)
        }
        bindings.sort { ($0.set, $0.binding) < ($1.set, $1.binding) }
        let storage = bindings.filter { $0.kind == .storage }.count
        guard storage <= limits.maxStorageBuffers, bindings.count - storage <= limits.maxUniformBuffers else {
            throw TetherError(.invalidArgument, "the module uses \(storage) storage and \(bindings.count - storage) uniform buffers; this device allows \(limits.maxStorageBuffers) and \(limits.maxUniformBuffers)")
        }
        guard m.push_constant_blocks <= 1, m.push_constant_bytes <= limits.maxPushConstantsBytes else {
            throw TetherError(.invalidArgument, "the push-constant block has \(m.push_constant_bytes) bytes; this device allows \(limits.maxPushConstantsBytes)")
        }
        var specs: [ModuleDescription.SpecConstant] = []
        for s in array(m.specs, count: m.spec_count, of: tether_spv_spec.self) {
            guard let type = ModuleDescription.ScalarType(rawValue: UInt8(truncatingIfNeeded: s.type)), s.type < 7 else {
                throw TetherError(.invalidArgument, "specialization constant \(s.constant_id) is not a bool, int, uint, float, int64, uint64 or double")
            }
            specs.append(.init(id: s.constant_id, type: type, defaultBits: s.default_bits, name: string(s.name)))
        }
        // The name goes back to the driver as pName: it must be the module's exact bytes (a name
        // that is not UTF-8 would come back altered, naming no entry point, and drivers crash then).
        let entryBytes = withUnsafeBytes(of: m.entry) { Array($0.prefix { $0 != 0 }) }
        guard let entryPoint = String(validating: entryBytes, as: UTF8.self) else {
            throw TetherError(.invalidArgument, "the entry point's name is not valid UTF-8")
        }
        let localSize = array(m.local_size, count: 3, of: UInt32.self)
        let ids = array(m.local_size_spec_id, count: 3, of: UInt32.self).map { $0 == UInt32.max ? nil : $0 }
        return ModuleDescription(entryPoint: entryPoint, localSize: localSize, localSizeSpecIDs: ids,
                                 pushConstantBytes: m.push_constant_bytes, bindings: bindings, specConstants: specs,
                                 usesNumWorkgroups: m.uses_num_workgroups != 0)
    }
}

/// Names of the SPIR-V capabilities errors mention (the rest print as numbers).
enum SPIRVCapabilityNames {
    static let names: [UInt32: String] = [
        1: "Shader", 4: "Addresses", 5: "Linkage", 6: "Kernel", 9: "Float16", 10: "Float64", 11: "Int64",
        12: "Int64Atomics", 22: "Int16", 39: "Int8", 61: "GroupNonUniform", 62: "GroupNonUniformVote",
        63: "GroupNonUniformArithmetic", 64: "GroupNonUniformBallot", 65: "GroupNonUniformShuffle",
        66: "GroupNonUniformShuffleRelative", 67: "GroupNonUniformClustered", 68: "GroupNonUniformQuad",
        4433: "StorageBuffer16BitAccess", 4434: "UniformAndStorageBuffer16BitAccess", 4435: "StoragePushConstant16",
        4441: "VariablePointersStorageBuffer", 4442: "VariablePointers", 4448: "StorageBuffer8BitAccess",
        4449: "UniformAndStorageBuffer8BitAccess", 4450: "StoragePushConstant8", 5345: "VulkanMemoryModel",
        5346: "VulkanMemoryModelDeviceScope", 5347: "PhysicalStorageBufferAddresses",
    ]
    static func name(_ c: UInt32) -> String { names[c] ?? "#\(c)" }
}
