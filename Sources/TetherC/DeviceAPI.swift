import CTether
import Tether

// The device half of tether.h: open/close, mirrored memory, device threads. Each function checks
// what the C caller passed (NULL, ranges, handles), then calls the Swift library (`Device`),
// which checks the rest; the daemon checks everything again.

@_cdecl("tether_device_options_init")
public func tether_device_options_init(_ options: UnsafeMutablePointer<tether_device_options>?) {
    guard let options else { return }
    var o = tether_device_options()
    o.struct_size = UInt32(MemoryLayout<tether_device_options>.size)
    o.socket_path = nil
    o.policy = TETHER_POLICY_DEFAULT.rawValue
    o.backend = Int32(TETHER_BACKEND_AUTO.rawValue)
    o.close_on_fork = 1
    o.request_timeout_seconds = 30
    options.pointee = o
}

/// The Swift options for C ones (nil: defaults).
func deviceOptions(_ p: UnsafePointer<tether_device_options>?) throws(TetherError) -> DeviceOptions {
    guard let p else { return DeviceOptions() }
    // Read the size first: a caller built against an older, shorter struct must not have bytes
    // read past its end.
    let size = UnsafeRawPointer(p).loadUnaligned(as: UInt32.self)
    guard size >= MemoryLayout<tether_device_options>.size else {
        throw invalid("tether_device_options.struct_size is \(size), not \(MemoryLayout<tether_device_options>.size); call tether_device_options_init first")
    }
    let o = p.pointee
    let policy: LifetimePolicy?
    switch o.policy {
    case TETHER_POLICY_DEFAULT.rawValue: policy = nil
    case TETHER_POLICY_EXIT.rawValue: policy = .exit
    case TETHER_POLICY_RELEASE.rawValue: policy = .release
    default: throw invalid("policy \(o.policy) is none of TETHER_POLICY_DEFAULT, _EXIT, _RELEASE")
    }
    let backend: BackendChoice
    switch UInt32(bitPattern: o.backend) {
    case TETHER_BACKEND_AUTO.rawValue: backend = .auto
    case TETHER_BACKEND_VULKAN.rawValue: backend = .vulkan
    case TETHER_BACKEND_SOFTWARE.rawValue: backend = .software
    default: throw invalid("backend \(o.backend) is none of TETHER_BACKEND_AUTO, _VULKAN, _SOFTWARE")
    }
    return DeviceOptions(socketPath: o.socket_path.map { String(cString: $0) }, policy: policy, backend: backend,
                         closeOnFork: o.close_on_fork != 0, requestTimeoutSeconds: o.request_timeout_seconds)
}

@_cdecl("tether_open")
public func tether_open(_ options: UnsafePointer<tether_device_options>?,
                        _ device: UnsafeMutablePointer<OpaquePointer?>?) -> tether_status {
    api { () throws(TetherError) in
        let out = try required(device, "device")
        let d = try Device(try deviceOptions(options))
        out.pointee = Handles.insert(.device(d))
    }
}

@_cdecl("tether_close")
public func tether_close(_ device: OpaquePointer?) -> tether_status {
    api { () throws(TetherError) in
        guard case .device(let d)? = Handles.lookup(device), Handles.remove(device) != nil else {
            throw Handles.badHandle(device, "device")
        }
        Handles.removeMemory(ofDevice: Handles.id(device))
        d.close()
    }
}

@_cdecl("tether_device_get_info")
public func tether_device_get_info(_ device: OpaquePointer?, _ info: UnsafeMutablePointer<tether_device_info>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.device(device)
        let out = try required(info, "info")
        let hello = d.hello
        var i = tether_device_info()
        i.space = hello.space.rawValue
        i.pid = hello.pid
        i.policy = Int32(hello.policy.rawValue)
        i.backend = Int32(tether_backend(hello.backend).rawValue)
        i.connection_fd = d.connectionFD
        copyCString(hello.deviceName, into: &i.device_name)
        out.pointee = i
    }
}

// MARK: Memory

@_cdecl("tether_mirror")
public func tether_mirror(_ device: OpaquePointer?, _ bytes: Int, _ memory: UnsafeMutablePointer<OpaquePointer?>?,
                          _ base: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.device(device)
        let out = try required(memory, "memory")
        // size_t arrives as Int: a value above Int.max reads as negative.
        guard bytes > 0 else { throw invalid("mirror needs a positive number of bytes, not \(UInt(bitPattern: bytes))") }
        let m = try d.mirror(bytes: bytes)
        out.pointee = Handles.insert(.memory(m, device: Handles.id(device)))
        base?.pointee = m.base
    }
}

@_cdecl("tether_unmirror")
public func tether_unmirror(_ memory: OpaquePointer?) -> tether_status {
    api { () throws(TetherError) in
        guard case .memory(let m, let owner)? = Handles.lookup(memory) else { throw Handles.badHandle(memory, "memory") }
        guard case .device(let d)? = Handles.lookup(OpaquePointer(bitPattern: owner)) else {
            throw Handles.badHandle(memory, "memory")
        }
        // Claimed first, so two racing unmirrors of one handle do not both reach the device.
        guard Handles.remove(memory) != nil else { throw Handles.badHandle(memory, "memory") }
        do throws(TetherError) {
            try d.unmirror(m)
        } catch {
            // The device keeps the memory mirrored when it refuses for a reason other than the
            // region being gone; then so does the handle.
            if error.code != .deviceLost && error.code != .ownerExited && error.code != .noSuchRegion {
                Handles.restore(memory, .memory(m, device: owner))
            }
            throw error
        }
    }
}

@_cdecl("tether_memory_base")
public func tether_memory_base(_ memory: OpaquePointer?, _ base: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> tether_status {
    api { () throws(TetherError) in
        let m = try Handles.memory(memory)
        try required(base, "base").pointee = m.base
    }
}

@_cdecl("tether_memory_size")
public func tether_memory_size(_ memory: OpaquePointer?, _ bytes: UnsafeMutablePointer<Int>?) -> tether_status {
    api { () throws(TetherError) in
        let m = try Handles.memory(memory)
        try required(bytes, "bytes").pointee = m.size
    }
}

// MARK: Threads

func builtinKernel(_ k: tether_kernel) throws(TetherError) -> BuiltinKernel {
    let all = BuiltinKernel.allCases
    guard k.rawValue < all.count else {
        throw TetherError(.unknownKernel, "kernel \(k.rawValue) is not a built-in kernel (0 to \(all.count - 1): \(all.map(\.rawValue).joined(separator: ", ")))")
    }
    return all[Int(k.rawValue)]
}

func priorityClass(_ p: tether_priority) throws(TetherError) -> PriorityClass {
    guard p.rawValue <= UInt32(UInt8.max), let c = PriorityClass(rawValue: UInt8(p.rawValue)) else {
        throw invalid("priority \(p.rawValue) is none of TETHER_PRIORITY_LOW, _NORMAL, _HIGH")
    }
    return c
}

func kernelArguments(_ args: UnsafePointer<UInt64>?, _ count: Int) throws(TetherError) -> [UInt64] {
    guard count >= 0, count <= KernelABI.maxArguments else {
        throw invalid("a kernel takes at most \(KernelABI.maxArguments) arguments, not \(UInt(bitPattern: count))")
    }
    guard count == 0 || args != nil else { throw invalid("args is NULL but arg_count is \(count)") }
    guard let args else { return [] }
    return Array(UnsafeBufferPointer(start: args, count: count))
}

@_cdecl("tether_kernel_from_name")
public func tether_kernel_from_name(_ name: UnsafePointer<CChar>?, _ kernel: UnsafeMutablePointer<tether_kernel>?) -> tether_status {
    api { () throws(TetherError) in
        guard let name else { throw invalid("the kernel name is NULL") }
        let out = try required(kernel, "kernel")
        let text = String(cString: name)
        guard let index = BuiltinKernel.allCases.firstIndex(where: { $0.rawValue == text }) else {
            throw TetherError(.unknownKernel, "no built-in kernel is called \"\(text)\" (there are \(BuiltinKernel.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        out.pointee = tether_kernel(rawValue: UInt32(index))
    }
}

@_cdecl("tether_spawn")
public func tether_spawn(_ device: OpaquePointer?, _ kernel: tether_kernel, _ args: UnsafePointer<UInt64>?, _ argCount: Int,
                         _ groups: UInt32, _ priority: tether_priority, _ persistentSeconds: Double,
                         _ thread: UnsafeMutablePointer<tether_thread>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.device(device)
        let out = try required(thread, "thread")
        let handle = try d.spawn(try builtinKernel(kernel), args: try kernelArguments(args, argCount), groups: groups,
                                 priority: try priorityClass(priority), persistentSeconds: persistentSeconds)
        out.pointee = handle.id.rawValue
    }
}

@_cdecl("tether_run")
public func tether_run(_ device: OpaquePointer?, _ kernel: tether_kernel, _ args: UnsafePointer<UInt64>?, _ argCount: Int,
                       _ groups: UInt32, _ timeoutSeconds: Double,
                       _ report: UnsafeMutablePointer<tether_thread_report>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.device(device)
        let out = try required(report, "report")
        let r = try d.run(try builtinKernel(kernel), args: try kernelArguments(args, argCount), groups: groups,
                          timeoutSeconds: try optionalTimeout(timeoutSeconds, "timeout_seconds"))
        out.pointee = tether_thread_report(r)
    }
}

@_cdecl("tether_join")
public func tether_join(_ device: OpaquePointer?, _ thread: tether_thread, _ timeoutSeconds: Double,
                        _ report: UnsafeMutablePointer<tether_thread_report>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.device(device)
        let out = try required(report, "report")
        let r = try d.wait(DeviceThreadHandle(id: ThreadID(rawValue: thread)),
                           timeoutSeconds: try optionalTimeout(timeoutSeconds, "timeout_seconds"))
        out.pointee = tether_thread_report(r)
    }
}

@_cdecl("tether_kill")
public func tether_kill(_ device: OpaquePointer?, _ thread: tether_thread, _ wasAlive: UnsafeMutablePointer<Int32>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.device(device)
        let alive = try d.kill(DeviceThreadHandle(id: ThreadID(rawValue: thread)))
        wasAlive?.pointee = alive ? 1 : 0
    }
}

@_cdecl("tether_thread_status")
public func tether_thread_status(_ device: OpaquePointer?, _ thread: tether_thread,
                                 _ report: UnsafeMutablePointer<tether_thread_report>?) -> tether_status {
    api { () throws(TetherError) in
        let d = try Handles.device(device)
        let out = try required(report, "report")
        out.pointee = tether_thread_report(try d.status(DeviceThreadHandle(id: ThreadID(rawValue: thread))))
    }
}
