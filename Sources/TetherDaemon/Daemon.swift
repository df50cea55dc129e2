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
    /// Caps per address space, connection and user (`DaemonLimits`).
    public var limits = DaemonLimits()
    /// How long the event loop polls the clients' submission rings after activity before it
    /// sleeps (`RingServer`); 0: never poll, every ring submission rings the doorbell.
    public var ringPollNanos: UInt64 = 20_000
    /// Whether the scheduler's worker may run a small awaited slice itself when the device is
    /// otherwise idle (`Scheduler.runsSmallSlicesOnWorker`).
    public var smallSlicesOnWorker = true
    /// How long the event loop polls the rings after activity while the device's own threads
    /// have nothing to run (`RingServer.idlePollNanos`).
    public var ringIdlePollNanos: UInt64 = 100_000
    /// How long the event loop waits for the end of a run it started itself before the
    /// scheduler's worker finishes it (`Scheduler.submitterWaitNanos`; nil: the backend's).
    public var submitterWaitNanos: UInt64?

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
    /// Open connections per uid (the event loop only).
    private var connectionsOfUid: [UInt32: UInt64] = [:]
    /// Accepts and turns away a connection when the daemon is out of fds (see `acceptAll`).
    private let listenerGuard = ListenerGuard()
    /// Connections out of request tokens, with when their next one is due (the event loop only).
    private var throttled: [(due: UInt64, token: UInt64, ring: Bool)] = []
    /// Each uid's new-connection budget (`admitNewConnection`); one entry per uid that ever
    /// connected, and only the kernel hands out uids.
    private var newConnections: [UInt32: RequestBudget] = [:]
    /// Event-loop state: the watched pidfd of each live space, by epoll token and by space.
    private var pidfdSpaces: [UInt64: AddressSpace] = [:]
    private var pidfdTokens: [SpaceID: UInt64] = [:]
    /// Spaces the exit notifier chain released (from its thread): the event loop stops watching
    /// their pidfds and closes them (`closeReleasedPidfds`).
    private let releasedSpaces = Mutex<[AddressSpace]>([])
    private var nextToken: UInt64 = 1
    /// One more byte than the largest message, so an oversized one shows as truncated.
    private let receiveBuffer = ReceiveBuffer(capacity: Wire.maxMessageBytes + 1)
    /// Explicit kills wait for a slice in flight, so they run here, never on the event loop.
    private let killQueue = WorkQueue(name: "tether-kill")
    private let teardownWaiters = TeardownWaiters()
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
        ServiceProcess.prepare(logger: logger)
        // Before anything else: a directory someone else prepared is refused (ownership.md, rule 6).
        try SocketPath.prepareDirectory(for: configuration.socketPath)
        let (generation, fallback) = GenerationCounter.next(forSocket: configuration.socketPath)
        if let fallback { logger.warning("daemon generation is random: \(fallback)") }
        registry = Registry(generation: generation, quota: configuration.limits.quota)
        backend = try BackendFactory.open(configuration.backend) { logger.notice("\($0)") }
        scheduler = Scheduler(backend: backend, quantumNanos: configuration.quantumNanos,
                              slicesInFlight: configuration.slicesInFlight,
                              runsSmallSlicesOnWorker: configuration.smallSlicesOnWorker,
                              submitterWaitNanos: configuration.submitterWaitNanos)
        chain = ExitNotifierChain(registry: registry, scheduler: scheduler)
        rings = RingServer(pollNanos: configuration.ringPollNanos, idlePollNanos: configuration.ringIdlePollNanos) {
            [limits = configuration.limits, scheduler] in $0.hasQueuedEnough(limits, on: scheduler)
        }
        (bpfNotifier, notifierNote) = Self.openNotifier(configuration.notifier)
        if configuration.notifier == .bpf && bpfNotifier == nil {
            scheduler.shutdown()
            throw TetherError(.unsupported, "--notifier bpf: \(notifierNote)")
        }
        do {
            epoll = try Epoll()
            wake = try EventFD()
            try StaleSocket.removeIfStale(configuration.socketPath)
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
            guard let self else { return }
            let due = teardownWaiters.take(pid: space.pid) { registry.spaces(ofPid: space.pid).isEmpty }
            for w in due {
                w.connection.send(.timelines(registry.newestTimelines(pid: space.pid, uid: w.uid, limit: Self.awaitedTimelines)),
                                  id: w.requestID)
            }
        }
        if let bpfNotifier { chain.subscribe("bpf") { space, _ in bpfNotifier.forget(space) } }
        chain.subscribe("pidfd") { [weak self] space, _ in
            guard let self else { return }
            releasedSpaces.withLock { $0.append(space) }
            wake.signal()
        }
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
            let timeout = min(expireTeardownWaiters(), listenerGuard.resume(listener, in: epoll, token: Self.listenerKind << 56),
                              resumeThrottled())
            for (token, events) in epoll.wait(timeoutMillis: rings.sleepTimeout(timeout, deviceIdle: scheduler.runsSmallSlicesOnWorker && !scheduler.deviceThreadsBusy)) {
                switch token >> 56 {
                case Self.listenerKind: acceptAll()
                case Self.wakeKind:
                    wake.drain()
                    closeReleasedPidfds()
                case Self.connectionKind: connectionEvent(token, events: events)
                case Self.pidfdKind: ownerExited(token, at: monotonicNanos())
                case Self.bpfKind: earlyNotice(at: monotonicNanos())
                default: break
                }
            }
            if !rings.isEmpty {
                rings.poll(rate: { [limits = configuration.limits] c, now in isShared(c, now: now) ? limits.sharedRingRequestsPerSecond : nil },
                           ringEvent)
            }
        }
        shutdown()
    }

    /// Answers waiters whose time is up with an empty list; returns how long epoll may sleep.
    private func expireTeardownWaiters() -> Int32 {
        let now = monotonicNanos()
        let (due, next) = teardownWaiters.expire(now: now)
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
        closeReleasedPidfds()
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

    /// Accepts what is pending (at most a batch per wake-up, so a connection flood shares the
    /// loop with everyone else). Out of fds, `accept` would fail again at once and the
    /// level-triggered listener would spin the loop: `ListenerGuard` accepts the connection on a
    /// reserved fd and turns it away with a sentence, or pauses the listener for a moment.
    private func acceptAll() {
        for _ in 0..<64 {
            let fd: OwnedDescriptor
            do throws(SystemError) {
                guard let accepted = try SeqPacketSocket.accept(listener) else { return }
                fd = accepted
            } catch {
                listenerGuard.acceptFailed(error, listener: listener, epoll: epoll, logger: logger)
                return
            }
            let uid = (try? SeqPacketSocket.peerCredentials(fd.raw).uid) ?? UInt32.max
            let t = token(Self.connectionKind)
            let limits = configuration.limits, now = monotonicNanos()
            let connection = Connection(
                id: t, fd: fd, uid: uid, epoll: epoll,
                budget: RequestBudget(perSecond: limits.requestsPerSecond, burst: limits.requestBurst, now: now),
                ringBudget: RequestBudget(perSecond: limits.ringRequestsPerSecond, burst: 4 * limits.requestBurst, now: now))
            let limit = configuration.limits.connections
            guard connectionsOfUid[uid, default: 0] < limit.value else {
                connection.send(.error(limit.exceeded(have: connectionsOfUid[uid, default: 0], hint: "close some first")), id: 0)
                connection.close()
                continue
            }
            do {
                try epoll.add(connection.rawFD, token: t, events: Connection.readInterest)
                connections[t] = connection
                connectionsOfUid[uid, default: 0] += 1
                admitNewConnection(connection, now: now)
            } catch {
                logger.warning("cannot watch a new connection: \(error)")
                connection.close()
            }
        }
    }

    /// Spends a token of the uid's new-connection budget; without one, the connection is not
    /// read until its turn (`DaemonLimits.newConnectionsPerSecond`). The budget may go into debt,
    /// one token per connection, so connections in excess are served in order at the rate; the
    /// debt is bounded by the uid's connection limit.
    private func admitNewConnection(_ connection: Connection, now: UInt64) {
        let limits = configuration.limits
        var budget = newConnections[connection.uid]
            ?? RequestBudget(perSecond: limits.newConnectionsPerSecond, burst: DaemonLimits.newConnectionBurst, now: now)
        let due = budget.hasToken(now: now) ? nil : budget.nextToken()
        budget.spend(now: now)
        newConnections[connection.uid] = budget
        if let due { throttle(connection, until: due) }
    }

    /// Replies may go out (`EPOLLOUT`), requests may come in, or the peer went away.
    private func connectionEvent(_ token: UInt64, events: UInt32) {
        guard let connection = connections[token] else { return }
        if events & UInt32(EPOLLOUT.rawValue) != 0 { connection.flush() }
        if connection.isReadPaused {
            // Not reading: only a peer that is gone for good (both directions) ends it now; its
            // unread replies go with it.
            if events & UInt32(EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { hangUp(connection) }
            return
        }
        if events & UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
            readable(token, events: events)
        }
    }

    /// How long each user's `run`s held the event loop past their bound (one entry per uid that
    /// ever overran; event loop only).
    private var eventLoopOverruns: [UInt32: OverrunBudget] = [:]

    /// The requesters whose requests were read last (`isShared`).
    private var recentRequesters = RecentRequesters()
    /// How recent another requester's request must be for a connection not to be alone.
    static let sharedWindowNanos: UInt64 = 10_000_000

    /// Notes a request read from `connection` (a socket message, or a ring packet) and says
    /// whether it shares the daemon: a request of another requester (another address space, or a
    /// connection without one) was read within `sharedWindowNanos`, threads of more than one
    /// space are on the device, or another space's are while the connection's own space has none
    /// there. Such a connection is read at `DaemonLimits.sharedRequestsPerSecond` and
    /// `sharedRingRequestsPerSecond` (fair admission). The answer is kept in
    /// `Connection.readWhileShared` for the request's handler.
    ///
    /// The last: a client waiting for a long run asks for nothing meanwhile, and still shares the
    /// daemon (measured, `tether bench load --floods requests`, lavapipe: a ping flood was read at
    /// ~12,600 a second, not 5,000, while the client's 13 ms saxpys ran, and its dispatch was
    /// 1.54–1.65× its time alone in four runs of six).
    func isShared(_ connection: Connection, now: UInt64) -> Bool {
        // Space ids and connection tokens (kind in the top byte) never collide.
        let other = recentRequesters.note(connection.space?.id.rawValue ?? connection.id, at: now)
        connection.readWhileShared = scheduler.isShared || other.map { now &- $0 < Self.sharedWindowNanos } == true
            || scheduler.hasWork && !(connection.space.map { scheduler.hasWork(of: $0.id) } ?? false)
        return connection.readWhileShared
    }

    /// How soon a connection whose space has as many threads queued as it may is read again.
    static let queuedRecheckNanos: UInt64 = 1_000_000

    /// Requests taken from one connection per event-loop round. One: a ring request (polled
    /// after every round) then waits behind one message of each busy socket, not eight — it
    /// takes ~10 µs alone now, and eight spawns of a flooding socket are ~100 µs (measured with
    /// `tether bench load --floods spawns waiters`: 1.05–1.24× alone mostly, against 1.06–4.1×).
    static let messagesPerTurn = 1

    /// Out of requests for now: its socket (or its submission ring) is not read until its next
    /// token (`resumeThrottled`). The two budgets are apart: a stream over the ring that spills
    /// onto the socket when the ring is full does not stop the ring.
    /// `until`: when to read again (default: the transport budget's next token).
    func throttle(_ connection: Connection, ring: Bool = false, until due: UInt64? = nil) {
        if ring {
            guard !connection.ringWaits else { return }
            connection.ringWaits = true
        } else {
            guard !connection.isThrottled else { return }
            connection.setThrottled(true)
        }
        throttled.append((due ?? (ring ? connection.ringBudget : connection.budget).nextToken(), connection.id, ring))
    }

    /// Reads again from the connections whose next request token is due; returns how long epoll
    /// may sleep before the next one is (ms; 1000 when none waits).
    private func resumeThrottled() -> Int32 {
        guard !throttled.isEmpty else { return 1000 }
        let now = monotonicNanos()
        var next = UInt64.max
        throttled.removeAll { entry in
            guard entry.due <= now else {
                next = min(next, entry.due)
                return false
            }
            if entry.ring { connections[entry.token]?.ringWaits = false } else { connections[entry.token]?.setThrottled(false) }
            return true
        }
        return next == .max ? 1000 : Int32(min(1000, (next - now) / 1_000_000 + 1))
    }

    private func readable(_ token: UInt64, events: UInt32) {
        guard let connection = connections[token] else { return }
        // One message per round (fair admission: a flooding connection waits its turn like
        // everyone else; epoll is level-triggered, so the rest come at the next round). A hang-up
        // is seen as EOF after the last message.
        for _ in 0..<Self.messagesPerTurn {
            guard connection.mayReadMore() else { return }
            let now = monotonicNanos()
            guard connection.budget.hasToken(now: now) else {
                throttle(connection)
                return
            }
            if connection.space?.hasQueuedEnough(configuration.limits, on: scheduler) == true {
                throttle(connection, until: now + Self.queuedRecheckNanos)
                return
            }
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
                connection.budget.spend(now: now, rate: isShared(connection, now: now) ? configuration.limits.sharedRequestsPerSecond : nil)
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
        connection.close()
        if let n = connectionsOfUid[connection.uid] { connectionsOfUid[connection.uid] = n > 1 ? n - 1 : nil }
        teardownWaiters.drop(connection)
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

    /// Stops watching the pidfds of released spaces and closes them (event loop only).
    private func closeReleasedPidfds() {
        for space in releasedSpaces.withLock({ list in defer { list = [] }; return list }) {
            if let token = pidfdTokens.removeValue(forKey: space.id) {
                pidfdSpaces[token] = nil
                epoll.remove(space.pidfd)
            }
            close(space.pidfd)
        }
    }

    /// The owner's pidfd became readable: its whole thread group exited (`exit_mm`).
    private func ownerExited(_ token: UInt64, at now: UInt64) {
        guard let space = pidfdSpaces.removeValue(forKey: token) else { return }
        pidfdTokens[space.id] = nil
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
            connection.send(.error(Self.truncationError(message.bytes.count)), id: 0)
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
            if error.code == .resourceExhausted { connection.budget.chargeRefusal() }
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
                    "this daemon serves the \(backend.device.backend.rawValue) backend (\(backend.device.name)); leave --backend out to use it, or start a \(backendChoice.rawValue) daemon on another socket (`tether daemon --backend \(backendChoice.rawValue) --socket PATH`, then pass --socket PATH)")
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
            guard fds.count == 2 else { throw TetherError(.invalidArgument, "attachRings needs two fds attached, the rings' memfd and an eventfd (got \(fds.count))") }
            let memfd = OwnedDescriptor(adopting: fds.removeFirst())
            try rings.attach(connection, fd: memfd.raw, eventfd: OwnedDescriptor(adopting: fds.removeFirst()), sqEntries: sq, cqEntries: cq, loopWake: wake)
            // Over the socket: the client starts reading the completion ring once this arrives.
            connection.send(.done, id: id, viaSocket: true)
            return nil
        case .ringDoorbell:
            // The event loop polls the rings after this batch of events. An empty doorbell keeps
            // its full price, so a doorbell flood is admitted like any other.
            if rings.doorbellFindsWork(connection) { connection.budget.chargeOwnRate() }
            return nil
        case .spawn(let s):
            // Read moments ago; asking `isShared` again would note the request twice.
            return .spawned(try spawn(s, space: space, beside: connection.readWhileShared).id)
        case .join(let threadID):
            let thread: DeviceThread
            do throws(TetherError) { thread = try ownThread(threadID, of: space) } catch {
                // Reaped already: its reply went to a connection shut down under its owner, who
                // asks again on the resumed one (`RecentReaps`).
                if let report = registry.reapedReport(threadID, of: space) { return .joined(report) }
                throw error
            }
            try answerJoin(thread, space: space, id: id, on: connection)
            return nil
        case .run(let s):
            // Admitted before the thread exists: a refused run leaves nothing behind.
            guard UInt64(connection.pendingJoins.load(ordering: .relaxed)) < configuration.limits.pendingJoinsPerConnection else {
                let limit = configuration.limits.pendingJoins
                throw limit.exceeded(have: limit.value, hint: "wait for some to be answered first")
            }
            // The join is in place before the scheduler sees the thread, so that a tiny one may
            // run right here (`Scheduler.submit(_:runHere:)`).
            let thread = try spawn(s, space: space, submit: false)
            do {
                try answerJoin(thread, space: space, id: id, on: connection)
            } catch {
                try scheduler.submit(thread)
                throw error
            }
            try submitRun(thread, space: space)
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
        var policy = configuration.policy, asked = false
        if case .hello(let wanted?, _) = request {
            asked = true
            if wanted != policy {
                guard configuration.allowPolicyOverride else {
                    throw TetherError(.permissionDenied, "this daemon runs --policy \(policy) and does not allow a per-connection override")
                }
                policy = wanted
            }
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
        let (space, created) = try registry.bind(pid: sender.pid, uid: sender.uid, policy: policy, asked: asked, pidfd: pidfd,
                                                 identity: sender.identity)
        connection.space = space
        if created {
            let t = token(Self.pidfdKind)
            pidfdSpaces[t] = space
            pidfdTokens[space.id] = t
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
        // Pages the owner never allocated would be allocated by the daemon's first touch and
        // charged to the daemon, not to the client (docs/lifetime.md, "Memory accounting").
        let unallocated = Memfd.unallocatedBytes(memfd.raw)
        if unallocated > 0 {
            throw TetherError(.invalidArgument, "the memfd's pages are not all allocated (\(unallocated) of its \(inspected.size) bytes are not): allocate them before mirroring (fallocate, or MAP_POPULATE / touching every page), so that they are charged to your process and not to the daemon; the Tether library does this")
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

    /// Submits a `run`'s thread, letting the scheduler run it here on the event loop when it is
    /// known to be tiny — unless this user's runs held the event loop past their bound for too
    /// long lately (`OverrunBudget`).
    private func submitRun(_ thread: DeviceThread, space: AddressSpace) throws(TetherError) {
        let now = monotonicNanos()
        let ran = try scheduler.submit(thread, runHere: eventLoopOverruns[space.uid]?.allows(at: now) ?? true)
        guard let ran, ran > scheduler.submitterOverrunNanos else { return }
        // The measured cost lied (data-dependent float speed, cold pages), or the machine kept the
        // work off the CPU. The overrun itself raises the work's measured cost, so the next ~10
        // such runs go to the worker anyway.
        guard eventLoopOverruns[space.uid, default: OverrunBudget()].overran(nanos: ran, at: now) else { return }
        logger.notice("this user's runs held the event loop past their bound for over \(OverrunBudget.burstNanos / 1_000_000) ms (the last: \(ran / 1000) µs, expected under \(Int(scheduler.submitterSliceNanos / 1000)) µs); they go to the scheduler's worker for a second",
                      metadata: ["uid": "\(space.uid)", "pid": "\(space.pid)"])
    }

    /// `submit`: false leaves the thread registered but not yet queued; the caller submits it.
    /// `beside`: spawned while another requester uses the daemon (`isShared`): its known-tiny
    /// slices run on the scheduler's worker although nobody waits for it yet
    /// (`DeviceThread.tinySlicesOnWorker`).
    private func spawn(_ s: SpawnRequest, space: AddressSpace, submit: Bool = true, beside: Bool = false) throws(TetherError) -> DeviceThread {
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
            // Specializing runs the optimizer and the validator: not under the registry lock.
            _ = try module.specialized(try UserLaunch.specialization(of: launch, module: module))
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
                                  context: context, regions: space.table, queued: space.queued)
        thread.tinySlicesOnWorker = beside
        do {
            try registry.add(thread, to: space)
        } catch {
            // Refused (a limit, a teardown): nothing ran on the context; it goes back to the pool.
            scheduler.contexts.recycle(context, program: program)
            throw error
        }
        if submit { try scheduler.submit(thread) }
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

    /// Replies `joined` when the thread ends, then reaps it (like `waitpid`). Counted against the
    /// connection's pending joins until then.
    private func answerJoin(_ thread: DeviceThread, space: AddressSpace, id: UInt64, on connection: Connection) throws(TetherError) {
        let limit = configuration.limits.pendingJoins
        let had = connection.pendingJoins.add(1, ordering: .relaxed).oldValue
        guard UInt64(had) < limit.value else {
            connection.pendingJoins.subtract(1, ordering: .relaxed)
            throw limit.exceeded(have: UInt64(had), hint: "wait for some to be answered first")
        }
        scheduler.onCompletion(thread) { [registry] outcome in
            connection.pendingJoins.subtract(1, ordering: .relaxed)
            // Reaped once the report is out (it may wait in the connection's queue). A connection
            // shut down under its owner may lose it: the owner's library asks again on its
            // resumed connection, and is answered from the space's recent reaps.
            let report = Self.report(thread, outcome: outcome)
            connection.send(.joined(report), id: id) {
                registry.forget(thread.id, of: space, report: report)
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
        // Generation 0 is never a daemon's: a bare number, typed by hand.
        if id.generation == .local {
            return TetherError(.noSuchThread, "no device thread \(id) \(place): a thread id names its daemon too (`tether ps` shows them, like t3.17)")
        }
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
        case .ps:
            return try Self.fitting(.ps(processTable(uid: uid)), "the process table", instead: "psPage")
        case .timelines(let pid):
            return try Self.fitting(.timelines(registry.timelines(pid: pid, uid: uid)), "the timelines", instead: "timelinesPage")
        case .psPage(let afterSpace, let afterThread):
            let scheduler = self.scheduler
            let (spaces, next) = registry.reportPage(uid: uid, afterSpace: afterSpace, afterThread: afterThread,
                                                     limit: Self.psPageEntries) { scheduler.deviceNanos(ofSpace: $0) }
            return .psPage(ProcessTable(backend: backend.device.backend, deviceName: backend.device.name,
                                        policy: configuration.policy, spaces: spaces),
                           next: next.map { PsCursor(space: $0.space, thread: $0.thread) })
        case .timelinesPage(let pid, let after):
            let (list, next) = registry.timelines(pid: pid, uid: uid, after: after, limit: Self.timelinesPageEntries)
            return .timelinesPage(list, next: next)
        case .awaitTeardown(let pid, let timeout):
            // The check and the registration happen under the waiters' lock, which the teardown
            // executor also takes after releasing a space: a release in between cannot be missed.
            let waiter = TeardownWaiters.Waiter(pid: pid, uid: uid, deadline: monotonicNanos() + UInt64(timeout) * 1_000_000,
                                                connection: connection, requestID: id)
            let immediate = try !teardownWaiters.add(waiter, limits: configuration.limits) {
                visibleSpaces(ofPid: pid, uid: uid).isEmpty
            }
            // Otherwise answered when the space is released, or by the event loop, which
            // recomputes its epoll timeout from the waiters' deadlines before every wait.
            if immediate { return .timelines(registry.newestTimelines(pid: pid, uid: uid, limit: Self.awaitedTimelines)) }
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

    /// Entries (a space or a thread) in one `psPage` reply: a thread report is at most ~100 bytes
    /// (a 63-byte kernel name), a space ~60, so a page stays under 128 KiB — inside
    /// `Wire.maxMessageBytes` and the socket's default send buffer (208 KiB).
    static let psPageEntries = 1_200
    /// Timelines in one `timelinesPage` reply (~80 bytes each).
    static let timelinesPageEntries = 1_500

    /// Timelines in an `awaitTeardown` reply: the pid's newest. A waiter wants the release it
    /// waited for, the last one; the rest are there for a pid with several spaces.
    static let awaitedTimelines = 64

    /// A reply of the unpaged `ps` or `timelines`, or a sentence saying it does not fit one message.
    static func fitting(_ reply: Reply, _ what: String, instead: String) throws(TetherError) -> Reply {
        let size = MessageCodec.encode(reply, id: 0).count
        guard size <= Wire.maxMessageBytes else {
            throw TetherError(.resourceExhausted, "\(what) (\(size) bytes) does not fit one message of \(Wire.maxMessageBytes) bytes; a client of this version asks for it page by page (\(instead)): update the tool")
        }
        return reply
    }

    /// Why a message did not fit: too many bytes, or fds the kernel could not install — too many
    /// of them, or none left in the daemon (`MSG_CTRUNC` says only that some were dropped).
    static func truncationError(_ received: Int) -> TetherError {
        if received > Wire.maxMessageBytes {
            return TetherError(.malformedMessage, "message exceeds \(Wire.maxMessageBytes) bytes")
        }
        let probe = dup(0)
        if probe < 0 && (errno == EMFILE || errno == ENFILE) {
            return TetherError(.resourceExhausted, "the daemon is out of file descriptors and could not receive the fds attached to this message; try again later (its operator can raise its RLIMIT_NOFILE or lower --max-connections-per-user)")
        }
        if probe >= 0 { close(probe) }
        return TetherError(.malformedMessage, "message carries more than \(SeqPacketSocket.maxFdsPerMessage) fds")
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
