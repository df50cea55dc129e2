import Synchronization
import TetherCore
import TetherDevice
import TetherSys

/// Which source of early death notices a daemon uses besides the pidfd (`tether daemon --notifier`).
public enum ExitNotifierChoice: String, Sendable, CaseIterable {
    /// BPF where the daemon may load it, else the pidfd alone (saying why, in one line).
    case auto
    /// BPF, or the daemon refuses to start.
    case bpf
    /// The owner's pidfd and the connection's hang-up only, as before BPF.
    case pidfd
}

/// The BPF exit notifier: an early notice source feeding the one exit notifier chain — the
/// user-space twin of a notifier in `mmput`, with no kernel patch.
///
/// The pidfd only becomes readable after the kernel has freed the dying process's memory (tens of
/// ms for a GiB); `sched_process_exit` fires before that, and a SIGKILL is visible the moment it is
/// queued. So for every `exit`-policy address space the daemon registers the owner's thread-group
/// id, start time and a cookie with `BPFExitHooks`, and starts the chain on the first event for it
/// — `bpf-sigkill`, `bpf-exit` or `bpf-exec` in the timeline.
///
/// Identity, against pid reuse (see `docs/exit-notifiers.md`):
/// - the cookie is this notifier's own counter, never reused: an event names one address space,
///   never "whoever has pid N now", so a late event can only reach the space it was raised for;
/// - the start time is read from `/proc/PID/stat` after the pidfd was opened, and the pidfd is
///   checked afterwards: if the owner already exited, the entry is dropped and the pidfd (still the
///   authority) reports it. The program compares it with the dying task's, so a process reusing a
///   dead owner's pid never matches its entry;
/// - `forget` removes an entry only while it still carries the space's cookie, so a newer owner of
///   the same pid keeps its registration.
///
/// `registered` is guarded by its mutex: `watch` and `events` run on the event loop, `forget` on the
/// teardown executor.
final class BPFExitNotifier: Sendable {
    let hooks: BPFExitHooks
    private let registered = Mutex(Registrations())
    private let nextCookie = Atomic<UInt64>(1)

    init(hooks: BPFExitHooks) { self.hooks = hooks }

    /// Registers `space`'s owner. Returns false (and registers nothing) if the owner is already
    /// gone or the map is full: the pidfd then covers it, as without BPF.
    @discardableResult
    func watch(_ space: AddressSpace) -> Bool {
        guard let start = ProcessStart.ticks(of: space.pid) else { return false }
        let cookie = nextCookie.add(1, ordering: .relaxed).oldValue
        registered.withLock { $0.add(space, cookie: cookie) }
        do {
            try hooks.watch(tgid: space.pid, startTicks: start, cookie: cookie)
        } catch {
            _ = registered.withLock { $0.remove(space) }
            return false
        }
        // The start time was read by pid: it is the owner's only if the owner was still alive after.
        if Pidfd.hasExited(space.pidfd) {
            forget(space)
            return false
        }
        return true
    }

    /// Drops `space`'s registration (it was released, whatever noticed it first).
    func forget(_ space: AddressSpace) {
        if let cookie = registered.withLock({ $0.remove(space) }) { hooks.forget(tgid: space.pid, cookie: cookie) }
    }

    /// The spaces the kernel reported since the last call, with the timeline's name for the source.
    func events() -> [(space: AddressSpace, reason: String)] {
        hooks.consume().compactMap { event in
            guard let space = registered.withLock({ $0.remove(cookie: event.cookie) }), space.pid == event.tgid else { return nil }
            return (space, Self.reason(event.kind))
        }
    }

    static func reason(_ kind: BPFExitHooks.Kind) -> String {
        switch kind {
        case .exit: "bpf-exit"
        case .sigkill: "bpf-sigkill"
        case .exec: "bpf-exec"
        }
    }
}

/// Registered spaces by cookie, and each space's cookie.
struct Registrations {
    private var spaces: [UInt64: AddressSpace] = [:]
    private var cookies: [ObjectIdentifier: UInt64] = [:]

    mutating func add(_ space: AddressSpace, cookie: UInt64) {
        spaces[cookie] = space
        cookies[ObjectIdentifier(space)] = cookie
    }

    mutating func remove(_ space: AddressSpace) -> UInt64? {
        guard let cookie = cookies.removeValue(forKey: ObjectIdentifier(space)) else { return nil }
        spaces[cookie] = nil
        return cookie
    }

    mutating func remove(cookie: UInt64) -> AddressSpace? {
        guard let space = spaces.removeValue(forKey: cookie) else { return nil }
        cookies[ObjectIdentifier(space)] = nil
        return space
    }
}

extension Daemon {
    /// The BPF notifier if `choice` allows it and the machine does, and one line saying which
    /// notifier is active (for the start-up line and `tether devices`).
    static func openNotifier(_ choice: ExitNotifierChoice) -> (BPFExitNotifier?, String) {
        if choice == .pidfd { return (nil, "pidfd (--notifier pidfd)") }
        do {
            return (BPFExitNotifier(hooks: try BPFExitHooks.open()),
                    "bpf (SIGKILL, sched_process_exit before exit_mm, exec; pidfd as authority)")
        } catch {
            return (nil, "pidfd (BPF unavailable: \(error.message))")
        }
    }
}

extension ExitNotifierChoice {
    /// What a daemon started here with `--notifier auto` would use, in one line (loads the BPF
    /// program and unloads it again).
    public static func probe() -> String { Daemon.openNotifier(.auto).1 }
}
