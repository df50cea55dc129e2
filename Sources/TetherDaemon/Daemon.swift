import CTetherLinux
import Glibc
import Logging
import Synchronization
import TetherCore
import TetherDevice
import TetherSys

public struct DaemonConfiguration: Sendable {
    public var socketPath: String
    public var backend: BackendChoice
    public var policy: LifetimePolicy
    /// Whether a client's `hello` may choose the other policy for its address space.
    public var allowPolicyOverride: Bool
    public var quantumNanos: UInt64
    /// The cap on slices on the device at once (nil: the scheduler's default for the device).
    public var slicesInFlight: Int?
    /// The early notice source besides the pidfd (see `BPFExitNotifier`).
    public var notifier: ExitNotifierChoice = .auto
    /// Whether clients of the daemon's own uid may run kernels with raw device pointers (the
    /// pointer-ABI `spirv` program, modules declaring `PhysicalStorageBufferAddresses`). Such a
    /// kernel can reach any memory the device reaches — other clients', and the daemon's own on a
    /// CPU device — so it is off by default and never granted to another uid.
    public var allowRawPointers: Bool
    /// How long the event loop polls the clients' submission rings after activity before it
    /// sleeps (`RingServer`); 0: never poll, every ring submission rings the doorbell.
    public var ringPollNanos: UInt64 = 20_000

    public init(socketPath: String, backend: BackendChoice = .auto, policy: LifetimePolicy = .exit,
                allowPolicyOverride: Bool = true, quantumNanos: UInt64 = 2_000_000, slicesInFlight: Int? = nil,
                allowRawPointers: Bool = false) {
        self.allowRawPointers = allowRawPointers
        self.socketPath = socketPath
        self.backend = backend
        self.policy = policy
        self.allowPolicyOverride = allowPolicyOverride
        self.quantumNanos = quantumNanos
        self.slicesInFlight = slicesInFlight
    }
}

/// The device emulator: a socket server whose clients mirror memory and run device threads, and
/// whose registry ties that work to the owning address space.
///
/// One event-loop thread waits in epoll on the listening socket, every connection, every owner's
/// pidfd and a wake-up eventfd. Requests are handled there and are all short; anything that waits
/// for device work (teardown, explicit kills) runs on the exit notifier chain's executor, and
/// `join` is answered by the scheduler when the thread ends.
public final class Daemon: @unchecked Sendable {
    public let configuration: DaemonConfiguration
    public let backend: any ComputeBackend
    let scheduler: Scheduler
    let registry: Registry
    let chain: ExitNotifierChain
    /// nil where BPF is unavailable or not wanted; `notifierNote` says which notifier runs and why.
    let bpfNotifier: BPFExitNotifier?
    public let notifierNote: String
    let logger: Logger
    let epoll: Epoll
    let wake: EventFD
    private let listener: Int32
    /// The clients' submission rings (user-mode submission queues).
    let rings: RingServer
    private var connections: [UInt64: Connection] = [:]
    private var pidfdSpaces: [UInt64: AddressSpace] = [:]
    private var nextToken: UInt64 = 1
    /// One more byte than the largest message, so an oversized one shows as truncated.
    private let receiveBuffer = ReceiveBuffer(capacity: Wire.maxMessageBytes + 1)
    /// Explicit kills wait for a slice in flight, so they run here, never on the event loop.
    private let killQueue = WorkQueue(name: "tether-kill")
    private let teardownWaiters = Mutex<[TeardownWaiter]>([])
    private let stopRequested = Atomic<Bool>(false)
    /// Tells a peer's `shutdown()` from its release (nil without unix_diag: every hang-up is a release).
    private let peerRelease = PeerRelease()
    /// Whether messages carry a pidfd of their sender (`SO_PASSPIDFD`, Linux ≥ 6.5).
    private var sendersCarryPidfds = false

    // epoll token kinds, in the top byte; the rest is a never-reused id (fd numbers are reused).
    static let listenerKind: UInt64 = 1
    static let wakeKind: UInt64 = 2
    static let connectionKind: UInt64 = 3
    static let pidfdKind: UInt64 = 4
    static let bpfKind: UInt64 = 5

    public static let maxGroups: UInt32 = 1 << 26
    public static let maxRegionBytes: UInt64 = 1 << 36
    public static let maxPersistentNanos: UInt64 = 7 * 86_400 * 1_000_000_000

    /// Opens the device and binds the socket (refusing to steal one a live daemon answers on).
    public init(_ configuration: DaemonConfiguration, logger: Logger) throws(TetherError) {
        self.configuration = configuration
        self.logger = logger
        rings = RingServer(pollNanos: configuration.ringPollNanos)
        // Before anything else: a directory someone else prepared is refused (ownership.md, rule 6).
        try SocketPath.prepareDirectory(for: configuration.socketPath)
        let (generation, fallback) = GenerationCounter.next(forSocket: configuration.socketPath)
        if let fallback { logger.warning("daemon generation is random: \(fallback)") }
        registry = Registry(generation: generation)
        backend = try BackendFactory.open(configuration.backend) { logger.notice("\($0)") }
        scheduler = Scheduler(backend: backend, quantumNanos: configuration.quantumNanos,
                              slicesInFlight: configuration.slicesInFlight)
        chain = ExitNotifierChain(registry: registry, scheduler: scheduler)
        (bpfNotifier, notifierNote) = Self.openNotifier(configuration.notifier)
        if configuration.notifier == .bpf && bpfNotifier == nil {
            scheduler.shutdown()
            throw TetherError(.unsupported, "--notifier bpf: \(notifierNote)")
        }
        do {
            epoll = try Epoll()
            wake = try EventFD()
            if (try? SeqPacketSocket.connect(path: configuration.socketPath)) != nil {
                throw TetherError(.invalidArgument, "a Tether daemon already listens at \(configuration.socketPath)")
            }
            unlink(configuration.socketPath)
            listener = try SeqPacketSocket.listen(path: configuration.socketPath).release()
            SeqPacketSocket.setNonBlocking(listener)
            sendersCarryPidfds = SeqPacketSocket.enableSenderPidfds(listener)
            try epoll.add(listener, token: Self.listenerKind << 56)
            try epoll.add(wake.fd, token: Self.wakeKind << 56)
            if let bpfNotifier { try epoll.add(bpfNotifier.hooks.ringFD, token: Self.bpfKind << 56) }
        } catch let error as TetherError {
            scheduler.shutdown()
            throw error
        } catch {
            scheduler.shutdown()
            throw TetherError(.invalidArgument, "cannot listen at \(configuration.socketPath): \(error)")
        }
        chain.subscribe("waiters") { [weak self] space, _ in
            guard let self, registry.spaces(ofPid: space.pid).isEmpty else { return }
            let due = teardownWaiters.withLock { waiters in
                let due = waiters.filter { $0.pid == space.pid }
                waiters.removeAll { $0.pid == space.pid }
                return due
            }
            for w in due { w.connection.send(.timelines(registry.timelines(pid: space.pid, uid: w.uid)), id: w.requestID) }
        }
        if let bpfNotifier { chain.subscribe("bpf") { space, _ in bpfNotifier.forget(space) } }
        chain.subscribe("log") { [logger] space, t in
            logger.info("address space released", metadata: [
                "space": "\(space.id)", "pid": "\(space.pid)", "reason": "\(t.reason)",
                "threads": "\(t.threadsKilled)", "regions": "\(t.regionsFreed)",
                "quiesce_us": "\((t.quiescedNanos &- t.noticeNanos) / 1000)",
                "release_us": "\((t.releasedNanos &- t.noticeNanos) / 1000)",
            ])
        }
    }

    /// Asks the event loop to stop (safe from any thread or a signal-waiting thread).
    public func requestStop() {
        stopRequested.store(true, ordering: .releasing)
        wake.signal()
    }

    /// Runs the event loop until `requestStop`, then kills all device work and releases everything.
    public func run(onReady: () -> Void = {}) {
        onReady()
        logger.notice("tether daemon listening", metadata: [
            "socket": "\(configuration.socketPath)", "device": "\(backend.device.name)",
            "backend": "\(backend.device.backend.rawValue)", "policy": "\(configuration.policy)",
            "notifier": "\(notifierNote)",
            "generation": "\(registry.generation.rawValue)",
            "owner_identity": "\(sendersCarryPidfds && Pidfd.hasUniqueIdentities ? "pidfd" : "pid while alive")",
            "shutdown_is_release": "\(peerRelease == nil)",
        ])
        while !stopRequested.load(ordering: .acquiring) {
            for (token, events) in epoll.wait(timeoutMillis: rings.sleepTimeout(expireTeardownWaiters())) {
                switch token >> 56 {
                case Self.listenerKind: acceptAll()
                case Self.wakeKind: wake.drain()
                case Self.connectionKind: readable(token, events: events)
                case Self.pidfdKind: ownerExited(token, at: monotonicNanos())
                case Self.bpfKind: earlyNotice(at: monotonicNanos())
                default: break
                }
            }
            if !rings.isEmpty { rings.poll(ringEvent) }
        }
        shutdown()
    }

    /// Answers waiters whose time is up with an empty list; returns how long epoll may sleep.
    private func expireTeardownWaiters() -> Int32 {
        let now = monotonicNanos()
        let (due, next) = teardownWaiters.withLock { waiters in
            let due = waiters.filter { $0.deadline <= now }
            waiters.removeAll { $0.deadline <= now }
            return (due, waiters.map(\.deadline).min())
        }
        for w in due { w.connection.send(.timelines([]), id: w.requestID) }
        guard let next else { return 1000 }
        return Int32(min(1000, (next - now) / 1_000_000 + 1))
    }

    private func shutdown() {
        logger.notice("stopping: killing all device work")
        epoll.remove(listener)
        close(listener)
        unlink(configuration.socketPath)
        let now = monotonicNanos()
        for space in registry.allSpaces where registry.beginTeardown(space, noticeNanos: now) {
            chain.enqueue(space, reason: "shutdown")
        }
        chain.stop()
        scheduler.shutdown()
        for c in connections.values { c.close() }
        connections = [:]
        logger.notice("stopped")
    }

    private func token(_ kind: UInt64) -> UInt64 {
        defer { nextToken += 1 }
        return kind << 56 | nextToken
    }

    // MARK: Connections

    private func acceptAll() {
        while true {
            guard let accepted = try? SeqPacketSocket.accept(listener), let fd = Optional(accepted) else { return }
            let t = token(Self.connectionKind)
            let connection = Connection(id: t, fd: fd)
            do {
                try epoll.add(connection.rawFD, token: t, events: UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue))
                connections[t] = connection
            } catch {
                logger.warning("cannot watch a new connection: \(error)")
                connection.close()
            }
        }
    }

    private func readable(_ token: UInt64, events: UInt32) {
        guard let connection = connections[token] else { return }
        // Drain every queued message; a hang-up is seen as EOF after the last one.
        for _ in 0..<64 {
            let result: ReceiveResult
            do {
                result = try SeqPacketSocket.receive(connection.rawFD, into: receiveBuffer)
            } catch {
                hangUp(connection)
                return
            }
            switch consume result {
            case .wouldBlock: return
            case .hangUp:
                // SOCK_SEQPACKET reads 0 bytes both for an empty message and for end of file;
                // only the hang-up event tells them apart.
                if events & UInt32(EPOLLHUP.rawValue | EPOLLRDHUP.rawValue) == 0 {
                    connection.send(.error(TetherError(.malformedMessage, "empty message")), id: 0)
                    continue
                }
                hangUp(connection)
                return
            case .message(var message):
                handle(&message, on: connection)
                if connections[token] == nil { return }  // severed
            }
        }
    }

    /// End of file on a connection: every copy of the client's fd was closed (the `release` of
    /// the device file), or some process holding a copy called `shutdown()` on it.
    private func hangUp(_ connection: Connection) {
        drop(connection, released: peerRelease?.peerReleased(connection.rawFD) ?? true)
    }

    /// Forgets a connection. When it was its space's last one, the space is torn down if the
    /// connection was released, or if it was only shut down but its owner is gone too. A live
    /// owner whose connection was shut down under it (by a child holding a copy, or by the daemon
    /// severing a shared connection) keeps its space and resumes it on a new connection; its
    /// exit still ends the space under both policies (see `ownerExited`).
    func drop(_ connection: Connection, released: Bool) {
        guard connections.removeValue(forKey: connection.id) != nil else { return }
        rings.forget(connection)
        epoll.remove(connection.rawFD)
        connection.close()
        guard let space = connection.space else { return }
        let remaining = registry.connectionClosed(space)
        guard remaining == 0 else { return }
        let ownerGone = !space.ownerAlive || Pidfd.hasExited(space.pidfd)
        guard released || ownerGone else {
            logger.debug("last connection shut down, owner alive: kept for the owner to resume",
                         metadata: ["space": "\(space.id)", "pid": "\(space.pid)"])
            return
        }
        if registry.beginTeardown(space, noticeNanos: monotonicNanos()) {
            logger.debug("last connection released", metadata: ["space": "\(space.id)", "pid": "\(space.pid)"])
            chain.enqueue(space, reason: "release")
        }
    }

    /// A message from another process on a connection bound to a live owner: proof that the
    /// connection is shared (a forked child or a process the fd was passed to). It gets one
    /// `notOwner` error with request id 0 — an id no owner request ever carries, so the owner's
    /// library can never take it for one of its replies — and the connection is severed for
    /// every holder. Nothing the sender asked is done or answered; the owner's library resumes
    /// its space on a new connection that the sender does not have.
    private func sever(_ connection: Connection, space: AddressSpace, sender: Sender) {
        connection.send(.error(TetherError(.notOwner, "pid \(sender.pid) does not own this connection (pid \(space.pid) does): it was closed; a forked child or a process the fd was passed to must open its own connection")), id: 0)
        _ = Glibc.shutdown(connection.rawFD, Int32(SHUT_RDWR))
        logger.notice("severed a shared connection", metadata: ["space": "\(space.id)", "owner": "\(space.pid)", "sender": "\(sender.pid)"])
        drop(connection, released: false)
    }

    /// The owner's pidfd became readable: its whole thread group exited (`exit_mm`).
    private func ownerExited(_ token: UInt64, at now: UInt64) {
        guard let space = pidfdSpaces.removeValue(forKey: token) else { return }
        epoll.remove(space.pidfd)
        registry.ownerExited(space)
        logger.debug("owner exited", metadata: ["space": "\(space.id)", "pid": "\(space.pid)", "policy": "\(space.policy)"])
        // Under release, a space whose every connection was shut down (none left to release) ends
        // with its owner: no holder of a shut-down fd can use it any more.
        let unheld = (try? registry.withLock { space.connections }) == 0
        if space.policy == .exit || unheld, registry.beginTeardown(space, noticeNanos: now) {
            chain.enqueue(space, reason: "pidfd")
        }
    }

    /// The kernel reported an owner's SIGKILL, exit or exec before its pidfd can (`BPFExitNotifier`).
    private func earlyNotice(at _: UInt64) {
        let events = bpfNotifier?.events() ?? []
        // Stamped after the drain: an event that reached the ring while it was drained (a kill
        // right after another) was not noticed before, and a notice must not precede its kill.
        let now = monotonicNanos()
        for (space, reason) in events where registry.beginTeardown(space, noticeNanos: now) {
            chain.enqueue(space, reason: reason)
        }
    }

    // MARK: Requests

    private func handle(_ message: inout ReceivedMessage, on connection: Connection) {
        var fds = message.takeFds()
        defer { for fd in fds { close(fd) } }
        let sender = Sender(&message)
        // A live owner's connection carries that owner's messages only (ownership.md, rule 3).
        if let space = connection.space, space.phase == .live, !space.isOwner(pid: sender.pid, identity: sender.identity) {
            sever(connection, space: space, sender: sender)
            return
        }
        if message.truncated {
            connection.send(.error(TetherError(.malformedMessage, "message exceeds \(Wire.maxMessageBytes) bytes or carries too many fds")), id: 0)
            return
        }
        let requestID: UInt64
        let request: Request
        do {
            (requestID, request) = try MessageCodec.decodeRequest(message.bytes)
        } catch {
            var r = WireReader(message.bytes)
            let id = (try? MessageCodec.readHeader(&r))?.requestID ?? 0
            connection.send(.error(error), id: id)
            return
        }
        do {
            if let reply = try respond(request, id: requestID, sender: sender, fds: &fds, on: connection) {
                connection.send(reply, id: requestID)
            }
        } catch {
            connection.send(.error(error), id: requestID)
        }
    }

    /// The reply, or nil when it will be sent later (join, kill).
    func respond(_ request: Request, id: UInt64, sender: Sender, fds: inout [Int32],
                         on connection: Connection) throws(TetherError) -> Reply? {
        if !request.isOwnerRequest { return try respondTool(request, id: id, uid: sender.uid, on: connection) }
        let space = try owner(of: connection, sender: sender, request: request)
        switch request {
        case .hello(_, let backendChoice):
            if backendChoice != .auto, backendChoice.rawValue != backend.device.backend.rawValue {
                throw TetherError(.backendUnavailable,
                    "this daemon serves the \(backend.device.backend.rawValue) backend (\(backend.device.name)); start one with `tether daemon --backend \(backendChoice.rawValue)`")
            }
            return .hello(HelloReply(space: space.id, pid: space.pid, policy: space.policy,
                                     backend: backend.device.backend, deviceName: backend.device.name))
        case .mirror(let base, let size):
            return .mirrored(try mirror(base: base, size: size, fds: &fds, space: space))
        case .unmirror(let regionID):
            try registry.removeRegion(regionID, of: space).release()
            return .done
        case .loadModule(let words, let entryPoint):
            let module = try loadModule(words: words, entryPoint: entryPoint, space: space)
            return .module(module.id, module.description)
        case .unloadModule(let moduleID):
            try registry.removeModule(moduleID, of: space)
            return .done
        case .attachRings(let sq, let cq):
            guard fds.count == 1 else { throw TetherError(.invalidArgument, "attachRings needs exactly one memfd attached (got \(fds.count))") }
            let memfd = OwnedDescriptor(adopting: fds.removeFirst())
            try rings.attach(connection, fd: memfd.raw, sqEntries: sq, cqEntries: cq)
            return .done
        case .ringDoorbell:
            return nil  // the event loop polls the rings after this batch of events
        case .spawn(let s):
            return .spawned(try spawn(s, space: space).id)
        case .join(let threadID):
            answerJoin(try ownThread(threadID, of: space), space: space, id: id, on: connection)
            return nil
        case .run(let s):
            answerJoin(try spawn(s, space: space), space: space, id: id, on: connection)
            return nil
        case .kill(let threadID):
            let thread = try ownThread(threadID, of: space)
            killLater(thread, id: id, on: connection)
            return nil
        case .status(let threadID):
            let thread = try ownThread(threadID, of: space)
            return .status(Self.report(thread, outcome: nil))
        default:
            throw TetherError(.malformedMessage, "unexpected request")
        }
    }

    /// Binds on first use and enforces ownership (lifetime rules 1, 2 and 5). The owner is the
    /// process behind the sender's pidfd, never a bare pid (ownership.md, rule 4).
    private func owner(of connection: Connection, sender: Sender, request: Request) throws(TetherError) -> AddressSpace {
        guard sender.pid > 0 else {
            throw TetherError(.permissionDenied, "the kernel did not report the sender of this message (SO_PASSCRED)")
        }
        if let space = connection.space {
            switch space.phase {
            case .live: break
            case .tearingDown, .gone:
                throw TetherError(.ownerExited, "the address space of pid \(space.pid) that owned this connection was torn down; open a new connection")
            }
            guard space.isOwner(pid: sender.pid, identity: sender.identity) else {
                throw TetherError(.notOwner, "pid \(sender.pid) does not own this connection (pid \(space.pid) does); a forked child or a process the fd was passed to must open its own connection")
            }
            return space
        }
        var policy = configuration.policy
        if case .hello(let wanted?, _) = request, wanted != policy {
            guard configuration.allowPolicyOverride else {
                throw TetherError(.permissionDenied, "this daemon runs --policy \(policy) and does not allow a per-connection override")
            }
            policy = wanted
        }
        let gone = TetherError(.ownerExited, "the sending process \(sender.pid) already exited")
        // The kernel's pidfd of the sender, taken when it sent; opening one by pid instead (before
        // Linux 6.5) could name a process that got the pid after the sender died.
        let pidfd: OwnedDescriptor
        if let taken = sender.takePidfd() {
            pidfd = taken
        } else if sendersCarryPidfds {
            throw gone
        } else {
            do { pidfd = try Pidfd.open(sender.pid) } catch { throw gone }
        }
        guard !Pidfd.hasExited(pidfd.raw) else { throw gone }
        let (space, created) = try registry.bind(pid: sender.pid, uid: sender.uid, policy: policy, pidfd: pidfd,
                                                 identity: sender.identity)
        connection.space = space
        if created {
            let t = token(Self.pidfdKind)
            pidfdSpaces[t] = space
            do { try epoll.add(space.pidfd, token: t) } catch { logger.warning("cannot watch pidfd of \(sender.pid): \(error)") }
            if policy == .exit { bpfNotifier?.watch(space) }
            logger.debug("address space created", metadata: ["space": "\(space.id)", "pid": "\(sender.pid)", "policy": "\(policy)"])
        }
        return space
    }

    private func mirror(base: UInt64, size: UInt64, fds: inout [Int32], space: AddressSpace) throws(TetherError) -> RegionID {
        guard fds.count == 1 else {
            throw TetherError(.invalidArgument, "mirror needs exactly one memfd attached (got \(fds.count))")
        }
        let page = UInt64(Memfd.pageSize)
        guard size > 0, size <= Self.maxRegionBytes, size % page == 0, base % page == 0, base > 0,
              base <= UInt64.max - size else {
            throw TetherError(.invalidArgument, "a region must be whole pages at a page-aligned address, 1 page to \(Self.maxRegionBytes >> 30) GiB")
        }
        let memfd = OwnedDescriptor(adopting: fds.removeFirst())  // closed on every error below
        let inspected: (size: Int, shrinkSealed: Bool)
        do { inspected = try Memfd.inspect(memfd.raw) } catch {
            throw TetherError(.invalidArgument, "the attached fd is not a memfd: \(error)")
        }
        // An unsealed memfd could be truncated by its owner, turning our mapping into SIGBUS.
        guard inspected.shrinkSealed, UInt64(inspected.size) >= size else {
            throw TetherError(.invalidArgument, "the memfd must be sealed against shrinking (F_SEAL_SHRINK) and hold at least \(size) bytes")
        }
        let region = try DeviceRegion(id: registry.makeRegionID(), memfd: memfd, ownerBase: base,
                                      size: Int(size), backend: backend)
        do {
            try registry.add(region, to: space)
        } catch {
            region.release()
            throw error
        }
        return region.id
    }

    private func spawn(_ s: SpawnRequest, space: AddressSpace) throws(TetherError) -> DeviceThread {
        // A module's grid is checked per dimension against the device (`UserLaunch`).
        let isModule = if case .module = s.program { true } else { false }
        guard isModule || (s.groups >= 1 && s.groups <= Self.maxGroups) else {
            throw TetherError(.gridTooLarge, "a grid of \(s.groups) workgroups is outside 1…\(Self.maxGroups)")
        }
        guard s.persistentNanos <= Self.maxPersistentNanos else {
            throw TetherError(.invalidArgument, "a persistent thread may run at most 7 days")
        }
        let program: KernelProgram
        var groups = s.groups
        switch s.program {
        case .builtin(let kernel):
            guard s.args.count == kernel.argumentCount else {
                throw TetherError(.invalidArgument, "\(kernel.rawValue) takes \(kernel.argumentCount) arguments, got \(s.args.count)")
            }
            // Pointers are checked here for a clear error up front; device code still checks
            // every access against the region table and faults instead of crashing.
            let outside = try registry.withLock { kernel.pointerArguments.first { space.region(containing: s.args[$0]) == nil } }
            if let i = outside {
                throw TetherError(.addressFault, "argument \(i) of \(kernel.rawValue) (0x\(String(s.args[i], radix: 16))) is outside every mirrored region of this process")
            }
            program = .builtin(kernel)
        case .spirv(let words, let invocations):
            guard rawPointersAllowed(for: space) else {
                throw TetherError(.permissionDenied, "kernels with raw device pointers run only for the daemon's own user when it was started with --allow-raw-pointers; load a module with descriptor bindings instead (Device.loadModule, tether run --spirv)")
            }
            guard backend.device.backend == .vulkan else {
                throw TetherError(.unsupported, "custom SPIR-V kernels need a Vulkan backend; this daemon runs \(backend.device.backend.rawValue)")
            }
            program = .spirv(words: words, invocationsPerGroup: Int(invocations))
        case .module(let launch):
            let module = try registry.module(launch.module, of: space)
            let limits = backend.userKernelLimits!  // a module loaded, so the backend runs them
            let checked = try registry.withLock { () throws(TetherError) -> UserLaunch in
                try UserLaunch(launch, module: module, limits: limits) { space.region(containing: $0, bytes: $1) }
            }
            program = .module(checked)
            groups = UInt32(launch.grid.total)
            guard s.args.isEmpty else { throw TetherError(.invalidArgument, "a module takes push constants, not arguments") }
        }
        let threadID = try registry.makeThreadID()
        let context = try scheduler.contexts.acquire(program)
        let thread = DeviceThread(id: threadID, space: space.id, program: program, args: s.args,
                                  groups: groups, persistentNanos: s.persistentNanos, priority: s.priority,
                                  context: context, regions: space.table)
        try registry.add(thread, to: space)
        try scheduler.submit(thread)
        return thread
    }

    private func rawPointersAllowed(for space: AddressSpace) -> Bool {
        configuration.allowRawPointers && space.uid == getuid()
    }

    /// Validates, reflects and compiles a client's module (`UserModule` says what is refused).
    private func loadModule(words: [UInt32], entryPoint: String, space: AddressSpace) throws(TetherError) -> UserModule {
        guard let limits = backend.userKernelLimits else {
            throw TetherError(.unsupported, "user kernels need a Vulkan backend; this daemon runs \(backend.device.backend.rawValue) (start one with `tether daemon --backend vulkan`)")
        }
        let module = try UserModule(id: registry.makeModuleID(), words: words, entryPoint: entryPoint, limits: limits,
                                    allowRawPointers: rawPointersAllowed(for: space))
        try backend.prepare(module)
        try registry.add(module, to: space)
        return module
    }

    /// Replies `joined` when the thread ends, then reaps it (like `waitpid`).
    private func answerJoin(_ thread: DeviceThread, space: AddressSpace, id: UInt64, on connection: Connection) {
        scheduler.onCompletion(thread) { [registry] outcome in
            // Reaped only once the report is out: a connection shut down under its owner loses
            // the reply, and the owner's library asks again on its resumed connection.
            if connection.send(.joined(Self.report(thread, outcome: outcome)), id: id) {
                registry.forget(thread.id, of: space)
            }
        }
    }

    private func ownThread(_ id: ThreadID, of space: AddressSpace) throws(TetherError) -> DeviceThread {
        guard let t = try registry.withLock({ space.threads[id] }) else {
            throw noSuchThread(id, "in this address space")
        }
        return t
    }

    /// Says when a handle is from another daemon instance (ownership.md, rule 5).
    private func noSuchThread(_ id: ThreadID, _ place: String) -> TetherError {
        let g = registry.generation
        if id.generation != g {
            return TetherError(.noSuchThread, "no device thread \(id) \(place): it was made by another daemon (\(id.generation); this one is \(g)), and handles do not survive a daemon restart")
        }
        return TetherError(.noSuchThread, "no device thread \(id) \(place)")
    }

    /// Kills off the event loop (it waits for a slice in flight) and replies when quiesced.
    private func killLater(_ thread: DeviceThread, id: UInt64, on connection: Connection) {
        let scheduler = self.scheduler
        let received = monotonicNanos()
        killQueue.submit {
            let start = monotonicNanos()
            let alive = scheduler.kill(thread)
            connection.send(.killed(wasAlive: alive), id: id)
            if traceKills { printError("kill: queued \((start - received) / 1000) µs, quiesce \((monotonicNanos() - start) / 1000) µs") }
        }
    }

    static func report(_ t: DeviceThread, outcome: ThreadOutcome?) -> ThreadReport {
        ThreadReport(thread: t.id, kernel: t.program.name, state: outcome?.state ?? t.state,
                     deviceNanos: outcome?.deviceNanos ?? t.deviceNanos, priority: t.priority, error: outcome?.error)
    }

    // MARK: Tool requests

    private func respondTool(_ request: Request, id: UInt64, uid: UInt32, on connection: Connection) throws(TetherError) -> Reply? {
        switch request {
        case .ping: return .pong
        case .ps: return .ps(processTable(uid: uid))
        case .timelines(let pid): return .timelines(registry.timelines(pid: pid, uid: uid))
        case .awaitTeardown(let pid, let timeout):
            // The check and the registration happen under the waiters' lock, which the teardown
            // executor also takes after releasing a space: a release in between cannot be missed.
            let immediate: Bool = teardownWaiters.withLock { waiters in
                if visibleSpaces(ofPid: pid, uid: uid).isEmpty { return true }
                waiters.append(TeardownWaiter(pid: pid, uid: uid, deadline: monotonicNanos() + UInt64(timeout) * 1_000_000,
                                              connection: connection, requestID: id))
                return false
            }
            // Otherwise answered when the space is released, or by the event loop, which
            // recomputes its epoll timeout from the waiters' deadlines before every wait.
            if immediate { return .timelines(registry.timelines(pid: pid, uid: uid)) }
            return nil
        case .killProcess(let pid):
            // Another user's work is not shown, so it is not found either (ownership.md, rule 7).
            let spaces = visibleSpaces(ofPid: pid, uid: uid)
            guard !spaces.isEmpty else { throw TetherError(.invalidArgument, "pid \(pid) has no device work of yours here") }
            let now = monotonicNanos()
            let owned = spaces.filter { registry.beginTeardown($0, noticeNanos: now) }
            guard !owned.isEmpty else { return .killedProcess(threads: 0) }
            let counter = KillCounter(remaining: owned.count)
            for space in owned {
                chain.enqueue(space, reason: "kill") { timeline in
                    if let total = counter.add(timeline.threadsKilled) { connection.send(.killedProcess(threads: total), id: id) }
                }
            }
            return nil
        case .killThread(let threadID):
            guard let (thread, space) = registry.thread(threadID), uid == 0 || space.uid == uid else {
                throw noSuchThread(threadID, "of yours here")
            }
            killLater(thread, id: id, on: connection)
            return nil
        default:
            throw TetherError(.malformedMessage, "unexpected request")
        }
    }

    /// The spaces of `pid` that `uid` may see and touch: its own, all for root.
    private func visibleSpaces(ofPid pid: Int32, uid: UInt32) -> [AddressSpace] {
        registry.spaces(ofPid: pid).filter { uid == 0 || $0.uid == uid }
    }

    /// What `ps` shows `uid` (nil: everything, for the daemon's own use).
    func processTable(uid: UInt32? = nil) -> ProcessTable {
        let scheduler = self.scheduler
        let spaces = registry.report(uid: uid) { scheduler.deviceNanos(ofSpace: $0) }
        return ProcessTable(backend: backend.device.backend, deviceName: backend.device.name,
                            policy: configuration.policy, spaces: spaces)
    }
}

let traceKills = environment("TETHER_TRACE_TEARDOWN") != nil

struct TeardownWaiter {
    var pid: Int32
    /// Who asked: answered with the timelines that uid may see.
    var uid: UInt32
    var deadline: UInt64
    var connection: Connection
    var requestID: UInt64
}

/// Counts down kill completions across spaces; the last one gets the total.
final class KillCounter: @unchecked Sendable {
    private let monitor = Monitor()
    private var remaining: Int
    private var total: UInt32 = 0
    init(remaining: Int) { self.remaining = remaining }
    func add(_ n: UInt32) -> UInt32? {
        monitor.withLock {
            total += n
            remaining -= 1
            return remaining == 0 ? total : nil
        }
    }
}
