import CTether
import Tether

extension TetherError.Code {
    /// `TETHER_BAD_HANDLE`: the C interface's own, never on the wire.
    static let badHandle = TetherError.Code(rawValue: 100)
    /// `TETHER_BUFFER_TOO_SMALL`.
    static let bufferTooSmall = TetherError.Code(rawValue: 101)
}

/// Runs one C call: success clears this thread's last error; a `TetherError` becomes its status
/// code plus its sentence. Nothing in the C interface traps on what a caller passes.
func api(_ body: () throws(TetherError) -> Void) -> tether_status {
    do throws(TetherError) {
        try body()
        tether_internal_set_error(nil)
        return TETHER_OK
    } catch {
        tether_internal_set_error(error.message)
        return tether_status(rawValue: UInt32(error.code.rawValue))
    }
}

func invalid(_ message: String) -> TetherError { TetherError(.invalidArgument, message) }

/// An out-parameter that must not be NULL.
func required<T>(_ p: UnsafeMutablePointer<T>?, _ name: String) throws(TetherError) -> UnsafeMutablePointer<T> {
    guard let p else { throw invalid("\(name) is NULL; pass the address of a variable to receive the result") }
    return p
}

/// A C timeout: negative means none; NaN is a mistake.
func optionalTimeout(_ seconds: Double, _ name: String) throws(TetherError) -> Double? {
    guard !seconds.isNaN else { throw invalid("\(name) is NaN; pass seconds, or a negative number for no limit") }
    return seconds < 0 ? nil : seconds
}

/// Copies `string` into a fixed C char array (a Swift tuple), NUL-terminated, truncated at a
/// UTF-8 character boundary.
func copyCString<T>(_ string: String, into field: inout T) {
    withUnsafeMutableBytes(of: &field) { buffer in
        guard buffer.count > 0 else { return }
        var utf8 = Array(string.utf8)
        if utf8.count > buffer.count - 1 {
            var cut = buffer.count - 1
            while cut > 0, utf8[cut] & 0xC0 == 0x80 { cut -= 1 }
            utf8 = Array(utf8[..<cut])
        }
        for (i, b) in utf8.enumerated() { buffer[i] = b }
        buffer[utf8.count] = 0
    }
}

extension tether_thread_report {
    init(_ r: ThreadReport) {
        self.init()
        thread = r.thread.rawValue
        state = Int32(r.state.rawValue)
        priority = Int32(r.priority.rawValue)
        device_nanos = r.deviceNanos
        error_status = Int32(r.error?.code.rawValue ?? 0)
        copyCString(r.kernel, into: &kernel)
        copyCString(r.error?.message ?? "", into: &error_message)
    }
}

extension tether_timeline {
    init(_ t: TeardownTimeline) {
        self.init()
        space = t.space.rawValue
        pid = t.pid
        threads_killed = t.threadsKilled
        notice_nanos = t.noticeNanos
        quiesced_nanos = t.quiescedNanos
        released_nanos = t.releasedNanos
        bytes_freed = t.bytesFreed
        regions_freed = t.regionsFreed
        copyCString(t.reason, into: &reason)
    }
}

extension tether_backend {
    init(_ kind: BackendKind) {
        self = kind == .vulkan ? TETHER_BACKEND_VULKAN : TETHER_BACKEND_SOFTWARE
    }
}

/// Writes `items` into the caller's array of `capacity`, and their number into `count`.
func fill<T, C>(_ items: [T], _ array: UnsafeMutablePointer<C>?, _ capacity: Int, _ count: UnsafeMutablePointer<Int>?,
                _ convert: (T) -> C) throws(TetherError) {
    let count = try required(count, "count")
    guard capacity >= 0 else { throw invalid("capacity \(capacity) is negative") }
    if capacity > 0 && array == nil { throw invalid("the array is NULL but capacity is \(capacity)") }
    count.pointee = items.count
    if let array {
        for (i, item) in items.prefix(capacity).enumerated() { array[i] = convert(item) }
    }
    guard items.count <= capacity else {
        throw TetherError(.bufferTooSmall, "\(items.count) results do not fit an array of \(capacity); the first \(capacity) were written")
    }
}
