import CTether
import Tether

// The user-kernel half of tether.h: load a SPIR-V module, read its reflection, spawn it with
// bindings over mirrored memory. Counts and pointers from C are checked here; the daemon checks
// the launch against the module again.

@_cdecl("tether_module_load")
public func tether_module_load(_ device: OpaquePointer?, _ words: UnsafePointer<UInt32>?, _ wordCount: Int,
                               _ entryPoint: UnsafePointer<CChar>?, _ module: UnsafeMutablePointer<OpaquePointer?>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.device(device)
        let out = try required(module, "module")
        guard let words, wordCount > 0, wordCount <= Wire.maxSpirvWords else {
            throw invalid("a SPIR-V module is 1 to \(Wire.maxSpirvWords) words at a non-NULL address (word_count \(UInt(bitPattern: wordCount)))")
        }
        let m = try d.loadModule(spirv: Array(UnsafeBufferPointer(start: words, count: wordCount)),
                                 entryPoint: entryPoint.map { String(cString: $0) } ?? "")
        out.pointee = Handles.insert(.module(m, device: Handles.id(device)))
    }
}

@_cdecl("tether_module_unload")
public func tether_module_unload(_ module: OpaquePointer?) -> tether_status {
    api { () throws(TetherError) in
        let (m, owner) = try Handles.module(module)
        guard Handles.remove(module) != nil else { throw Handles.badHandle(module, "module") }
        // The handle goes whatever the daemon says: its copy goes with the address space anyway.
        guard case .device(let d)? = Handles.lookup(OpaquePointer(bitPattern: owner)) else { return }
        try d.unloadModule(m)
    }
}

@_cdecl("tether_module_get_info")
public func tether_module_get_info(_ module: OpaquePointer?, _ info: UnsafeMutablePointer<tether_module_info>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.module(module).0.description
        let out = try required(info, "info")
        var i = tether_module_info()
        i.local_size = (d.localSize[0], d.localSize[1], d.localSize[2])
        i.push_constant_bytes = d.pushConstantBytes
        i.binding_count = UInt32(d.bindings.count)
        i.spec_constant_count = UInt32(d.specConstants.count)
        i.uses_num_workgroups = d.usesNumWorkgroups ? 1 : 0
        copyCString(d.entryPoint, into: &i.entry_point)
        out.pointee = i
    }
}

@_cdecl("tether_module_binding")
public func tether_module_binding(_ module: OpaquePointer?, _ index: Int,
                                  _ info: UnsafeMutablePointer<tether_module_binding_info>?) -> tether_status {
    api { () throws(TetherError) in
        let bindings = try Handles.module(module).0.description.bindings
        let out = try required(info, "info")
        let b = try element(bindings, index, "binding")
        var i = tether_module_binding_info()
        i.set = b.set
        i.binding = b.binding
        i.kind = Int32(b.kind.rawValue)
        i.min_bytes = b.minBytes
        copyCString(b.name, into: &i.name)
        out.pointee = i
    }
}

@_cdecl("tether_module_spec_constant")
public func tether_module_spec_constant(_ module: OpaquePointer?, _ index: Int,
                                        _ info: UnsafeMutablePointer<tether_module_spec_info>?) -> tether_status {
    api { () throws(TetherError) in
        let specs = try Handles.module(module).0.description.specConstants
        let out = try required(info, "info")
        let s = try element(specs, index, "constant")
        var i = tether_module_spec_info()
        i.constant_id = s.id
        i.type = Int32(s.type.rawValue)
        i.default_bits = s.defaultBits
        copyCString(s.name, into: &i.name)
        out.pointee = i
    }
}

/// A C launch, checked: the module, the bindings over the device's own memory handles, push bytes,
/// specialization values and the grid.
private func moduleLaunch(_ device: OpaquePointer?, _ module: OpaquePointer?, _ bindings: UnsafePointer<tether_binding>?,
                          _ bindingCount: Int, _ push: UnsafeRawPointer?, _ pushBytes: Int,
                          _ spec: UnsafePointer<tether_specialization>?, _ specCount: Int,
                          _ grid: UnsafePointer<UInt32>?) throws(TetherError)
    -> (Device, KernelModule, [BufferBinding], [UInt8], [SpecValue], Grid) {
    let d = try Handles.device(device)
    let (m, owner) = try Handles.module(module)
    guard owner == Handles.id(device) else { throw invalid("the module was loaded on another device") }
    guard bindingCount >= 0, bindingCount <= ModuleLaunch.maxBindings, bindingCount == 0 || bindings != nil else {
        throw invalid("bindings: at most \(ModuleLaunch.maxBindings), at a non-NULL address (binding_count \(UInt(bitPattern: bindingCount)))")
    }
    guard pushBytes >= 0, pushBytes <= ModuleLaunch.maxPushConstantBytes, pushBytes == 0 || push != nil else {
        throw invalid("push constants: at most \(ModuleLaunch.maxPushConstantBytes) bytes, at a non-NULL address (push_bytes \(UInt(bitPattern: pushBytes)))")
    }
    guard specCount >= 0, specCount <= ModuleLaunch.maxSpecValues, specCount == 0 || spec != nil else {
        throw invalid("specialization: at most \(ModuleLaunch.maxSpecValues) values, at a non-NULL address (specialization_count \(UInt(bitPattern: specCount)))")
    }
    guard let grid else { throw invalid("grid is NULL; pass three workgroup counts") }
    var resolved: [BufferBinding] = []
    for b in UnsafeBufferPointer(start: bindings, count: bindingCount) {
        guard case .memory(let memory, let memoryOwner)? = Handles.lookup(b.memory), memoryOwner == owner else {
            throw Handles.badHandle(b.memory, "memory")
        }
        guard b.offset >= 0, b.bytes > 0, b.offset <= memory.size, b.bytes <= memory.size - b.offset else {
            throw invalid("binding \(b.set).\(b.binding): \(UInt(bitPattern: b.bytes)) bytes at offset \(UInt(bitPattern: b.offset)) do not fit its \(memory.size)-byte memory")
        }
        resolved.append(BufferBinding(set: b.set, binding: b.binding, memory: memory, offset: b.offset, bytes: b.bytes))
    }
    let bytes = push.map { Array(UnsafeRawBufferPointer(start: $0, count: pushBytes)) } ?? []
    let values = UnsafeBufferPointer(start: spec, count: specCount).map { SpecValue(id: $0.constant_id, bits: $0.bits) }
    return (d, m, resolved, bytes, values, Grid(grid[0], grid[1], grid[2]))
}

@_cdecl("tether_spawn_module")
public func tether_spawn_module(_ device: OpaquePointer?, _ module: OpaquePointer?, _ bindings: UnsafePointer<tether_binding>?,
                                _ bindingCount: Int, _ push: UnsafeRawPointer?, _ pushBytes: Int,
                                _ spec: UnsafePointer<tether_specialization>?, _ specCount: Int,
                                _ grid: UnsafePointer<UInt32>?, _ priority: tether_priority,
                                _ thread: UnsafeMutablePointer<tether_thread>?) -> tether_status {
    api { () throws(TetherError) in
        let out = try required(thread, "thread")
        let (d, m, b, p, s, g) = try moduleLaunch(device, module, bindings, bindingCount, push, pushBytes, spec, specCount, grid)
        let handle = try d.spawn(m, bindings: b, pushConstants: p, specialization: s, grid: g, priority: try priorityClass(priority))
        out.pointee = handle.id.rawValue
    }
}

@_cdecl("tether_run_module")
public func tether_run_module(_ device: OpaquePointer?, _ module: OpaquePointer?, _ bindings: UnsafePointer<tether_binding>?,
                              _ bindingCount: Int, _ push: UnsafeRawPointer?, _ pushBytes: Int,
                              _ spec: UnsafePointer<tether_specialization>?, _ specCount: Int,
                              _ grid: UnsafePointer<UInt32>?, _ timeoutSeconds: Double,
                              _ report: UnsafeMutablePointer<tether_thread_report>?) -> tether_status {
    api { () throws(TetherError) in
        let out = try required(report, "report")
        let (d, m, b, p, s, g) = try moduleLaunch(device, module, bindings, bindingCount, push, pushBytes, spec, specCount, grid)
        let r = try d.run(m, bindings: b, pushConstants: p, specialization: s, grid: g,
                          timeoutSeconds: try optionalTimeout(timeoutSeconds, "timeout_seconds"))
        out.pointee = tether_thread_report(r)
    }
}

/// `list[index]`, or `invalidArgument` naming the index (a C caller's `size_t`, shown unsigned).
private func element<T>(_ list: [T], _ index: Int, _ what: String) throws(TetherError) -> T {
    guard index >= 0, index < list.count else { throw invalid("\(what) index \(UInt(bitPattern: index)) is not below \(list.count)") }
    return list[index]
}
