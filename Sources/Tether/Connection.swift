import CTetherLinux
import Glibc
import TetherCore
import TetherSys

/// One `SOCK_SEQPACKET` connection to the daemon, shared by every call of a `Device` or
/// `DaemonControl`.
///
/// Calls are multiplexed by request id: a caller registers a waiter under a fresh id, sends, and
/// sleeps; the one reader thread decodes each reply and wakes the waiter with that id. Replies
/// may arrive out of order (a `join` is answered only when its thread ends, while later calls go
/// on), so nothing here assumes request/reply lock-step.
///
/// Failure is sticky: once the reader sees hang-up, a read error or a message it cannot attribute
/// to a call, every pending call and every later call fails with the same error. A call never
/// hangs on a dead daemon, and a call with a deadline never outlives it.
///
/// Fork: a forked child inherits this object but not its reader thread, and it may inherit the
/// locks in whatever state another thread of the parent held them. A `Connection` is therefore
/// used only in the process that opened it (`openerPid`); `close()` in any other process returns
/// without touching the fd, the locks or the waiters. The owners (`Device`, `DaemonControl`)
/// open a new connection in the child instead. The inherited object is never deallocated there
/// while it has waiters (an unresumed continuation would complain): waiters exist only while the
/// reader runs, and the reader's reference was copied by fork and is never released.
final class Connection: @unchecked Sendable {
    /// The socket. Closed only by `releaseDescriptors`, in the opener, after the reader has
    /// stopped polling it: closing it under a blocked reader would let the number be reused and
    /// the reader read somebody else's fd.
    let fd: Int32
    let socketPath: String
    let openerPid: pid_t
    /// Wakes the reader out of `poll`: on close, and when an async call with a deadline is
    /// registered (the reader sleeps only until the earliest one). The value is the eventfd, or
    /// -1 once closed; writers hold the lock so they never write to a closed (reused) number.
    /// A forked child's copy is left open, like the rest of an inherited connection.
    private let wakeGate: Locked<Int32>
    /// Whether `fd` is in the C fork table (`tether_track_device_fd`).
    private let tracked: Bool

    /// Ids, waiters and the sticky failure.
    private let state = Locked(State())
    /// True while `fd` is open. Held across `sendmsg`, and by the close of `fd`, so a send never
    /// hits a closed or reused number. (One message per packet needs no framing lock.)
    private let sendGate = Locked(true)
    /// Lets `close()` wait until the reader has left `poll`/`recvmsg` for good.
    private let readerExit = Completion()
    /// The submission and completion rings, once attached (`attachRings`); nil: socket only.
    private let ringGate = Locked<RingChannel?>(nil)
    /// How long a caller polls the completion ring before it sleeps (and how long a submission
    /// waits for room in a full ring before it takes the socket).
    private(set) var ringSpinNanos: UInt64 = 0

    struct Pending {
        var waiter: Waiter
        /// CLOCK_MONOTONIC ns; only async waiters carry one (a blocking caller times itself out).
        var deadline: UInt64?
        /// Whether its reply may come through the completion ring and nobody polls for it (an
        /// async waiter, or a blocking one that went to sleep): the reader then keeps the ring's
        /// need-wakeup flag set so that the daemon rings the socket doorbell.
        var sleepsOnRing = false
        /// What the call was, for the timeout sentence (formatted only then: interpolating an enum
        /// goes through reflection, ~0.5 µs of every ring round trip here).
        var what: Op
        var timeoutSeconds: Double?
    }

    struct State {
        var nextID: UInt64 = 1
        var pending: [UInt64: Pending] = [:]
        /// The ids in `pending` that carry a deadline, so the reader scans only those.
        var timed: Set<UInt64> = []
        /// How many pending waiters have `sleepsOnRing`.
        var ringSleepers = 0
        /// Set once (hang-up, read error, unreadable reply, close); every later call throws it.
        var failure: TetherError?
        /// The peer end went away under us while we had not closed it: end of file or a broken
        /// pipe. Either the daemon died or the connection was shut down (by another holder of
        /// the fd, or severed by the daemon); the owner tells them apart by resuming.
        var shutDown = false
        var closed = false
        var readerRunning = true
        var readerThread: pthread_t?

        mutating func take(_ id: UInt64) -> Pending? {
            guard let p = pending.removeValue(forKey: id) else { return nil }
            if p.deadline != nil { timed.remove(id) }
            if p.sleepsOnRing { ringSleepers -= 1 }
            return p
        }

        mutating func takeAll() -> [Waiter] {
            defer {
                pending.removeAll()
                timed.removeAll()
                ringSleepers = 0
            }
            return pending.values.map(\.waiter)
        }
    }

    enum Waiter: Sendable {
        case blocking(Slot)
        case async(CheckedContinuation<Result<Reply, TetherError>, Never>)

        /// Never called with a lock held: a continuation must be resumed outside the lock.
        func resolve(_ result: Result<Reply, TetherError>) {
            switch self {
            case .blocking(let slot): slot.fulfil(result)
            case .async(let continuation): continuation.resume(returning: result)
            }
        }
    }

    // MARK: Opening

    /// Connects, and starts the reader. `track` puts the fd in the C fork table with
    /// `closeOnFork` (device connections); tool connections bind nothing and stay out of it so
    /// that `tether_fds_closed_on_fork()` counts device fds only.
    static func open(path: String, track: Bool, closeOnFork: Bool, sendTimeoutSeconds: Double) throws(TetherError) -> Connection {
        let fd: Int32
        do throws(SystemError) {
            // Bounded like every call: a daemon that stopped accepting cannot hold us in connect.
            fd = try SeqPacketSocket.connect(path: path, timeoutSeconds: sendTimeoutSeconds).release()
        } catch {
            throw connectError(error, path: path)
        }
        // Not a byte before we know who listens: a daemon of our own uid or root's. Anyone who
        // could create the socket's directory first could otherwise listen there and be sent
        // our memory (ownership.md, rule 6).
        do throws(TetherError) {
            try checkPeer(fd, path: path)
        } catch {
            Glibc.close(fd)
            throw error
        }
        // At once: a fork from another thread between connect and here is the one case in
        // which a child would inherit the fd without the atfork handler knowing of it.
        if track { tether_track_device_fd(fd, closeOnFork) }
        // Closed in every forked child (the fork table): a child that could read it would steal
        // the wake-ups of close and of deadlines, and one that could write it full would block
        // them (it is non-blocking too).
        let wake = tether_private_eventfd()
        if wake < 0 {
            let e = SystemError("eventfd")
            if track { tether_untrack_device_fd(fd) }
            Glibc.close(fd)
            throw TetherError(.resourceExhausted, "cannot create the reader's wake-up eventfd: \(e)")
        }
        // A daemon that stops reading must not block a sender forever: sendmsg gives up with
        // EAGAIN after this long.
        var tv = timeval(seconds: sendTimeoutSeconds)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let connection = Connection(fd: fd, wakeFd: wake, path: path, tracked: track)
        startThread(name: "tether-reader") { connection.readLoop() }
        return connection
    }

    private init(fd: Int32, wakeFd: Int32, path: String, tracked: Bool) {
        self.fd = fd
        self.wakeGate = Locked(wakeFd)
        self.socketPath = path
        self.tracked = tracked
        self.openerPid = getpid()
    }

    deinit {
        // The reader holds a strong reference while it runs, so this runs after it stopped.
        close()
    }

    /// Refuses a peer of another uid (root excepted), from `SO_PEERCRED`.
    static func checkPeer(_ fd: Int32, path: String) throws(TetherError) {
        let me = geteuid()
        let peer: (uid: uid_t, pid: pid_t)
        do throws(SystemError) { peer = try SeqPacketSocket.peerCredentials(fd) } catch {
            throw TetherError(.permissionDenied, "cannot tell who listens at \(path) (\(error)); refusing to talk to it")
        }
        guard peer.uid == me || peer.uid == 0 else {
            throw TetherError(.permissionDenied, "the socket at \(path) is served by pid \(peer.pid) of uid \(peer.uid), not by you (uid \(me)) or root: refusing to send it anything. Another user may have taken the socket's directory; remove it and start your own daemon")
        }
    }

    static func connectError(_ e: SystemError, path: String) -> TetherError {
        switch e.errno {
        case ENOENT, ECONNREFUSED, ENOTDIR:
            // No socket file, or a stale one nobody listens on: the usual "forgot to start it".
            return TetherError(.deviceLost, "no Tether daemon at \(path); start one with `tether daemon`")
        case EACCES, EPERM:
            return TetherError(.permissionDenied, "cannot connect to the Tether daemon at \(path): permission denied (the socket is owner-only; is it another user's daemon?)")
        case ENAMETOOLONG:
            return TetherError(.invalidArgument, "socket path \(path) is too long for a Unix socket; choose a shorter --socket or TETHER_SOCKET")
        case EMFILE, ENFILE, ENOBUFS, ENOMEM:
            return TetherError(.resourceExhausted, "cannot connect to the Tether daemon at \(path): \(e)")
        case EAGAIN, ETIMEDOUT:
            return TetherError(.timedOut, "the Tether daemon at \(path) did not accept the connection in time (its backlog stayed full: it is overloaded or stuck); try again later")
        default:
            return TetherError(.deviceLost, "cannot connect to the Tether daemon at \(path): \(e)")
        }
    }

    // MARK: Errors

    var goneError: TetherError { TetherError(.deviceLost, "the Tether daemon at \(socketPath) went away") }

    /// Whether the peer end went away while this process had not closed the connection (see
    /// `State.shutDown`).
    var wasShutDown: Bool { state.withLock { $0.shutDown } }

    static func timeoutError(_ what: Op, seconds: Double, path: String) -> TetherError {
        TetherError(.timedOut, "no answer from the daemon within \(formatSeconds(seconds)) s (\(what), daemon at \(path))")
    }

    // MARK: Calls

    /// Sends `request` and blocks until its reply, the deadline (nil: none; the daemon going away
    /// still ends the wait) or the connection's failure. An `.error` reply is thrown.
    func call(_ request: Request, fds: [Int32] = [], timeoutSeconds: Double?) throws(TetherError) -> Reply {
        if fds.isEmpty, request.travelsOverRings, let ring = ringGate.withLock({ $0 }) {
            return try ringCall(request, ring: ring, timeoutSeconds: timeoutSeconds)
        }
        let what = request.op
        let slot = Slot()
        // With rings, the reply comes through the completion ring too, and nobody polls for it:
        // the reader is woken by the eventfd.
        let ring = ringGate.withLock { $0 }
        let id = try register(Pending(waiter: .blocking(slot), deadline: nil, sleepsOnRing: ring != nil,
                                      what: what, timeoutSeconds: timeoutSeconds))
        ring?.armWakeup()
        do throws(TetherError) {
            try send(request, id: id, fds: fds)
        } catch {
            _ = remove(id)
            throw error
        }
        let deadline = timeoutSeconds.map { monotonicNanos() &+ nanos($0) }
        return try awaitReply(slot, id: id, until: deadline, what: what, timeoutSeconds: timeoutSeconds)
    }

    /// Sleeps for a blocking call's reply until `deadline` (nil: none). Timed out, unless the
    /// reader claimed the waiter just now: then its reply is being handed over and takes no time
    /// to arrive.
    private func awaitReply(_ slot: Slot, id: UInt64, until deadline: UInt64?, what: Op,
                            timeoutSeconds: Double?) throws(TetherError) -> Reply {
        if let result = slot.wait(untilNanos: deadline) { return try result.get() }
        if remove(id) != nil {
            throw Self.timeoutError(what, seconds: timeoutSeconds ?? 0, path: socketPath)
        }
        return try slot.wait(untilNanos: nil)!.get()
    }

    /// The async form (for `join`): the reader resumes the continuation when the reply comes,
    /// and also enforces the deadline, so no timer thread or dispatch queue is involved.
    func callAsync(_ request: Request, timeoutSeconds: Double?) async throws(TetherError) -> Reply {
        let what = request.op
        let ring = ringGate.withLock { $0 }
        let submitsToRing = ring != nil && request.travelsOverRings
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Reply, TetherError>, Never>) in
            let deadline = timeoutSeconds.map { monotonicNanos() &+ nanos($0) }
            let id: UInt64
            do throws(TetherError) {
                id = try register(Pending(waiter: .async(continuation), deadline: deadline, sleepsOnRing: ring != nil,
                                          what: what, timeoutSeconds: timeoutSeconds), ring: submitsToRing)
            } catch {
                continuation.resume(returning: .failure(error))
                return
            }
            // The reader may be asleep with a later (or no) deadline: make it look again.
            if deadline != nil { wake() }
            do throws(TetherError) {
                if let ring {
                    // Nobody polls for an async waiter: the eventfd must wake the reader.
                    ring.armWakeup()
                    if submitsToRing { try submit(request, id: id, ring: ring) } else { try send(request, id: id, fds: []) }
                    consumeCompletions(ring)
                } else {
                    try send(request, id: id, fds: [])
                }
            } catch {
                remove(id)?.waiter.resolve(.failure(error))
            }
        }
        return try result.get()
    }

    // MARK: Rings

    /// Creates this connection's rings and hands them to the daemon (`attachRings`); from then
    /// on spawn, run, join, kill and status travel over them, and every reply comes through the
    /// completion ring. On failure (an older daemon, no memory) nothing changes and every call
    /// keeps using the socket.
    func attachRings(entries: UInt32, spinNanos: UInt64, timeoutSeconds: Double) throws(TetherError) {
        let (ring, memfd) = try RingChannel.create(entries: entries)
        defer { tether_close_tracked_fd(memfd) }  // the daemon has its own copy, or none
        do throws(TetherError) {
            _ = try call(.attachRings(sqEntries: entries, cqEntries: entries), fds: [memfd, ring.eventfd], timeoutSeconds: timeoutSeconds)
        } catch {
            ring.detach()
            ring.closeEventfd()  // nothing polls it yet
            throw error
        }
        ringSpinNanos = spinNanos
        ringGate.withLock { $0 = ring }
        wake()  // the reader polls the eventfd from its next round on
    }

    /// Whether calls travel over rings.
    var usesRings: Bool { ringGate.withLock { $0 != nil } }

    /// A call over the rings: the request goes into the submission ring (or, when it does not fit
    /// or the ring stays full, over the socket with the same ring id), and the caller polls the
    /// completion ring for `ringSpinNanos` before it asks for the doorbell and sleeps.
    private func ringCall(_ request: Request, ring: RingChannel, timeoutSeconds: Double?) throws(TetherError) -> Reply {
        let what = request.op
        let slot = Slot()
        let id = try register(Pending(waiter: .blocking(slot), deadline: nil, what: what, timeoutSeconds: timeoutSeconds), ring: true)
        do throws(TetherError) {
            try submit(request, id: id, ring: ring)
        } catch {
            _ = remove(id)
            throw error
        }
        let deadline = timeoutSeconds.map { monotonicNanos() &+ nanos($0) }
        var result: Result<Reply, TetherError>?
        let spin = deadline.map { min(ringSpinNanos, $0 &- min($0, monotonicNanos())) } ?? ringSpinNanos
        _ = spinUntil(nanos: spin, yielding: true) {
            if ring.hasCompletions() { consumeCompletions(ring) }
            result = slot.peek()
            return result != nil
        }
        if let result { return try result.get() }
        // Going to sleep: the reader must be woken for our completion.
        let stillPending = state.withLock { s -> Bool in
            guard s.pending[id] != nil else { return false }
            s.pending[id]!.sleepsOnRing = true
            s.ringSleepers += 1
            return true
        }
        if stillPending {
            ring.armWakeup()
            consumeCompletions(ring)
        }
        return try awaitReply(slot, id: id, until: deadline, what: what, timeoutSeconds: timeoutSeconds)
    }

    /// Queues `request` (id with the ring bit) in the submission ring, ringing the daemon's
    /// doorbell if it sleeps, or sends it over the socket when the ring refuses it.
    private func submit(_ request: Request, id: UInt64, ring: RingChannel) throws(TetherError) {
        let bytes = MessageCodec.encode(request, id: id)
        switch ring.submit(bytes, spinNanos: ringSpinNanos) {
        case .queued(let doorbell):
            if doorbell { ringDoorbell() }
        case .refused:
            try send(request, id: id, fds: [])
        }
    }

    /// Hands every published completion to its waiter (whoever waits for it).
    private func consumeCompletions(_ ring: RingChannel) {
        let drained: (messages: [[UInt8]], ringDoorbell: Bool)
        do throws(TetherError) { drained = try ring.drain() } catch {
            fail(TetherError(.malformedMessage, "the daemon at \(socketPath) wrote an impossible completion ring: \(error.message)"))
            return
        }
        // The daemon holds replies for a ring it found full: tell it there is room now.
        if drained.ringDoorbell { ringDoorbell() }
        for m in drained.messages {
            if let unreadable = deliver(m, truncated: false) { fail(unreadable) }
        }
    }

    /// Tells the daemon to look at the rings (it sleeps, or holds completions). Never blocks: a
    /// socket too full to take it holds messages the daemon has not read yet (it stopped reading
    /// this connection: back-pressure), and the daemon looks at the rings after reading them — a
    /// caller blocked here would stop draining the very completions that end the pause. A
    /// doorbell lost to a dead daemon is reported by the reader to every waiter.
    private func ringDoorbell() {
        let bytes = MessageCodec.encode(.ringDoorbell, id: 0)
        sendGate.withLock { open in
            if open { _ = SeqPacketSocket.trySend(fd, bytes) }
        }
    }

    /// The daemon signalled the eventfd: consume, and keep the flag set while someone still sleeps.
    private func serviceRings() {
        guard let ring = ringGate.withLock({ $0 }) else { return }
        consumeCompletions(ring)
        if state.withLock({ $0.ringSleepers > 0 }) {
            ring.armWakeup()
            consumeCompletions(ring)
        }
    }

    /// Makes `error` the connection's failure and fails every pending call with it.
    private func fail(_ error: TetherError) {
        let waiters = state.withLock { s -> [Waiter] in
            if s.failure == nil { s.failure = error }
            return s.takeAll()
        }
        for w in waiters { w.resolve(.failure(error)) }
    }

    /// `ring`: an id with the ring bit, whose reply the daemon puts into the completion ring.
    private func register(_ pending: Pending, ring: Bool = false) throws(TetherError) -> UInt64 {
        try state.withLock { (s: inout State) throws(TetherError) -> UInt64 in
            if let failure = s.failure { throw failure }
            // Ids stay below the ring bit: a socket call's id never looks like a ring call's.
            let id = s.nextID | (ring ? RingRequestID.bit : 0)
            s.nextID = (s.nextID &+ 1) & ~RingRequestID.bit
            s.pending[id] = pending
            if pending.deadline != nil { s.timed.insert(id) }
            if pending.sleepsOnRing { s.ringSleepers += 1 }
            return id
        }
    }

    private func remove(_ id: UInt64) -> Pending? {
        state.withLock { $0.take(id) }
    }

    private func send(_ request: Request, id: UInt64, fds: [Int32]) throws(TetherError) {
        let bytes = MessageCodec.encode(request, id: id)
        guard bytes.count <= Wire.maxMessageBytes else {
            throw TetherError(.invalidArgument, "a \(request.op) request of \(bytes.count) bytes exceeds the protocol's \(Wire.maxMessageBytes)-byte limit")
        }
        let outcome: SystemError? = sendGate.withLock { open -> SystemError? in
            guard open else { return SystemError("sendmsg", errno: EBADF) }
            do throws(SystemError) {
                try SeqPacketSocket.send(fd, bytes, fds: fds)
                return nil
            } catch {
                return error
            }
        }
        guard let e = outcome else { return }
        if case EPIPE = e.errno { state.withLock { if !$0.closed { $0.shutDown = true } } }
        if case ECONNRESET = e.errno { state.withLock { if !$0.closed { $0.shutDown = true } } }
        if e.errno == EPIPE || e.errno == ECONNRESET {
            // The daemon may have said why before it closed (a refused connection): the reader
            // reads that sentence and then end of file, at once; give it a moment to.
            _ = readerExit.wait(untilNanos: monotonicNanos() + 1_000_000_000)
        }
        if let failure = state.withLock({ $0.failure }) { throw failure }
        switch e.errno {
        case EPIPE, ECONNRESET, ENOTCONN, EBADF:
            throw goneError
        case EAGAIN:
            throw TetherError(.deviceLost, "the Tether daemon at \(socketPath) did not take a \(request.op) request in time (its socket buffer stayed full)")
        case EMSGSIZE:
            throw TetherError(.invalidArgument, "a \(request.op) request of \(bytes.count) bytes does not fit the socket's buffer")
        default:
            throw TetherError(.deviceLost, "cannot send to the Tether daemon at \(socketPath): \(e)")
        }
    }

    // MARK: Reader

    private func readLoop() {
        let receiveBuffer = ReceiveBuffer(capacity: Wire.maxMessageBytes)
        state.withLock { $0.readerThread = pthread_self() }
        var failure: TetherError?
        // The eventfd stays open while the reader runs (it is closed only after the reader left).
        let wakeFd = wakeGate.withLock { $0 }
        // The third is the rings' eventfd once attached (-1, ignored by poll, until then).
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeFd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: -1, events: Int16(POLLIN), revents: 0)]
        loop: while true {
            let (closed, timeout) = pollTimeout()
            if closed { break }
            fds[2].fd = ringGate.withLock { $0?.eventfd ?? -1 }
            for i in fds.indices { fds[i].revents = 0 }
            let n = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, 3, timeout) }
            if n < 0 {
                if errno == EINTR { continue }
                failure = TetherError(.deviceLost, "the Tether daemon at \(socketPath) went away (\(SystemError("poll")))")
                break
            }
            if fds[1].revents != 0 { Eventfd.drain(wakeFd) }
            expireDeadlines()
            if fds[2].revents != 0 {
                Eventfd.drain(fds[2].fd)
                serviceRings()
            }
            guard fds[0].revents != 0 else { continue }
            do throws(SystemError) {
                // Never blocking: a holder of a copy of the fd (a forked child with closeOnFork off)
                // may take the message after poll, and a reader blocked in recvmsg would hang every
                // call and deadline of the connection.
                let received = try SeqPacketSocket.receive(fd, into: receiveBuffer, dontWait: true)
                switch received {
                case .message(let m):
                    if let unreadable = deliver(m.bytes, truncated: m.truncated) {
                        failure = unreadable
                        break loop
                    }
                case .hangUp:
                    failure = goneError
                    state.withLock { $0.shutDown = true }
                    break loop
                case .wouldBlock:
                    continue
                }
            } catch {
                failure = TetherError(.deviceLost, "the Tether daemon at \(socketPath) went away (\(error))")
                break
            }
        }
        // Replies the daemon put into the completion ring before it went away are still replies.
        if !state.withLock({ $0.closed }), let ring = ringGate.withLock({ $0 }) { consumeCompletions(ring) }
        let (waiters, error, closed) = state.withLock { s in
            s.readerRunning = false
            if s.failure == nil { s.failure = failure ?? closedError }
            let waiters = s.takeAll()
            return (waiters, s.failure!, s.closed)
        }
        for w in waiters { w.resolve(.failure(error)) }
        // Whoever comes last closes the fds: here if close() already ran, else close() will.
        if closed { releaseDescriptors() }
        readerExit.complete()
    }

    private var closedError: TetherError {
        TetherError(.deviceLost, "the connection to the Tether daemon at \(socketPath) was closed")
    }

    /// Whether to stop, and how long poll may sleep: until the earliest async deadline.
    private func pollTimeout() -> (closed: Bool, millis: Int32) {
        state.withLock { s in
            if s.closed { return (true, 0) }
            var earliest: UInt64?
            for id in s.timed {
                if let d = s.pending[id]?.deadline, d < earliest ?? .max { earliest = d }
            }
            guard let earliest else { return (false, -1) }
            let now = monotonicNanos()
            if earliest <= now { return (false, 0) }
            // Round up so that a wake-up is never a hair early (which would spin once more).
            let millis = Int32(min((earliest - now + 999_999) / 1_000_000, UInt64(Int32.max)))
            return (false, millis)
        }
    }

    private func expireDeadlines() {
        let now = monotonicNanos()
        let expired: [Pending] = state.withLock { s in
            guard !s.timed.isEmpty else { return [] }
            let due = s.timed.filter { (s.pending[$0]?.deadline ?? 0) <= now }
            return due.compactMap { s.take($0) }
        }
        for p in expired {
            p.waiter.resolve(.failure(Self.timeoutError(p.what, seconds: p.timeoutSeconds ?? 0, path: socketPath)))
        }
    }

    /// Hands one reply to its waiter. Returns an error when the message cannot be attributed to
    /// any call (not a Tether message at all): the peer is not a daemon we can talk to.
    private func deliver(_ bytes: [UInt8], truncated: Bool) -> TetherError? {
        var id: UInt64
        var result: Result<Reply, TetherError>
        do throws(TetherError) {
            if truncated {
                throw TetherError(.malformedMessage, "a reply from the daemon exceeded \(Wire.maxMessageBytes) bytes")
            }
            let (i, reply) = try MessageCodec.decodeReply(bytes)
            id = i
            if case .error(let e) = reply { result = .failure(e) } else { result = .success(reply) }
        } catch {
            // Still name the call if the header is readable, version or not, so that it fails
            // now with the reason instead of timing out.
            var r = WireReader(bytes)
            guard bytes.count >= Wire.headerBytes, (try? r.u32()) == Wire.magic else {
                return TetherError(.malformedMessage, "the peer at \(socketPath) is not a Tether daemon (\(error.message))")
            }
            _ = try? r.u16()
            _ = try? r.u16()
            id = (try? r.u64()) ?? 0
            result = .failure(error)
        }
        // Id 0 with resourceExhausted: the daemon turned this connection away (out of fds, or a
        // connection limit); every call on it fails with that sentence.
        if id == 0, case .failure(let e) = result, e.code == .resourceExhausted { return e }
        // Unknown ids (a call that timed out, a reply we never asked for) are dropped.
        state.withLock { $0.take(id) }?.waiter.resolve(result)
        return nil
    }

    private func wake() {
        wakeGate.withLock { wakeFd in
            if wakeFd >= 0 { Eventfd.signal(wakeFd) }
        }
    }

    // MARK: Closing

    /// Fails every pending call, stops the reader and closes the fd, in the process that opened
    /// it; in any other process (a forked child) it does nothing at all. Idempotent.
    func close() {
        // A forked child: its copy of the fd is either already closed by the C atfork handler
        // (closeOnFork, and the number may have been reused since) or deliberately kept open
        // (the fork-exit scenario). Either way it is not ours to close, and the locks may have
        // been copied while held by a thread the child does not have.
        guard getpid() == openerPid else { return }
        let taken: (waiters: [Waiter], error: TetherError, readerRunning: Bool, onReader: Bool)? = state.withLock { s in
            if s.closed { return nil }
            s.closed = true
            if s.failure == nil { s.failure = closedError }
            let waiters = s.takeAll()
            let onReader = s.readerThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false
            return (waiters, s.failure!, s.readerRunning, onReader)
        }
        guard let taken else { return }
        // The rings first: nothing may poll pages that are about to go. (The channel itself, and
        // its eventfd, stay until the reader has stopped polling: `releaseDescriptors`.)
        ringGate.withLock { $0?.detach() }
        for w in taken.waiters { w.resolve(.failure(taken.error)) }
        if taken.readerRunning {
            wake()
            // On the reader thread itself the loop is not in poll: it sees `closed` next and
            // closes the fds on its way out.
            if taken.onReader { return }
            readerExit.wait()
        }
        releaseDescriptors()
    }

    /// Closes `fd` (untracking it first) and the eventfd, once. Runs only after the reader has
    /// left `poll` for good.
    private func releaseDescriptors() {
        sendGate.withLock { open in
            guard open else { return }
            open = false
            // Untrack before closing: once closed, the number may belong to someone else.
            if tracked { tether_untrack_device_fd(fd) }
            Glibc.close(fd)
        }
        wakeGate.withLock { wakeFd in
            if wakeFd >= 0 { tether_close_tracked_fd(wakeFd) }
            wakeFd = -1
        }
        ringGate.withLock { ring in
            ring?.closeEventfd()
            ring = nil
        }
    }
}

/// A one-shot result for a blocking caller. Built on `Monitor` (pthread, CLOCK_MONOTONIC) rather
/// than Dispatch: it must work in a forked child, and libdispatch poisons its queues in the child
/// of a process that used its thread pool; staying off Dispatch avoids the question entirely.
final class Slot: @unchecked Sendable {
    private let monitor = Monitor()
    /// Under `monitor`.
    private var result: Result<Reply, TetherError>?

    func fulfil(_ r: Result<Reply, TetherError>) {
        monitor.withLock {
            result = r
            monitor.broadcast()
        }
    }

    /// The result if it is there, without waiting.
    func peek() -> Result<Reply, TetherError>? {
        monitor.withLock { result }
    }

    /// The result, or nil if `deadline` (CLOCK_MONOTONIC ns) passed first.
    func wait(untilNanos deadline: UInt64?) -> Result<Reply, TetherError>? {
        monitor.withLock {
            while result == nil {
                if !monitor.wait(untilNanos: deadline) { break }
            }
            return result
        }
    }
}

// MARK: Helpers

/// Seconds as nanoseconds, clamped so that a huge timeout cannot overflow a deadline.
func nanos(_ seconds: Double) -> UInt64 {
    guard seconds > 0 else { return 0 }
    return UInt64(min(seconds, 1e9) * 1e9)
}

/// "30", "0.5": timeouts as people write them.
func formatSeconds(_ s: Double) -> String {
    if s.isFinite, s == s.rounded(), abs(s) < 1e15 { return String(Int64(s)) }
    return String(s)
}

extension timeval {
    init(seconds: Double) {
        let clamped = max(0, min(seconds, 1e9))
        let whole = clamped.rounded(.down)
        self.init(tv_sec: Int(whole), tv_usec: Int((clamped - whole) * 1e6))
        // 0 would mean "block forever" to SO_SNDTIMEO.
        if tv_sec == 0 && tv_usec == 0 { tv_usec = 1 }
    }
}
