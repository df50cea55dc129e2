import CTetherLinux
import Glibc

/// A mutex with a condition variable (pthread): state changes under `withLock`, waiters block in
/// `wait` until a `broadcast`. Swift's `Mutex` has no condition variable, and the scheduler's worker
/// and killers must sleep until a slice ends.
///
/// The mutex inherits priority (`PTHREAD_PRIO_INHERIT`): device threads run in `SCHED_IDLE` and
/// take locks the control plane needs (the software pool's), and one preempted while holding it
/// on a busy machine would hold a real-time killer back for as long as it stays starved —
/// measured: 38 ms during an exit storm. With inheritance the holder runs at once.
public final class Monitor: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        var mutexAttr = pthread_mutexattr_t()
        pthread_mutexattr_init(&mutexAttr)
        pthread_mutexattr_setprotocol(&mutexAttr, Int32(PTHREAD_PRIO_INHERIT))
        pthread_mutex_init(mutex, &mutexAttr)
        pthread_mutexattr_destroy(&mutexAttr)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    @inline(__always)
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits (the lock must be held) until broadcast or until `deadline` (CLOCK_MONOTONIC ns).
    /// Returns false on timeout.
    @discardableResult
    public func wait(untilNanos deadline: UInt64? = nil) -> Bool {
        guard let deadline else {
            pthread_cond_wait(cond, mutex)
            return true
        }
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        return pthread_cond_timedwait(cond, mutex, &ts) == 0
    }

    public func broadcast() { pthread_cond_broadcast(cond) }

    /// Runs `body` with the lock released (the caller holds it), then takes it back: for code
    /// that must drop the lock in the middle of a critical section.
    public func unlocked(_ body: () -> Void) {
        pthread_mutex_unlock(mutex)
        body()
        pthread_mutex_lock(mutex)
    }
}

/// A counter threads sleep on until it moves (a futex). Unlike a condition variable's broadcast,
/// `advance` never blocks: glibc's broadcast can wait for earlier-woken waiters to run, and a
/// control-plane thread must never wait for a starved `SCHED_IDLE` device thread that way.
public final class WakeCounter: @unchecked Sendable {
    private let word: UnsafeMutablePointer<UInt32>

    public init() {
        word = .allocate(capacity: 1)
        word.initialize(to: 0)
    }

    deinit { word.deallocate() }

    public var value: UInt32 { tether_atomic_load_u32(word) }

    /// Moves the counter and wakes every sleeper.
    public func advance() {
        _ = tether_atomic_add_u32(word, 1)
        _ = tether_futex_wake_all(word)
    }

    /// Sleeps while the counter still reads `seen` (at once if it moved; may wake early).
    public func sleep(whileValueIs seen: UInt32) {
        _ = tether_futex_wait(word, seen)
    }
}

/// Starts a detached thread, named `name` (the first 15 bytes) for `ps -L` and debuggers.
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    pthread_detach(startJoinableThread(name: name, body))
}

/// Starts a thread to be ended with `pthread_join` (a plain pthread, no Dispatch: it works in a
/// forked child). `name`, when given, is its name for `ps -L` and debuggers (the first 15 bytes).
public func startJoinableThread(name: String = "", _ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, _ name: String) { self.body = body; self.name = name }
    }
    let box = Unmanaged.passRetained(Box(body, name)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! Box
        if !box.name.isEmpty { tether_set_thread_name(box.name) }
        box.body()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return thread
}

/// The nice value of device work where `SCHED_IDLE` is refused (and the value it keeps inside it).
public let deviceWorkNice: Int32 = environment("TETHER_DEVICE_NICE").flatMap { Int32($0) } ?? 10

/// The nice value the daemon's control plane asks for (granted to root or with CAP_SYS_NICE;
/// otherwise it stays at 0 and device work still runs below it).
public let controlPlaneNice: Int32 = -10

/// Puts the calling thread in the control plane: `SCHED_FIFO` 2 where granted (device threads can
/// never delay it, not even while they are lent priority 1), else nice −10 where granted.
public func enterControlPlane() {
    if tether_set_thread_fifo(0, 2) != 0 { setCurrentThreadNice(controlPlaneNice) }
}

/// How a control-plane thread polls for work that may not come: lowered from the control
/// plane's `SCHED_FIFO` to `SCHED_OTHER` for the poll (`run`), where it is in it, because a
/// real-time thread that polls keeps every ordinary thread off its CPU, the client whose next
/// request it polls for included. Lowering costs two system calls (~3.7 µs together on the VMs
/// here). Made by the polling thread, once.
public struct PollingClass {
    private let lowers: Bool

    /// Nil where the calling thread is in `SCHED_FIFO` and could not come back to it: leaving it
    /// needs no privilege, coming back needs CAP_SYS_NICE or RLIMIT_RTPRIO, and a daemon a service
    /// manager started in `SCHED_FIFO` as an ordinary user has neither (one lowered poll would
    /// leave it in `SCHED_OTHER` for good). Such a thread waits instead of polling.
    public init?() {
        guard sched_getscheduler(0) == SCHED_FIFO else {
            lowers = false
            return
        }
        guard tether_may_enter_fifo(2) else { return nil }
        lowers = true
    }

    /// Runs `body` (the poll) lowered, then returns to `SCHED_FIFO` 2.
    public func run<T>(_ body: () -> T) -> T {
        guard lowers, tether_set_thread_idle(0, false) == 0 else { return body() }
        defer { _ = tether_set_thread_fifo(0, 2) }
        return body()
    }
}

/// Sets the nice value of the calling thread only (Linux keeps nice per thread; threads created
/// afterwards by this one inherit it). Raising it needs no privilege; lowering it does.
@discardableResult
public func setCurrentThreadNice(_ nice: Int32) -> Bool {
    setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tether_gettid()), nice) == 0
}

/// The threads that execute device work, and priority inheritance for those who wait on them.
///
/// Device threads run in the `SCHED_IDLE` class: any other thread that wakes up — the daemon's
/// event loop, a kill, a client waiting for its reply — preempts them at once. (A nice value
/// alone is not enough: the kernel's EEVDF scheduler lets a running thread finish its slice, which
/// measured up to 1.3 ms of wake-up delay for a nice −10 thread against nice 10 device threads.)
/// Like a GPU, the emulated device then uses the CPU time nobody else wants.
///
/// When the control plane must wait for device work to stop — a kill or a teardown waiting for the
/// slices in flight — it lends the device threads running them a real-time priority (`SCHED_FIFO`
/// 1, just below the control plane's 2 where that is granted) for the duration of the wait, as
/// the kernel's priority inheritance does for a lock holder: otherwise a busy machine (a burst of
/// process exits) would starve the very threads the wait is for. The software pool knows which of
/// its threads those are (`lend`); a driver's threads (lavapipe's, adopted when it is opened) are
/// lent all together (`withPriorityLent`). Real-time classes need privilege (root, CAP_SYS_NICE, RLIMIT_RTPRIO); without it the
/// loan falls back to nice −10 where allowed, and is a no-op otherwise.
public enum DeviceThreads {
    private static let monitor = Monitor()
    nonisolated(unsafe) private static var tids: Set<pid_t> = []
    nonisolated(unsafe) private static var lenders = 0

    /// Puts the calling thread in the device-work class (threads it creates inherit it).
    public static func demoteCurrentThread() {
        demote(tether_gettid())
    }

    /// Puts a thread (back) in the device-work class.
    public static func demote(_ tid: pid_t) {
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), deviceWorkNice)
        _ = tether_set_thread_idle(tid, true)
    }

    /// Adopts the threads a driver created in the device-work class (lavapipe's).
    public static func adoptDriverThreads() {
        let dir = "/proc/self/task"
        guard let d = opendir(dir) else { return }
        defer { closedir(d) }
        var found: [pid_t] = []
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let tid = pid_t(name), tid != tether_gettid() else { continue }  // not the opener itself
            errno = 0
            let nice = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid))
            if errno == 0 && nice == deviceWorkNice { found.append(tid) }
        }
        monitor.withLock { tids.formUnion(found) }
    }

    /// The calling thread's kernel thread id.
    public static var currentID: pid_t { tether_gettid() }

    /// Lends one device thread the real-time priority `withPriorityLent` gives them all (nice −10
    /// where that is not granted); it takes it back with `demoteCurrentThread`. False if neither
    /// was allowed.
    public static func lend(_ tid: pid_t) -> Bool {
        if tether_set_thread_fifo(tid, 1) == 0 { return true }
        return tether_set_thread_idle(tid, false) == 0
            && setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), controlPlaneNice) == 0
    }

    /// Runs `body` (a wait for device work) with every device thread at the control plane's priority.
    public static func withPriorityLent<T>(_ body: () -> T) -> T {
        monitor.withLock {
            lenders += 1
            if lenders == 1 {
                // A real-time class: changing class preempts at once, where a nicer nice value
                // would wait for the next tick (measured: 1–5 ms during an exit storm).
                for t in tids { _ = lend(t) }
            }
        }
        defer {
            monitor.withLock {
                lenders -= 1
                if lenders == 0 {
                    for t in tids { demote(t) }
                }
            }
        }
        return body()
    }
}

/// Runs `body` on a fresh thread with the device-work nice value and waits for it: a driver whose
/// threads are created inside `body` (lavapipe's, at device enumeration) inherits that priority.
public func withDeviceWorkPriority<T>(_ body: @escaping @Sendable () -> T) -> T {
    let box = ResultBox<T>()
    startThread(name: "tether-open") {
        DeviceThreads.demoteCurrentThread()
        let v = body()
        DeviceThreads.adoptDriverThreads()
        box.done.withLock {
            box.value = v
            box.done.broadcast()
        }
    }
    return box.done.withLock {
        while box.value == nil { box.done.wait() }
        return box.value!
    }
}

private final class ResultBox<T>: @unchecked Sendable {
    var value: T?
    let done = Monitor()
}

/// One thread that runs submitted closures in order: for work that waits (on device work) and so
/// must not run on an event loop, without paying a thread creation per request.
public final class WorkQueue: @unchecked Sendable {
    private let monitor = Monitor()
    private var items: [@Sendable () -> Void] = []

    public init(name: String) {
        startThread(name: name) { [self] in
            while true {
                let item = monitor.withLock {
                    while items.isEmpty { monitor.wait() }
                    return items.removeFirst()
                }
                item()
            }
        }
    }

    public func submit(_ item: @escaping @Sendable () -> Void) {
        monitor.withLock {
            items.append(item)
            monitor.broadcast()
        }
    }
}
