import CTetherLinux
import Glibc
import TetherCore
import TetherSys

/// How a `Device` connects.
public struct DeviceOptions: Sendable {
    /// nil: `SocketPath.resolve()` (`$TETHER_SOCKET`, then `$XDG_RUNTIME_DIR/tether/tether.sock`,
    /// then `/tmp/tether-$UID/tether.sock`).
    public var socketPath: String?
    /// nil: the daemon's default. Sent in hello; the daemon may refuse an override.
    public var policy: LifetimePolicy?
    /// The backend this client expects; the daemon refuses a mismatch (`.auto` accepts any).
    public var backend: BackendChoice
    /// Close inherited device fds in a forked child (the user-space workaround of lifetime
    /// rule 3). Off, a child keeps the parent's connection fd open — which under the `release`
    /// policy keeps the parent's address space alive; the benchmarks measure exactly that.
    public var closeOnFork: Bool
    /// Every call except `join`/`wait` gives up after this long with `.timedOut`.
    public var requestTimeoutSeconds: Double
    /// Spawn, run, join, wait, kill and status travel over a submission and a completion ring in
    /// memory shared with the daemon (user-mode submission queues, see `RingLayout`) instead of
    /// one socket round trip each. Off, or where the daemon refuses the rings, every call uses
    /// the socket (`tether bench dispatch` measures both).
    public var rings: Bool
    /// Entries per ring: a power of two, 2…4096. A full submission ring sends over the socket.
    public var ringEntries: UInt32
    /// How long a caller polls the completion ring for its reply before it sleeps until the
    /// daemon rings the socket doorbell (µs; 0: sleep at once). Polling saves the two wake-ups of
    /// a sleeping reply (~30–60 µs each on a VM) for replies that come within this time; it
    /// costs this much CPU at most per call, and it yields the CPU every round, so it never keeps
    /// the daemon's or another process's threads from running. The default covers a tiny
    /// thread's round trip on a loaded 2-core VM (50–130 µs measured).
    public var ringSpinMicroseconds: Double

    public init(socketPath: String? = nil, policy: LifetimePolicy? = nil, backend: BackendChoice = .auto,
                closeOnFork: Bool = true, requestTimeoutSeconds: Double = 30, rings: Bool = true,
                ringEntries: UInt32 = 64, ringSpinMicroseconds: Double = 200) {
        self.socketPath = socketPath
        self.policy = policy
        self.backend = backend
        self.closeOnFork = closeOnFork
        self.requestTimeoutSeconds = requestTimeoutSeconds
        self.rings = rings
        self.ringEntries = ringEntries
        self.ringSpinMicroseconds = ringSpinMicroseconds
    }
}

/// A device thread this process spawned.
public struct DeviceThreadHandle: Sendable, Hashable {
    public let id: ThreadID
    public init(id: ThreadID) { self.id = id }
}

/// A connection to the Tether daemon on behalf of this process's address space.
///
/// ```swift
/// let device = try Device()
/// let n = 1 << 20
/// let memory = try device.mirror(bytes: 2 * n * 4)
/// let x = memory.base.bindMemory(to: Float.self, capacity: 2 * n)
/// let y = x + n
/// for i in 0..<n { x[i] = Float(i); y[i] = 1 }
/// // saxpy: n, a (bit pattern), x, y — pointers are this process's own addresses.
/// let a: Float = 2
/// let thread = try device.spawn(.saxpy, args: [UInt64(n), UInt64(a.bitPattern), memory.address,
///                                              memory.address + UInt64(n * 4)],
///                               groups: UInt32(n / 256))
/// let report = try await device.join(thread)
/// precondition(report.state == .finished && y[3] == 7)   // y = a·x + y, written by the device
/// device.close()
/// ```
///
/// The first request (hello, sent by `init`) binds the connection to this process; the daemon
/// tears the address space down when this process exits (policy `exit`) or when the last copy of
/// the connection fd is closed (`release`), killing its device threads and dropping its regions.
///
/// **Fork.** A forked child shares nothing with the parent's device that it may use: the daemon
/// severs a connection on which another process sends anything, and the reader thread did not
/// survive the fork anyway. So every call first compares `getpid()` with the pid this device
/// connected from; in a child it transparently opens a connection of its own and says hello with
/// the same options: the child is a new address space, with no memory and no threads. The
/// parent's mirrored memory is not inherited (see `MirroredMemory`: unmapped in the child) and its
/// thread handles name nothing in the child's space. The parent's fd is never closed or used in
/// the child: with `closeOnFork` the C atfork handler already closed it (and the number may have
/// been reused); without, keeping it open is the point. `getpid()` is checked rather than relying
/// on `pthread_atfork` alone, which raw `clone` skips. In a child, prefer the blocking calls
/// (`wait`): the async runtime's thread pool is not usable after a fork of a multithreaded process.
///
/// **Resume.** If the connection is shut down under this process — by a child or another process
/// holding a copy of its fd, or by the daemon severing a connection another process sent on — the
/// daemon keeps the address space for its live owner, and the next call (or the pending one)
/// resumes it on a new connection: same space, same regions and threads. Pending `join`/`wait`,
/// `status` and `kill` are asked again there; a `spawn`, `run`, `mirror` or `unmirror` in flight at
/// that moment fails with `.deviceLost` (it may or may not have taken effect). If the daemon no
/// longer has the space (it restarted), the call fails with `.deviceLost` instead of going on in
/// a new, empty space.
///
/// All methods are thread-safe. Every blocking call is bounded by `requestTimeoutSeconds`, except
/// `join`/`wait`, which have their own timeout (`.timedOut` when it passes); all of them fail with
/// `.deviceLost` as soon as the daemon goes away.
public final class Device: @unchecked Sendable {
    public let options: DeviceOptions
    /// The resolved socket path.
    public let socketPath: String

    private struct State {
        var connection: Connection
        /// The process `connection` belongs to.
        var pid: pid_t
        var hello: HelloReply
        /// The memory this process mirrored through this device.
        var mirrors: [ObjectIdentifier: MirroredMemory] = [:]
        var closed = false
    }

    /// Brief sections only (never held across I/O), so that a fork in another thread is unlikely
    /// to copy it locked.
    private let state: Locked<State>
    /// Serialises re-connection (in a forked child, or to resume), which does I/O.
    private let reconnectLock = Locked(())

    var timeout: Double { options.requestTimeoutSeconds }

    /// Connects to the daemon and says hello.
    ///
    /// Throws `.deviceLost` ("no Tether daemon at PATH; start one with `tether daemon`") when
    /// nothing listens at the socket, and whatever the daemon answers to hello (a refused policy
    /// override, a backend mismatch).
    public init(_ options: DeviceOptions = .init()) throws(TetherError) {
        try Self.validate(options)
        let path = SocketPath.resolve(options.socketPath)
        let pid = getpid()
        let connection = try Self.connect(path: path, options: options)
        self.options = options
        self.socketPath = path
        state = Locked(State(connection: connection.0, pid: pid, hello: connection.1))
    }

    deinit { close() }

    private static func validate(_ options: DeviceOptions) throws(TetherError) {
        guard options.requestTimeoutSeconds > 0, options.requestTimeoutSeconds.isFinite else {
            throw TetherError(.invalidArgument, "requestTimeoutSeconds must be a positive number of seconds, not \(options.requestTimeoutSeconds)")
        }
        guard options.ringSpinMicroseconds >= 0, options.ringSpinMicroseconds <= 1_000_000 else {
            throw TetherError(.invalidArgument, "ringSpinMicroseconds must be 0 to 1,000,000, not \(options.ringSpinMicroseconds)")
        }
        if options.rings { _ = try RingLayout(sqEntries: options.ringEntries, cqEntries: options.ringEntries) }
    }

    /// A new connection plus hello, in the calling process.
    private static func connect(path: String, options: DeviceOptions) throws(TetherError) -> (Connection, HelloReply) {
        let c = try Connection.open(path: path, track: true, closeOnFork: options.closeOnFork,
                                    sendTimeoutSeconds: options.requestTimeoutSeconds)
        do throws(TetherError) {
            let reply = try c.call(.hello(policy: options.policy, backend: options.backend), timeoutSeconds: options.requestTimeoutSeconds)
            guard case .hello(let hello) = reply else { throw unexpected(reply, to: "hello") }
            // The daemon refuses a mismatch itself; checked here too so that a client never
            // runs on a backend it did not ask for, whatever the daemon's version.
            if options.backend != .auto, hello.backend.rawValue != options.backend.rawValue {
                throw TetherError(.backendUnavailable, "the Tether daemon at \(path) runs the \(hello.backend.rawValue) backend, not \(options.backend.rawValue); start it with `tether daemon --backend \(options.backend.rawValue)` or ask for backend auto")
            }
            if options.rings {
                // A daemon that cannot take the rings (an older one, no memory) is served over the
                // socket: the rings are a fast path, never a requirement.
                try? c.attachRings(entries: options.ringEntries, spinNanos: UInt64(options.ringSpinMicroseconds * 1000),
                                   timeoutSeconds: options.requestTimeoutSeconds)
            }
            return (c, hello)
        } catch {
            c.close()
            throw error
        }
    }

    // MARK: Properties

    /// What hello answered: this address space, its pid and policy, the backend and device. In a
    /// forked child, the child's own once it has made a call.
    public var hello: HelloReply { state.withLock { $0.hello } }

    /// The raw connection fd of the current connection (-1 once closed). In a forked child that
    /// has not made a call yet, this is the inherited fd (closed already if `closeOnFork`).
    public var connectionFD: Int32 { state.withLock { $0.closed ? -1 : $0.connection.fd } }

    /// Whether this process's calls travel over submission rings (`DeviceOptions.rings`, and the
    /// daemon took them).
    public var usesRings: Bool { (try? connection().usesRings) ?? false }

    // MARK: Memory

    /// Creates `bytes` (rounded up to whole pages) of memory shared with the device: a memfd,
    /// mapped here, mirrored by the daemon at the same owner addresses. Only this process has it:
    /// a forked child does not inherit the mapping or the memfd (see `MirroredMemory`).
    public func mirror(bytes: Int) throws(TetherError) -> MirroredMemory {
        guard bytes > 0 else { throw TetherError(.invalidArgument, "mirror needs a positive number of bytes, not \(bytes)") }
        let size = Memfd.pageRounded(bytes)
        var memfd: Int32 = -1
        var mapped: UnsafeMutableRawPointer?
        guard tether_mirror_create(size, &memfd, &mapped) == 0, let base = mapped else {
            throw TetherError(.resourceExhausted, "cannot create \(size) bytes of shared memory: \(SystemError("memfd_create/mmap"))")
        }
        let reply: Reply
        do throws(TetherError) {
            reply = try call(.mirror(ownerBase: UInt64(UInt(bitPattern: base)), size: UInt64(size)), fds: [memfd])
        } catch {
            tether_close_tracked_fd(memfd)
            munmap(base, size)
            throw error
        }
        // The daemon has its own copy now: ours would only let a forked child pin the pages.
        tether_close_tracked_fd(memfd)
        guard case .mirrored(let region) = reply else {
            munmap(base, size)
            throw Self.unexpected(reply, to: "mirror")
        }
        let memory = MirroredMemory(base: base, size: size, region: region)
        let registered = state.withLock { s in
            guard !s.closed else { return false }
            s.mirrors[ObjectIdentifier(memory)] = memory
            return true
        }
        guard registered else {
            memory.release()
            throw closedError
        }
        return memory
    }

    /// Stops mirroring `memory` and unmaps it here. After this, `memory.base` is invalid.
    ///
    /// The local pages go whenever the region is gone on the daemon's side too (success, or the
    /// daemon, the address space or the region no longer exists); if the daemon refuses for
    /// another reason the memory stays mirrored and the error is thrown.
    public func unmirror(_ memory: MirroredMemory) throws(TetherError) {
        let key = ObjectIdentifier(memory)
        guard memory.ownerPid == getpid() else {
            throw TetherError(.noSuchRegion, "region \(memory.region) was mirrored by process \(memory.ownerPid); a forked child does not inherit mirrored memory (it is not mapped here): mirror memory of its own instead")
        }
        // Claimed first, so that two concurrent unmirrors do not both ask the daemon.
        guard let mirror = state.withLock({ $0.mirrors.removeValue(forKey: key) }) else {
            throw TetherError(.noSuchRegion, "region \(memory.region) is not mirrored by this device (unmirrored already, or mirrored by another Device)")
        }
        do throws(TetherError) {
            let reply = try call(.unmirror(mirror.region))
            guard case .done = reply else { throw Self.unexpected(reply, to: "unmirror") }
        } catch {
            switch error.code {
            case .deviceLost, .ownerExited, .noSuchRegion:
                memory.release()
            default:
                state.withLock { s in if !s.closed { s.mirrors[key] = mirror } }
            }
            throw error
        }
        memory.release()
    }

    // MARK: Threads

    /// Starts a device thread running a built-in kernel over `groups` workgroups.
    /// `persistentSeconds` > 0 repeats the grid for that long (a persistent thread).
    public func spawn(_ kernel: BuiltinKernel, args: [UInt64], groups: UInt32, priority: PriorityClass = .normal,
                      persistentSeconds: Double = 0) throws(TetherError) -> DeviceThreadHandle {
        guard persistentSeconds >= 0, persistentSeconds.isFinite else {
            throw TetherError(.invalidArgument, "persistentSeconds must be zero or a positive number of seconds, not \(persistentSeconds)")
        }
        return try spawn(SpawnRequest(program: .builtin(kernel), args: args, groups: groups,
                                      persistentNanos: nanos(persistentSeconds), priority: priority))
    }

    /// Starts a built-in kernel with a workload's launch (its arguments and grid).
    public func spawn(_ launch: Launch, kernel: BuiltinKernel, priority: PriorityClass = .normal,
                      persistentSeconds: Double = 0) throws(TetherError) -> DeviceThreadHandle {
        try spawn(kernel, args: launch.args, groups: launch.groups, priority: priority, persistentSeconds: persistentSeconds)
    }

    /// Starts a device thread running custom SPIR-V (entry point `main`, the push-constant
    /// layout of `KernelABI`).
    public func spawn(spirv: [UInt32], invocationsPerGroup: UInt32, args: [UInt64], groups: UInt32,
                      priority: PriorityClass = .normal) throws(TetherError) -> DeviceThreadHandle {
        guard !spirv.isEmpty, spirv.count <= Wire.maxSpirvWords else {
            throw TetherError(.invalidArgument, "a SPIR-V module must have 1 to \(Wire.maxSpirvWords) words, not \(spirv.count)")
        }
        guard invocationsPerGroup > 0 else { throw TetherError(.invalidArgument, "invocationsPerGroup must be positive") }
        return try spawn(SpawnRequest(program: .spirv(words: spirv, invocationsPerGroup: invocationsPerGroup),
                                      args: args, groups: groups, priority: priority))
    }

    /// Checked here because the wire cannot carry more: the daemon would see a malformed message,
    /// not a sentence about arguments.
    private static func checkArguments(_ request: SpawnRequest) throws(TetherError) {
        guard request.args.count <= KernelABI.maxArguments else {
            throw TetherError(.invalidArgument, "a kernel takes at most \(KernelABI.maxArguments) arguments, not \(request.args.count)")
        }
    }

    private func spawn(_ request: SpawnRequest) throws(TetherError) -> DeviceThreadHandle {
        try Self.checkArguments(request)
        let reply = try call(.spawn(request))
        guard case .spawned(let id) = reply else { throw Self.unexpected(reply, to: "spawn") }
        return DeviceThreadHandle(id: id)
    }

    /// Spawns a built-in kernel and waits for it in one round trip (spawn + join): the fastest
    /// way to run a short device thread.
    public func run(_ kernel: BuiltinKernel, args: [UInt64], groups: UInt32, priority: PriorityClass = .normal,
                    timeoutSeconds: Double? = nil) throws(TetherError) -> ThreadReport {
        let request = SpawnRequest(program: .builtin(kernel), args: args, groups: groups, priority: priority)
        try Self.checkArguments(request)
        let reply = try call(.run(request), timeoutSeconds: timeoutSeconds)
        guard case .joined(let report) = reply else { throw Self.unexpected(reply, to: "run") }
        return report
    }

    /// Waits for `thread` to end and returns how it ended (a killed or faulted thread is a report,
    /// not an error). `timeoutSeconds`: nil waits as long as the thread runs; the daemon going
    /// away ends the wait with `.deviceLost` either way.
    public func join(_ thread: DeviceThreadHandle, timeoutSeconds: Double? = nil) async throws(TetherError) -> ThreadReport {
        let request = Request.join(thread.id)
        let c = try connection()
        let reply: Reply
        do throws(TetherError) {
            reply = try await c.callAsync(request, timeoutSeconds: timeoutSeconds)
        } catch {
            reply = try await resumed(after: c, failing: request, with: error).callAsync(request, timeoutSeconds: timeoutSeconds)
        }
        guard case .joined(let report) = reply else { throw Self.unexpected(reply, to: "join") }
        return report
    }

    /// `join`, blocking the calling thread (for forked children and code without async).
    public func wait(_ thread: DeviceThreadHandle, timeoutSeconds: Double? = nil) throws(TetherError) -> ThreadReport {
        let reply = try call(.join(thread.id), timeoutSeconds: timeoutSeconds)
        guard case .joined(let report) = reply else { throw Self.unexpected(reply, to: "join") }
        return report
    }

    /// Asks `thread` to stop (through its control word; it ends at its next poll). Returns
    /// whether it was still alive.
    public func kill(_ thread: DeviceThreadHandle) throws(TetherError) -> Bool {
        let reply = try call(.kill(thread.id))
        guard case .killed(let wasAlive) = reply else { throw Self.unexpected(reply, to: "kill") }
        return wasAlive
    }

    /// The thread's state now, without waiting.
    public func status(_ thread: DeviceThreadHandle) throws(TetherError) -> ThreadReport {
        let reply = try call(.status(thread.id))
        guard case .status(let report) = reply else { throw Self.unexpected(reply, to: "status") }
        return report
    }

    // MARK: Closing

    /// Closes the connection (in the process that opened it) and unmaps every mirrored region
    /// here. Idempotent; `deinit` does it too. Calls made afterwards throw `.deviceLost`.
    ///
    /// In a forked child that never made a call, the inherited connection is left alone (see the
    /// type's notes on fork); the child's copies of the mappings and memfds are released.
    public func close() {
        let taken: (Connection, [MirroredMemory])? = state.withLock { s in
            if s.closed { return nil }
            s.closed = true
            let memories = Array(s.mirrors.values)
            s.mirrors.removeAll()
            return (s.connection, memories)
        }
        guard let (connection, memories) = taken else { return }
        connection.close()
        for m in memories { m.release() }
    }

    // MARK: Fork

    /// One call on the current connection; if that connection was shut down under this
    /// process, resumed on a new one and, where repeating is harmless, asked again there.
    /// `timeoutSeconds`: left out, `requestTimeoutSeconds`; given (nil included), that.
    func call(_ request: Request, fds: [Int32] = [], timeoutSeconds: Double?? = .none) throws(TetherError) -> Reply {
        let limit: Double? = timeoutSeconds ?? timeout
        let c = try connection()
        do throws(TetherError) {
            return try c.call(request, fds: fds, timeoutSeconds: limit)
        } catch {
            return try resumed(after: c, failing: request, with: error).call(request, fds: fds, timeoutSeconds: limit)
        }
    }

    /// After `request` failed with `error` on `c`: the resumed connection to ask again on, when
    /// `c` was shut down under this process and the request may be repeated; otherwise throws
    /// (`error`, or a sentence saying that the request's outcome is unknown).
    private func resumed(after c: Connection, failing request: Request, with error: TetherError) throws(TetherError) -> Connection {
        guard c.wasShutDown, c.openerPid == getpid() else { throw error }
        let fresh = try resume(after: c)
        switch request {
        case .join, .status, .kill: return fresh
        default:
            throw TetherError(.deviceLost, "the connection to the daemon was shut down while this \(request.op) request was in flight (by another process holding a copy of it, such as a forked child); it may or may not have taken effect, and later calls go on over a new connection")
        }
    }

    /// The connection of the calling process: the current one, a resumed one if the current one
    /// was shut down under it, or a new one in a forked child.
    func connection() throws(TetherError) -> Connection {
        let pid = getpid()
        let current = try state.withLock { (s: inout State) throws(TetherError) -> Connection? in
            if s.closed { throw closedError }
            return s.pid == pid ? s.connection : nil
        }
        guard let current else { return try reconnect(in: pid) }
        return current.wasShutDown ? try resume(after: current) : current
    }

    /// Ownership rule 2: the live owner whose connection was shut down under it (by a child or
    /// another holder of the fd, or severed by the daemon because another process sent on it)
    /// carries on over a new connection, in the same address space. A connection the child does
    /// not have: it was made after the child got its copy.
    private func resume(after old: Connection) throws(TetherError) -> Connection {
        try reconnectLock.withLock { (_: inout Void) throws(TetherError) -> Connection in
            let (expected, current) = try state.withLock { (s: inout State) throws(TetherError) -> (HelloReply, Connection) in
                if s.closed { throw closedError }
                return (s.hello, s.connection)
            }
            // Another thread resumed it while we waited for the lock.
            guard current === old else { return current }
            let (c, hello) = try Self.connect(path: socketPath, options: options)
            guard hello.space == expected.space else {
                c.close()
                throw TetherError(.deviceLost, "the Tether daemon at \(socketPath) no longer has this process's address space \(expected.space) (it restarted, or the space was torn down): its memory and threads are gone; open a new Device")
            }
            try state.withLock { (s: inout State) throws(TetherError) in
                if s.closed {
                    c.close()
                    throw closedError
                }
                s.connection = c
            }
            old.close()
            return c
        }
    }

    /// Lifetime rule 2: a forked child gets a connection of its own — a new address space, with
    /// none of the parent's memory (never inherited) or threads. On failure nothing changes, and
    /// the next call tries again.
    private func reconnect(in pid: pid_t) throws(TetherError) -> Connection {
        try reconnectLock.withLock { (_: inout Void) throws(TetherError) -> Connection in
            // Another thread of this child may have finished it while we waited for the lock.
            let done = try state.withLock { (s: inout State) throws(TetherError) -> Connection? in
                if s.closed { throw closedError }
                return s.pid == pid ? s.connection : nil
            }
            if let done { return done }
            let (c, hello) = try prefixed(pid) { () throws(TetherError) in try Self.connect(path: socketPath, options: options) }
            try state.withLock { (s: inout State) throws(TetherError) in
                if s.closed {
                    c.close()
                    throw closedError
                }
                // The parent's connection object is abandoned here, not closed: see `close()`
                // of `Connection` for why a child never touches it. The parent's mirrors are not
                // the child's (not mapped here): forgotten, never unmapped.
                s.connection = c
                s.pid = pid
                s.hello = hello
                s.mirrors.removeAll()
            }
            return c
        }
    }

    private func prefixed<T>(_ pid: pid_t, _ body: () throws(TetherError) -> T) throws(TetherError) -> T {
        do throws(TetherError) {
            return try body()
        } catch {
            throw TetherError(error.code, "in forked child \(pid), connecting to the daemon failed: \(error.message)")
        }
    }

    // MARK: Errors

    private var closedError: TetherError { TetherError(.deviceLost, "this Device was closed; open a new one") }

    static func unexpected(_ reply: Reply, to what: String) -> TetherError {
        TetherError(.malformedMessage, "the daemon answered a \(what) request with \(reply); are client and daemon the same build?")
    }
}
