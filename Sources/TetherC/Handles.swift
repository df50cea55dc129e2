import Tether

/// The objects behind the C interface's opaque handles.
///
/// A handle is an id in this table, dressed as a pointer; it is never dereferenced. So NULL, a
/// closed handle, or a stray pointer is looked up, not followed, and answers `TETHER_BAD_HANDLE`
/// instead of crashing. Ids grow and are never reused (like the daemon's), so a stale handle can
/// never name a newer object.
///
/// The table sits behind `Locked` (a pthread mutex), not `Synchronization.Mutex`: the C interface
/// must keep working in a forked child (see `Locked`). Every section is a dictionary operation.
enum Handles {
    enum Object {
        case device(Device)
        /// The device it belongs to: closing the device invalidates its memory handles.
        case memory(MirroredMemory, device: UInt)
        /// Like memory, a module belongs to its device.
        case module(KernelModule, device: UInt)
        case control(DaemonControl)
        case processTable(ProcessTable)

        var kind: String {
            switch self {
            case .device: "device"
            case .memory: "memory"
            case .module: "module"
            case .control: "control"
            case .processTable: "process table"
            }
        }
    }

    private struct State {
        /// Starts above the first page, so that a small integer passed by mistake is not a handle.
        var next: UInt = 0x1000
        var objects: [UInt: Object] = [:]
    }

    private static let table = Locked(State())

    static func insert(_ object: Object) -> OpaquePointer {
        let id = table.withLock { s -> UInt in
            let id = s.next
            s.next += 1
            s.objects[id] = object
            return id
        }
        return OpaquePointer(bitPattern: id)!
    }

    static func id(_ handle: OpaquePointer?) -> UInt { handle.map { UInt(bitPattern: $0) } ?? 0 }

    static func lookup(_ handle: OpaquePointer?) -> Object? {
        let id = id(handle)
        return table.withLock { $0.objects[id] }
    }

    @discardableResult
    static func remove(_ handle: OpaquePointer?) -> Object? {
        let id = id(handle)
        return table.withLock { $0.objects.removeValue(forKey: id) }
    }

    /// Puts `object` back under `handle` (after an operation that removed it failed).
    static func restore(_ handle: OpaquePointer?, _ object: Object) {
        let id = id(handle)
        table.withLock { $0.objects[id] = object }
    }

    /// Removes the memory and module handles of device `id` (closing a device unmaps its memory
    /// and ends its address space).
    static func removeMemory(ofDevice device: UInt) {
        table.withLock { s in
            s.objects = s.objects.filter { _, object in
                switch object {
                case .memory(_, let owner), .module(_, let owner): return owner != device
                default: return true
                }
            }
        }
    }

    // MARK: Typed lookups

    static func badHandle(_ handle: OpaquePointer?, _ kind: String) -> TetherError {
        if handle == nil { return TetherError(.badHandle, "the \(kind) handle is NULL") }
        if let other = lookup(handle), other.kind != kind {
            return TetherError(.badHandle, "a \(other.kind) handle was passed where a \(kind) handle belongs")
        }
        return TetherError(.badHandle, "the \(kind) handle was closed already, or never was one")
    }

    static func device(_ handle: OpaquePointer?) throws(TetherError) -> Device {
        guard case .device(let d)? = lookup(handle) else { throw badHandle(handle, "device") }
        return d
    }

    static func memory(_ handle: OpaquePointer?) throws(TetherError) -> MirroredMemory {
        guard case .memory(let m, _)? = lookup(handle) else { throw badHandle(handle, "memory") }
        return m
    }

    static func module(_ handle: OpaquePointer?) throws(TetherError) -> (KernelModule, device: UInt) {
        guard case .module(let m, let d)? = lookup(handle) else { throw badHandle(handle, "module") }
        return (m, d)
    }

    static func control(_ handle: OpaquePointer?) throws(TetherError) -> DaemonControl {
        guard case .control(let c)? = lookup(handle) else { throw badHandle(handle, "control") }
        return c
    }

    static func processTable(_ handle: OpaquePointer?) throws(TetherError) -> ProcessTable {
        guard case .processTable(let t)? = lookup(handle) else { throw badHandle(handle, "process table") }
        return t
    }
}
