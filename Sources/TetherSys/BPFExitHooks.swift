import CTetherBPF
import Glibc
import TetherCore

/// The kernel's own exit path, observed: the exit notifier's BPF program, loaded and attached.
///
/// ```swift
/// let hooks = try BPFExitHooks.open()          // needs CAP_BPF + CAP_PERFMON (or root), BTF, Linux ≥ 6.16
/// try hooks.watch(tgid: pid, startTicks: ProcessStart.ticks(of: pid)!, cookie: 7)
/// // epoll on hooks.ringFD; when readable:
/// for event in hooks.consume() { … event.cookie == 7, event.kind == .sigkill … }
/// ```
///
/// The program (`bpf/exit_notifier.bpf.c`) reports, for registered thread groups only, the first
/// of: a SIGKILL queued for them (`signal_generate`), the group's last thread in `do_exit`
/// (`sched_process_exit` with `group_dead`, which precedes `exit_mm` on Linux ≥ 6.16), and an exec
/// (`sched_process_exec`). An entry names its owner by thread-group id *and* start time (clock
/// ticks since boot, `/proc/PID/stat` field 22): a later process that reuses the pid has another
/// start time and is never reported. Each event carries the registrant's cookie, and the first
/// event removes the entry, so one registration is reported at most once.
///
/// `watch` and `forget` are serialised by a lock; `consume` belongs to one thread at a time (the
/// daemon's event loop). libbpf is opened at run time, so this type exists everywhere and `open`
/// says in one sentence why it cannot be used where it cannot.
public final class BPFExitHooks: @unchecked Sendable {
    public enum Kind: UInt32, Sendable {
        /// The thread group's last thread is in `do_exit` (before `exit_mm`).
        case exit = 1
        /// A SIGKILL was queued for the thread group: it cannot survive it.
        case sigkill = 2
        /// The thread group replaced its image.
        case exec = 3
    }

    public struct Event: Sendable, Equatable {
        public var cookie: UInt64
        /// When the hook ran, CLOCK_MONOTONIC nanoseconds.
        public var kernelNanos: UInt64
        public var tgid: Int32
        public var kind: Kind
    }

    /// Owned; closed in `deinit`.
    private let handle: OpaquePointer
    /// Serialises `watch` and `forget` (the program only ever removes entries).
    private let monitor = Monitor()
    /// `consume`'s buffer; the consuming thread's only.
    private var buffer = [tether_bpf_event](repeating: tether_bpf_event(), count: 256)

    /// Loads and attaches the program. The error's message is one sentence saying why BPF cannot be
    /// used here (no libbpf, no privileges, no BTF, a kernel whose exit tracepoint follows `exit_mm`).
    public static func open() throws(TetherError) -> BPFExitHooks {
        var error = [CChar](repeating: 0, count: 512)
        guard let handle = tether_bpf_open(&error, Int32(error.count)) else {
            throw TetherError(.unsupported, String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return BPFExitHooks(handle)
    }

    private init(_ handle: OpaquePointer) { self.handle = handle }

    deinit { tether_bpf_close(handle) }

    /// The ring buffer's fd: readable (level-triggered) while events wait to be consumed.
    public var ringFD: Int32 { tether_bpf_ring_fd(handle) }

    /// Registers thread group `tgid`, started at `startTicks`, under `cookie` (replacing any entry
    /// of that tgid).
    public func watch(tgid: Int32, startTicks: UInt64, cookie: UInt64) throws(SystemError) {
        let r = monitor.withLock { tether_bpf_watch(handle, UInt32(bitPattern: tgid), startTicks, cookie) }
        if r < 0 { throw SystemError("bpf_map_update_elem", errno: -r) }
    }

    /// Removes the entry of `tgid` if it still carries `cookie`; returns whether one was removed.
    @discardableResult
    public func forget(tgid: Int32, cookie: UInt64) -> Bool {
        monitor.withLock { tether_bpf_forget(handle, UInt32(bitPattern: tgid), cookie) == 0 }
    }

    /// Every event waiting in the ring buffer, oldest first.
    public func consume() -> [Event] {
        var events: [Event] = []
        while true {
            let n = buffer.withUnsafeMutableBufferPointer { tether_bpf_consume(handle, $0.baseAddress, Int32($0.count)) }
            if n <= 0 { return events }
            for e in buffer[0..<Int(n)] {
                guard let kind = Kind(rawValue: e.kind) else { continue }
                events.append(Event(cookie: e.cookie, kernelNanos: e.ktime_ns, tgid: Int32(bitPattern: e.tgid), kind: kind))
            }
            if Int(n) < buffer.count { return events }
        }
    }
}

/// A process's start time as `/proc` reports it: clock ticks since boot (`/proc/PID/stat` field 22).
public enum ProcessStart {
    /// The start time of `pid`, or nil if it has no `/proc` entry. A caller that holds a pidfd
    /// checks afterwards that the process is still alive, or the pid may have named another one.
    public static func ticks(of pid: Int32) -> UInt64? {
        let fd = Glibc.open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 1024)
        let n = read(fd, &bytes, bytes.count)
        guard n > 0 else { return nil }
        // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
        guard let close = bytes[0..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = bytes[(close + 1)..<n].split(separator: UInt8(ascii: " "))
        // fields[0] is field 3 (state), so field 22 is fields[19].
        guard fields.count > 19 else { return nil }
        return UInt64(String(decoding: fields[19], as: UTF8.self))
    }
}
