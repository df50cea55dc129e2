/// Wire coding of user-kernel values: a spawn's `ModuleLaunch` and the daemon's `ModuleDescription`.
/// Every count is bounded before anything is allocated.
extension MessageCodec {
    static func moduleLaunch(_ w: inout WireWriter, _ l: ModuleLaunch) {
        w.u64(l.module.rawValue)
        w.u32(UInt32(l.bindings.count))
        for b in l.bindings {
            w.u32(b.set)
            w.u32(b.binding)
            w.u64(b.address)
            w.u64(b.bytes)
        }
        w.u32(UInt32(l.pushConstants.count))
        for byte in l.pushConstants { w.u8(byte) }
        w.u32(UInt32(l.specialization.count))
        for s in l.specialization {
            w.u32(s.id)
            w.u64(s.bits)
        }
        w.u32(l.grid.x)
        w.u32(l.grid.y)
        w.u32(l.grid.z)
    }

    static func moduleLaunch(_ r: inout WireReader) throws(TetherError) -> ModuleLaunch {
        let module = ModuleID(rawValue: try r.u64())
        let bindingCount = Int(try r.u32())
        guard bindingCount <= ModuleLaunch.maxBindings else {
            throw TetherError(.malformedMessage, "a spawn may bind at most \(ModuleLaunch.maxBindings) buffers, got \(bindingCount)")
        }
        var bindings: [BufferBinding] = []
        for _ in 0..<bindingCount {
            bindings.append(BufferBinding(set: try r.u32(), binding: try r.u32(), address: try r.u64(), bytes: try r.u64()))
        }
        let pushCount = Int(try r.u32())
        guard pushCount <= ModuleLaunch.maxPushConstantBytes else {
            throw TetherError(.malformedMessage, "at most \(ModuleLaunch.maxPushConstantBytes) push-constant bytes, got \(pushCount)")
        }
        var push: [UInt8] = []
        for _ in 0..<pushCount { push.append(try r.u8()) }
        let specCount = Int(try r.u32())
        guard specCount <= ModuleLaunch.maxSpecValues else {
            throw TetherError(.malformedMessage, "at most \(ModuleLaunch.maxSpecValues) specialization constants, got \(specCount)")
        }
        var spec: [SpecValue] = []
        for _ in 0..<specCount { spec.append(SpecValue(id: try r.u32(), bits: try r.u64())) }
        let grid = Grid(try r.u32(), try r.u32(), try r.u32())
        return ModuleLaunch(module: module, bindings: bindings, pushConstants: push, specialization: spec, grid: grid)
    }

    static func moduleDescription(_ w: inout WireWriter, _ d: ModuleDescription) {
        w.string(d.entryPoint)
        for v in d.localSize { w.u32(v) }
        for v in d.localSizeSpecIDs { w.u32(v ?? UInt32.max) }
        w.u32(d.pushConstantBytes)
        w.bool(d.usesNumWorkgroups)
        w.u32(UInt32(d.bindings.count))
        for b in d.bindings {
            w.u32(b.set)
            w.u32(b.binding)
            w.u8(b.kind.rawValue)
            w.u64(b.minBytes)
            w.u64(b.runtimeStride)
            w.string(b.name)
        }
        w.u32(UInt32(d.specConstants.count))
        for s in d.specConstants {
            w.u32(s.id)
            w.u8(s.type.rawValue)
            w.u64(s.defaultBits)
            w.string(s.name)
        }
    }

    static func moduleDescription(_ r: inout WireReader) throws(TetherError) -> ModuleDescription {
        let entry = try r.string()
        let localSize = [try r.u32(), try r.u32(), try r.u32()]
        let ids = [try r.u32(), try r.u32(), try r.u32()].map { $0 == UInt32.max ? nil : $0 }
        let push = try r.u32()
        let numWorkgroups = try r.bool()
        let bindingCount = Int(try r.u32())
        guard bindingCount <= ModuleLaunch.maxBindings else { throw TetherError(.malformedMessage, "too many bindings") }
        var bindings: [ModuleDescription.Binding] = []
        for _ in 0..<bindingCount {
            let set = try r.u32(), binding = try r.u32()
            guard let kind = ModuleDescription.BufferKind(rawValue: try r.u8()) else {
                throw TetherError(.malformedMessage, "unknown buffer kind")
            }
            bindings.append(.init(set: set, binding: binding, kind: kind, minBytes: try r.u64(), runtimeStride: try r.u64(),
                                  name: try r.string()))
        }
        let specCount = Int(try r.u32())
        guard specCount <= ModuleLaunch.maxSpecValues else { throw TetherError(.malformedMessage, "too many spec constants") }
        var specs: [ModuleDescription.SpecConstant] = []
        for _ in 0..<specCount {
            let id = try r.u32()
            guard let type = ModuleDescription.ScalarType(rawValue: try r.u8()) else {
                throw TetherError(.malformedMessage, "unknown scalar type")
            }
            specs.append(.init(id: id, type: type, defaultBits: try r.u64(), name: try r.string()))
        }
        return ModuleDescription(entryPoint: entry, localSize: localSize, localSizeSpecIDs: ids, pushConstantBytes: push,
                                 bindings: bindings, specConstants: specs, usesNumWorkgroups: numWorkgroups)
    }
}
