import CTether
import Tether

// The tool half of tether.h: a connection that binds nothing (`DaemonControl`), for ps, killing
// a process or a thread, and reading teardown timelines.

@_cdecl("tether_control_open")
public func tether_control_open(_ socketPath: UnsafePointer<CChar>?, _ timeoutSeconds: Double,
                                _ control: UnsafeMutablePointer<OpaquePointer?>?) -> tether_status {
    api { () throws(TetherError) in
        let out = try required(control, "control")
        guard !timeoutSeconds.isNaN else { throw invalid("timeout_seconds is NaN; pass seconds, or 0 for the default 10") }
        let c = try DaemonControl(socketPath: socketPath.map { String(cString: $0) },
                                  timeoutSeconds: timeoutSeconds > 0 ? timeoutSeconds : 10)
        out.pointee = Handles.insert(.control(c))
    }
}

@_cdecl("tether_control_close")
public func tether_control_close(_ control: OpaquePointer?) -> tether_status {
    api { () throws(TetherError) in
        guard case .control(let c)? = Handles.lookup(control), Handles.remove(control) != nil else {
            throw Handles.badHandle(control, "control")
        }
        c.close()
    }
}

@_cdecl("tether_ping")
public func tether_ping(_ control: OpaquePointer?) -> tether_status {
    api { () throws(TetherError) in try Handles.control(control).ping() }
}

@_cdecl("tether_ps")
public func tether_ps(_ control: OpaquePointer?, _ table: UnsafeMutablePointer<OpaquePointer?>?) -> tether_status {
    api { () throws(TetherError) in
        let c = try Handles.control(control)
        let out = try required(table, "table")
        out.pointee = Handles.insert(.processTable(try c.ps()))
    }
}

@_cdecl("tether_process_table_count")
public func tether_process_table_count(_ table: OpaquePointer?, _ spaces: UnsafeMutablePointer<Int>?) -> tether_status {
    api { () throws(TetherError) in
        let t = try Handles.processTable(table)
        try required(spaces, "spaces").pointee = t.spaces.count
    }
}

func space(_ t: ProcessTable, _ index: Int) throws(TetherError) -> SpaceReport {
    guard index >= 0, index < t.spaces.count else {
        throw invalid("space index \(UInt(bitPattern: index)) is outside the table's \(t.spaces.count) address spaces")
    }
    return t.spaces[index]
}

@_cdecl("tether_process_table_space")
public func tether_process_table_space(_ table: OpaquePointer?, _ index: Int,
                                       _ info: UnsafeMutablePointer<tether_space_info>?) -> tether_status {
    api { () throws(TetherError) in
        let t = try Handles.processTable(table)
        let out = try required(info, "space")
        let s = try space(t, index)
        var i = tether_space_info()
        i.space = s.space.rawValue
        i.pid = s.pid
        i.uid = s.uid
        i.policy = Int32(s.policy.rawValue)
        i.owner_alive = s.ownerAlive ? 1 : 0
        i.connections = s.connections
        i.regions = s.regions
        i.mirrored_bytes = s.mirroredBytes
        i.device_nanos = s.deviceNanos
        i.thread_count = UInt32(s.threads.count)
        out.pointee = i
    }
}

@_cdecl("tether_process_table_thread")
public func tether_process_table_thread(_ table: OpaquePointer?, _ spaceIndex: Int, _ threadIndex: Int,
                                        _ thread: UnsafeMutablePointer<tether_thread_report>?) -> tether_status {
    api { () throws(TetherError) in
        let t = try Handles.processTable(table)
        let out = try required(thread, "thread")
        let s = try space(t, spaceIndex)
        guard threadIndex >= 0, threadIndex < s.threads.count else {
            throw invalid("thread index \(UInt(bitPattern: threadIndex)) is outside the \(s.threads.count) threads of pid \(s.pid)")
        }
        out.pointee = tether_thread_report(s.threads[threadIndex])
    }
}

@_cdecl("tether_process_table_free")
public func tether_process_table_free(_ table: OpaquePointer?) -> tether_status {
    api { () throws(TetherError) in
        guard case .processTable? = Handles.lookup(table), Handles.remove(table) != nil else {
            throw Handles.badHandle(table, "process table")
        }
    }
}

@_cdecl("tether_kill_process")
public func tether_kill_process(_ control: OpaquePointer?, _ pid: Int32, _ threadsKilled: UnsafeMutablePointer<UInt32>?) -> tether_status {
    api { () throws(TetherError) in
        let n = try Handles.control(control).killProcess(pid: pid)
        threadsKilled?.pointee = n
    }
}

@_cdecl("tether_kill_thread")
public func tether_kill_thread(_ control: OpaquePointer?, _ thread: tether_thread, _ wasAlive: UnsafeMutablePointer<Int32>?) -> tether_status {
    api { () throws(TetherError) in
        let alive = try Handles.control(control).killThread(ThreadID(rawValue: thread))
        wasAlive?.pointee = alive ? 1 : 0
    }
}

@_cdecl("tether_timelines")
public func tether_timelines(_ control: OpaquePointer?, _ pid: Int32, _ timelines: UnsafeMutablePointer<tether_timeline>?,
                             _ capacity: Int, _ count: UnsafeMutablePointer<Int>?) -> tether_status {
    api { () throws(TetherError) in
        let c = try Handles.control(control)
        _ = try required(count, "count")
        try fill(try c.timelines(pid: pid), timelines, capacity, count, tether_timeline.init)
    }
}

@_cdecl("tether_await_teardown")
public func tether_await_teardown(_ control: OpaquePointer?, _ pid: Int32, _ timeoutSeconds: Double,
                                  _ timelines: UnsafeMutablePointer<tether_timeline>?, _ capacity: Int,
                                  _ count: UnsafeMutablePointer<Int>?) -> tether_status {
    api { () throws(TetherError) in
        let c = try Handles.control(control)
        _ = try required(count, "count")
        guard timeoutSeconds >= 0, timeoutSeconds.isFinite else {
            throw invalid("timeout_seconds must be zero or a positive number of seconds, not \(timeoutSeconds)")
        }
        let list = try c.awaitTeardown(pid: pid, timeoutSeconds: timeoutSeconds)
        guard !list.isEmpty else {
            count?.pointee = 0
            throw TetherError(.timedOut, "the address space of pid \(pid) was not released within \(timeoutSeconds) s")
        }
        try fill(list, timelines, capacity, count, tether_timeline.init)
    }
}
