import CTetherLinux
import Glibc
import Synchronization
import TetherCore
import TetherDevice
import TetherSys

/// One accepted client connection — the user-space twin of an open device file.
///
/// Replies may be sent from any thread (a `join` is answered by the scheduler's worker when the
/// thread ends, a kill by the kill queue), so the fd, the outgoing queue and the epoll interest
/// live behind one lock, and the fd is closed under it: a late reply can never reach a reused fd
/// number. A reply the socket cannot take now waits in the `OutgoingQueue` (never dropped, never
/// blocking the sender); when that queue is full the connection stops reading requests until
/// the client has read enough of its replies — back-pressure, as a kernel socket applies it.
final class Connection: @unchecked Sendable {
    let id: UInt64
    /// The uid that connected (`SO_PEERCRED`), for the per-uid connection limit.
    let uid: UInt32
    private let epoll: Epoll

    private struct State {
        var fd: Int32
        var queue = OutgoingQueue()
        /// Requests are not read while the client leaves too many replies unread.
        var readPaused = false
        /// Requests are not read while the connection waits for its next request token.
        var throttled = false
        /// What epoll watches now, so that it is changed only when it must be.
        var interest: UInt32
    }

    private let state: Mutex<State>
    /// The owner this connection is bound to, from its first request on. Touched by the event
    /// loop only.
    var space: AddressSpace?
    /// Joins (and runs) waiting for their thread, and teardown waiters, of this connection.
    /// Touched by the event loop and by completion callbacks: atomic.
    let pendingJoins = Atomic<Int>(0)
    /// Teardown waiters this connection registered (their ids); the event loop only.
    var waiters: Set<UInt64> = []
    /// How many requests it may send over its socket, and over its submission ring (the event
    /// loop only).
    var budget: RequestBudget
    var ringBudget: RequestBudget
    /// The ring is out of tokens and the event loop will wake for the next one (event loop only).
    var ringWaits = false
    /// What `Daemon.isShared` answered for the request read last (event loop only).
    var readWhileShared = false
    /// The connection's submission and completion rings, once attached (`RingServer`).
    let rings = Mutex<ConnectionRings?>(nil)

    static let readInterest = UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue)
    static let writeInterest = UInt32(EPOLLOUT.rawValue)

    init(id: UInt64, fd: consuming OwnedDescriptor, uid: UInt32, epoll: Epoll, budget: RequestBudget, ringBudget: RequestBudget) {
        self.id = id
        self.uid = uid
        self.epoll = epoll
        self.budget = budget
        self.ringBudget = ringBudget
        self.state = Mutex(State(fd: fd.release(), interest: Self.readInterest))
    }

    var rawFD: Int32 { state.withLock { $0.fd } }
    var isReadPaused: Bool { state.withLock { $0.readPaused || $0.throttled } }

    var isThrottled: Bool { state.withLock { $0.throttled } }

    /// Stops (or resumes) reading while the connection waits for a request token.
    func setThrottled(_ on: Bool) {
        state.withLock { s in
            guard s.fd >= 0, s.throttled != on else { return }
            s.throttled = on
            updateInterest(&s)
        }
    }
    /// Replies waiting for the client to read (for tests and `ps`-style reporting).
    var queuedReplies: Int { state.withLock { $0.queue.count } }

    /// Sends a reply now, or queues it behind earlier ones. Returns false only when the
    /// connection is closed (the reply is lost with it; the hang-up path cleans up). `onSent` runs
    /// once the reply has left — at once, or later on the event loop when the queue drains — and
    /// never when it is lost.
    /// `viaSocket`: never through the rings (the `attachRings` reply, which the client awaits on
    /// the socket).
    @discardableResult
    func send(_ reply: Reply, id requestID: UInt64, viaSocket: Bool = false, onSent: (@Sendable () -> Void)? = nil) -> Bool {
        let bytes = MessageCodec.encode(reply, id: requestID)
        // Once the connection has rings, every reply to its owner goes to the completion ring,
        // which no other holder of the socket can read (ConnectionRings). Id 0 — a sentence about
        // the connection itself — and a reply larger than the whole ring use the socket.
        if requestID != 0, !viaSocket, let rings = rings.withLock({ $0 }), rings.complete(bytes, onSent: onSent) {
            return true
        }
        let (accepted, sentNow) = state.withLock { s -> (Bool, Bool) in
            guard s.fd >= 0 else { return (false, false) }
            if s.queue.isEmpty {
                switch Self.trySend(s.fd, bytes) {
                case .sent: return (true, true)
                case .lost: return (false, false)
                case .wouldBlock: break
                }
            }
            s.queue.append(.init(bytes: bytes, onSent: onSent))
            updateInterest(&s)
            return (true, false)
        }
        if sentNow { onSent?() }
        return accepted
    }

    /// Sends what the socket takes now (the event loop, on `EPOLLOUT`), and resumes reading once
    /// the queue has drained.
    func flush() {
        var done: [@Sendable () -> Void] = []
        state.withLock { s in
            guard s.fd >= 0 else { return }
            while let item = s.queue.first {
                switch Self.trySend(s.fd, item.bytes) {
                case .wouldBlock:
                    updateInterest(&s)
                    return
                case .sent:
                    if let f = s.queue.removeFirst().onSent { done.append(f) }
                case .lost:
                    // The peer is gone or the reply can never fit: the hang-up path cleans up.
                    _ = s.queue.removeFirst()
                }
            }
            if s.readPaused && s.queue.hasDrained && ringsHaveDrained { s.readPaused = false }
            updateInterest(&s)
        }
        for f in done { f() }
    }

    /// Resumes reading a connection paused for its replies once both its socket queue and the
    /// replies held for its completion ring have drained (the event loop, after `flushHeld`).
    func resumeIfDrained() {
        state.withLock { s in
            guard s.fd >= 0, s.readPaused, s.queue.hasDrained, ringsHaveDrained else { return }
            s.readPaused = false
            updateInterest(&s)
        }
    }

    /// Before its submission ring is read: stops reading the connection (socket and ring) once
    /// the replies waiting for it reached the bound, and says whether it is paused. The ring's
    /// own check: a client that only submits through the ring never sends a socket message, so
    /// `mayReadMore` alone would never pause it while its held replies grow without end.
    func pauseIfBacklogged() -> Bool {
        state.withLock { s in
            guard s.fd >= 0 else { return true }
            if !s.readPaused && (s.queue.isFull || ringsBacklogged) {
                s.readPaused = true
                updateInterest(&s)
            }
            return s.readPaused
        }
    }

    private var ringsHaveDrained: Bool { rings.withLock { $0 }?.hasDrained ?? true }
    private var ringsBacklogged: Bool { rings.withLock { $0 }?.isBacklogged ?? false }

    /// After each request: whether the loop may read another one now. A connection whose client
    /// leaves its replies unread stops being read (its requests wait in its socket, so its client
    /// blocks in `sendmsg`) until `flush` has drained the queue.
    func mayReadMore() -> Bool {
        !pauseIfBacklogged() && !isThrottled
    }

    func close() {
        // The rings first: no reply may land in memory the client can no longer be told about.
        rings.withLock { r in
            r?.detach()
            r = nil
        }
        state.withLock { s in
            if s.fd >= 0 {
                epoll.remove(s.fd)
                _ = Glibc.close(s.fd)
            }
            s.fd = -1
            s.queue.removeAll()
        }
    }

    /// Watches for input unless paused, and for output while replies wait (lock held).
    private func updateInterest(_ s: inout State) {
        var want: UInt32 = s.readPaused || s.throttled ? 0 : Self.readInterest
        if !s.queue.isEmpty { want |= Self.writeInterest }
        guard want != s.interest else { return }
        // EPOLLHUP and EPOLLERR are always reported, so a paused client that goes away is seen.
        if (try? epoll.modify(s.fd, token: id, events: want)) != nil { s.interest = want }
    }

    private enum SendOutcome { case sent, wouldBlock, lost }

    private static func trySend(_ fd: Int32, _ bytes: [UInt8]) -> SendOutcome {
        do throws(SystemError) {
            try SeqPacketSocket.send(fd, bytes)
            return .sent
        } catch {
            switch error.errno {
            case EAGAIN, ENOBUFS, ENOMEM: return .wouldBlock
            default: return .lost
            }
        }
    }
}
