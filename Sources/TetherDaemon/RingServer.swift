import CTetherLinux
import Glibc
import Synchronization
import TetherCore
import TetherDevice
import TetherSys

/// One connection's rings on the daemon's side: the event loop consumes the submission ring,
/// any thread that answers the owner produces into the completion ring.
///
/// Nothing read from the shared page is trusted: the daemon keeps its own submission head and
/// completion tail, checks the client's tail and head against them (`RingLayout.pending`/`free`),
/// and copies each packet out before decoding it (`RingSlot.read`).
///
/// Every reply to the owner goes into the completion ring (`Connection.send`), never over the
/// socket, because the ring's pages and the eventfd that wakes a sleeping consumer exist only in
/// the owner's process: another holder of the socket (a forked child with `closeOnFork` off, a
/// process the fd was passed to) cannot read them first. A reply the full ring cannot take waits
/// in `overflow` — never dropped, never sent over the socket — until the client has made room;
/// while it holds many, the connection's requests are not read (back-pressure, like
/// `OutgoingQueue`).
final class ConnectionRings: @unchecked Sendable {
    let memory: RingMemory
    /// The client's completion doorbell (checked to be an eventfd, non-blocking). Closed by
    /// `detach`, under the producer lock, so a late completion never signals a reused number.
    private let eventfd: Int32
    /// The next submission to consume. Event loop only.
    var sqHead: UInt32 = 0
    /// Submissions before this one have excused a `ringDoorbell` each, or never will
    /// (`RingServer.doorbellFindsWork`). Event loop only.
    var doorbellMark: UInt32 = 0
    private struct Producer {
        var tail: UInt32 = 0
        /// Whether the memory is still mapped (and the eventfd open).
        var mapped = true
        /// Replies the full ring could not take, oldest first.
        var overflow = OutgoingQueue()
    }
    /// Completions come from the event loop, the scheduler's and the kill queue's threads; the
    /// unmap from the event loop.
    private let producer = Mutex(Producer())
    /// Replies held in `overflow`, readable without the lock (the event loop polls it).
    let held = Atomic<Int>(0)
    /// Set when the client's completion head was impossible (`RingLayout.free` refused it): the
    /// ring's memory was overwritten, and the event loop (woken through `loopWake`) closes the
    /// connection as it does for a bad submission tail, instead of holding replies for ever.
    let headCorrupt = Atomic<Bool>(false)
    private let loopWake: EventFD
    /// When a completion was last posted (CLOCK_MONOTONIC ns): the event loop keeps polling for a
    /// while after it, because the client's next submission usually follows its last completion.
    let lastCompletion: Atomic<UInt64>

    init(memory: RingMemory, eventfd: Int32, loopWake: EventFD) {
        self.memory = memory
        self.eventfd = eventfd
        self.loopWake = loopWake
        lastCompletion = Atomic(monotonicNanos())
    }

    /// Posts one reply, or holds it when the ring is full; false when it is larger than the whole
    /// ring or the rings are detached (the caller uses the socket). Never blocks and never waits
    /// on the client. `onSent` runs once the reply is in the ring.
    func complete(_ bytes: [UInt8], onSent: (@Sendable () -> Void)?) -> Bool {
        guard RingSlot.count(forMessageBytes: bytes.count) <= Int(memory.layout.cqEntries) else { return false }
        var sent: [@Sendable () -> Void] = []
        let outcome: (accepted: Bool, posted: Bool) = producer.withLock { state in
            guard state.mapped else { return (false, false) }
            if state.overflow.isEmpty, post(bytes, &state) {
                if let onSent { sent.append(onSent) }
                return (true, true)
            }
            state.overflow.append(.init(bytes: bytes, onSent: onSent))
            return (true, postHeld(&state, &sent))
        }
        guard outcome.accepted else { return false }
        if outcome.posted { wakeConsumer() }
        for f in sent { f() }
        return true
    }

    /// Moves held replies into the ring as far as it has room (on `ringDoorbell`, and while the
    /// event loop polls). Returns whether fewer than half of the back-pressure bound remain.
    @discardableResult
    func flushHeld() -> Bool {
        guard held.load(ordering: .relaxed) > 0 else { return true }
        var sent: [@Sendable () -> Void] = []
        let (drained, posted): (Bool, Bool) = producer.withLock { state in
            guard state.mapped else { return (true, false) }
            let posted = postHeld(&state, &sent)
            return (state.overflow.hasDrained, posted)
        }
        if posted { wakeConsumer() }
        for f in sent { f() }
        return drained
    }

    /// Whether the ring holds replies back and its client has made room for the oldest (the
    /// completion ring the daemon found full now has room for it).
    var mayPostHeld: Bool {
        guard held.load(ordering: .relaxed) > 0 else { return false }
        return producer.withLock { state in
            guard state.mapped, let first = state.overflow.first else { return false }
            return fits(first.bytes, state) == true
        }
    }

    /// Whether the held replies are below half of the back-pressure bound.
    var hasDrained: Bool {
        held.load(ordering: .relaxed) == 0 || producer.withLock { $0.overflow.hasDrained }
    }

    /// Whether the held replies reached the back-pressure bound (`OutgoingQueue.isFull`).
    var isBacklogged: Bool {
        held.load(ordering: .relaxed) > 0 && producer.withLock { $0.overflow.isFull }
    }

    /// Writes one message at the tail if it fits, publishing the new tail (lock held).
    private func post(_ bytes: [UInt8], _ state: inout Producer) -> Bool {
        guard let fits = fits(bytes, state) else {
            if !headCorrupt.exchange(true, ordering: .relaxed) { loopWake.signal() }
            return false
        }
        guard fits else { return false }
        RingSlot.writeCompletion(bytes, at: state.tail, layout: memory.layout, base: memory.base)
        state.tail &+= UInt32(RingSlot.count(forMessageBytes: bytes.count))
        memory.store(RingLayout.cqTailOffset, state.tail)
        return true
    }

    /// Whether a message of `bytes` fits between the tail and the client's completion head now,
    /// or nil when that head is impossible (lock held).
    private func fits(_ bytes: [UInt8], _ state: Producer) -> Bool? {
        guard let free = RingLayout.free(head: memory.load(RingLayout.cqHeadOffset), tail: state.tail, entries: memory.layout.cqEntries) else { return nil }
        return Int(free) >= RingSlot.count(forMessageBytes: bytes.count)
    }

    /// Posts held replies, oldest first, while they fit; returns whether it posted any. Whenever
    /// some stay held, `cqOverflow` is set so that the client rings once it has made room.
    private func postHeld(_ state: inout Producer, _ sent: inout [@Sendable () -> Void]) -> Bool {
        var posted = false
        func move() {
            while let item = state.overflow.first, post(item.bytes, &state) {
                posted = true
                if let f = state.overflow.removeFirst().onSent { sent.append(f) }
            }
        }
        move()
        if !state.overflow.isEmpty {
            // Dekker with the client's drain: the flag is published, then (full fence) the free
            // space looked at once more; a client that drained meanwhile sees the flag and rings.
            memory.store(RingLayout.cqOverflowOffset, 1)
            RingMemory.fence()
            move()
        }
        held.store(state.overflow.count, ordering: .relaxed)
        return posted
    }

    /// After posting: signals the client's eventfd if a thread of it sleeps on the ring.
    ///
    /// The flag is read under the producer lock, after checking `mapped`: completions come from
    /// the scheduler's and the kill queue's threads while the event loop may `detach` (unmap) the
    /// pages at any moment, so a look at the page outside the lock could touch unmapped memory
    /// (SIGSEGV) or a new mapping at the same address (another client's mirror).
    private func wakeConsumer() {
        lastCompletion.store(monotonicNanos(), ordering: .relaxed)
        producer.withLock { state in
            guard state.mapped else { return }
            // Dekker with the client's sleep: tail published, full fence, then the flag.
            RingMemory.fence()
            guard memory.load(RingLayout.cqNeedWakeupOffset) != 0,
                  memory.exchange(RingLayout.cqNeedWakeupOffset, 0) != 0 else { return }
            Eventfd.signal(eventfd)
        }
    }

    /// Unmaps and closes the eventfd, once; held replies are dropped with the connection, later
    /// completions go over the socket.
    func detach() {
        producer.withLock { state in
            guard state.mapped else { return }
            state.mapped = false
            state.overflow.removeAll()
            held.store(0, ordering: .relaxed)
            memory.unmap()
            close(eventfd)
        }
    }
}

/// The daemon's side of user-mode submission queues: every attached connection's submission ring,
/// consumed on the event loop (`Daemon.run`), with bounded polling.
///
/// After activity (a submission consumed, a completion posted) the event loop polls the rings for
/// `pollNanos` instead of sleeping, so a client that submits in that window needs no system call
/// and the daemon no wake-up. The window is short (default 20 µs: a client's turn-around from one
/// completion to its next submission, or the gap inside a stream of spawns), because the event loop
/// polls in its own real-time class, above device threads. Measured (`tether bench dispatch`,
/// software, two clients side by side): a neighbour's long-running thread got the same device time
/// per second (88 %) beside a client doing ring round trips as beside one doing socket round trips.
/// (Polling in `SCHED_IDLE`, yielding every round, took no more device time either, but was slower
/// on every count: 93–128 µs round trips against 68 µs, 10–12 k spawns/s against 217 k.) Then it sets every ring's need-wakeup flag, looks once more, and
/// sleeps in epoll; a client that finds the flag set sends a `ringDoorbell` message on its socket
/// (as it does after making room in a completion ring the daemon found full).
/// Idle, the daemon therefore uses no CPU at all. Polling uses `epoll_wait` with a zero timeout, so
/// sockets, pidfds and the BPF ring are served as before while it polls.
///
/// Touched by the event loop only.
final class RingServer {
    /// How long to poll after activity (`--ring-poll-us`); 0 sleeps at once.
    let pollNanos: UInt64
    /// How long to poll after activity while the device's own threads have nothing to run
    /// (`--ring-idle-poll-us`, at least `pollNanos`). A tiny `run` then ends on the scheduler's
    /// worker (a small slice it runs itself) and the client's next submission follows its reply
    /// within µs: an event loop asleep by then costs the next round trip a doorbell and a
    /// wake-up (measured, software, 2 cores: round trip p50 ~53 µs with 20 µs of polling, ~29 µs
    /// with 60 or 120). Polling then starves no device work. While device threads run, the window
    /// stays `pollNanos`: on a small machine a polling event loop, in its real-time class, would
    /// take their CPU (measured: `--ring-poll-us 300` made software round trips 3× slower). So
    /// does it where the worker never runs a slice itself (Vulkan): every reply needs the
    /// device's threads there, even for a run the event loop waits on itself (measured on
    /// lavapipe, both before and after it did: no gain).
    let idlePollNanos: UInt64
    private var attached: [UInt64: (connection: Connection, rings: ConnectionRings)] = [:]
    private var lastSubmission: UInt64 = 0
    /// When the event loop last moved itself off a client's CPU (`moveOffSharedCPU`).
    private var lastMove: UInt64 = 0
    static let moveIntervalNanos: UInt64 = 10_000_000
    /// Whether the need-wakeup flags are set (the event loop is about to sleep, or sleeps).
    private var armed = false
    /// Submissions consumed per ring per round, so that one busy client cannot hold the others off.
    static let batch = 32
    /// Whether the last `poll` left a connection paused with replies held for its completion ring.
    /// Such a client's `ringDoorbell` waits unread in its paused socket, so only `poll` sees the
    /// room it makes: the event loop then sleeps at most 1 ms while held replies moved within the
    /// last 100 ms, and 64 ms after that, so a client that never drains costs ~16 wake-ups a
    /// second. (Time, not rounds: the polling window makes many rounds in which a client that
    /// drains every 100 µs has not drained yet.)
    private var backlogged = false
    private var lastBacklogProgress: UInt64 = 0

    /// Whether a space has as many threads queued as it may (`AddressSpace.hasQueuedEnough`).
    private let holdsBack: (AddressSpace) -> Bool
    /// Whether the last `poll` left a ring unread because its space had as many threads queued
    /// as it may.
    private var waitsForDevice = false

    init(pollNanos: UInt64, idlePollNanos: UInt64 = 0, holdsBack: @escaping (AddressSpace) -> Bool = { _ in false }) {
        self.holdsBack = holdsBack
        self.pollNanos = pollNanos
        self.idlePollNanos = idlePollNanos
    }

    var isEmpty: Bool { attached.isEmpty }

    /// Maps a client's rings (the `attachRings` request).
    /// Takes `eventfd` over (closed on failure and on detach). `loopWake` wakes the event loop
    /// (for a corrupt completion head found on another thread).
    func attach(_ connection: Connection, fd: Int32, eventfd: consuming OwnedDescriptor, sqEntries: UInt32, cqEntries: UInt32,
                loopWake: EventFD) throws(TetherError) {
        guard Eventfd.isEventfd(eventfd.raw), Eventfd.setNonBlocking(eventfd.raw) else {
            throw TetherError(.invalidArgument, "the second fd attached to attachRings must be an eventfd (the completion doorbell)")
        }
        let layout = try RingLayout(sqEntries: sqEntries, cqEntries: cqEntries)
        let memory = try RingMemory(mapping: fd, layout: layout)
        guard UInt32(littleEndian: memory.base.load(fromByteOffset: RingLayout.magicOffset, as: UInt32.self)) == RingLayout.magic,
              UInt32(littleEndian: memory.base.load(fromByteOffset: RingLayout.versionOffset, as: UInt32.self)) == RingLayout.version
        else {
            memory.unmap()
            throw TetherError(.invalidArgument, "the rings' memory does not start with the ring magic and version \(RingLayout.version); initialise it before attaching")
        }
        let rings = ConnectionRings(memory: memory, eventfd: eventfd.release(), loopWake: loopWake)
        // The client may have submitted already; its head starts where its tail says nothing is.
        let replaced: Bool = connection.rings.withLock { r in
            if r != nil { return true }
            r = rings
            return false
        }
        guard !replaced else {
            rings.detach()
            throw TetherError(.invalidArgument, "this connection already has rings attached")
        }
        if armed { memory.store(RingLayout.sqNeedWakeupOffset, 1) }
        attached[connection.id] = (connection, rings)
        lastSubmission = monotonicNanos()
    }

    /// Forgets a connection's rings (before the connection unmaps them in `close`).
    func forget(_ connection: Connection) {
        attached[connection.id] = nil
    }

    /// Whether a `ringDoorbell` read now was rung for work: a submission not yet matched with a
    /// doorbell, consumed already or pending (an event loop awake for other clients often takes a
    /// submission before the doorbell rung for it is read, and doorbells that waited in a
    /// throttled socket arrive together), or a held reply the client made room for. Such a
    /// doorbell is charged at the connection's own rate even beside other clients, since the ring
    /// budget pays for the submission at the shared rate; a submission excuses one doorbell at
    /// most, and only `excusedBacklog` of those consumed without one count.
    func doorbellFindsWork(_ connection: Connection) -> Bool {
        guard let rings = attached[connection.id]?.rings else { return false }
        let entries = rings.memory.layout.sqEntries
        let pending = RingLayout.pending(head: rings.sqHead, tail: rings.memory.load(RingLayout.sqTailOffset), entries: entries) ?? 0
        let excuse = RingLayout.excuseDoorbell(head: rings.sqHead, pending: pending, mark: rings.doorbellMark, entries: entries,
                                               backlog: Self.excusedBacklog)
        rings.doorbellMark = excuse.mark
        if excuse.excused { return true }
        return rings.mayPostHeld
    }

    /// Submissions consumed without a doorbell that may still excuse one (a client that submits
    /// while the event loop is awake rings none, then may ring for several at once).
    static let excusedBacklog: UInt32 = 64

    /// How long the event loop may sleep in epoll: 0 while polling, `millis` once the rings are
    /// armed (their need-wakeup flags set and looked at once more). `deviceIdle`: the device's
    /// own threads have nothing to run and a reply may come from the scheduler's worker alone
    /// (see `idlePollNanos`).
    func sleepTimeout(_ millis: Int32, deviceIdle: Bool = false) -> Int32 {
        guard !attached.isEmpty else { return millis }
        let now = monotonicNanos()
        let window = deviceIdle ? max(pollNanos, idlePollNanos) : pollNanos
        var last = lastSubmission
        // Whether every client answered within the window waits on this thread's own CPU.
        var shared = false, elsewhere = false
        let cpu = UInt32(bitPattern: tether_current_cpu() &+ 1)
        for (_, entry) in attached {
            let completed = entry.rings.lastCompletion.load(ordering: .relaxed)
            last = max(last, completed)
            guard now &- completed < window, completed <= now else { continue }
            if cpu != 0 && entry.rings.memory.load(RingLayout.sqCPUOffset) == cpu { shared = true } else { elsewhere = true }
        }
        if shared && !elsewhere && !moveOffSharedCPU(now) { last = 0 }
        if now &- last < window || last > now {
            if armed { setFlags(0) }
            return 0
        }
        guard armed else {
            // Flags first, then one more look (the next `poll`, after a zero-timeout epoll): a
            // submission published before a client saw the flag is consumed by that look.
            setFlags(1)
            return 0
        }
        if waitsForDevice { return min(millis, 1) }
        guard backlogged else { return millis }
        return min(millis, now &- lastBacklogProgress < 100_000_000 ? 1 : 64)
    }

    /// A client that waits for its reply on the event loop's CPU cannot make its next submission
    /// while the event loop polls there in its real-time class: it would wait out the whole window
    /// and then ring the doorbell anyway (measured, software, 2 cores: round trips of ~120 µs
    /// instead of ~10 µs, in whole runs, because the kernel keeps both where they are). So the event
    /// loop moves to another CPU, at most every `moveIntervalNanos` (a client that lies about its
    /// CPU can cost it no more), and polls there; between moves it does not poll on a shared CPU.
    /// Returns whether it moved.
    private func moveOffSharedCPU(_ now: UInt64) -> Bool {
        guard now &- lastMove >= Self.moveIntervalNanos else { return false }
        lastMove = now
        return tether_move_off_current_cpu() == 0
    }

    private func setFlags(_ value: UInt32) {
        armed = value != 0
        for (_, entry) in attached { _ = entry.rings.memory.exchange(RingLayout.sqNeedWakeupOffset, value) }
    }

    enum Event {
        case packet(Connection, [UInt8])
        /// A slot whose length the slot cannot hold: answered like an undecodable message.
        case badPacket(Connection, TetherError)
        /// The ring's indices are impossible: the client wrote garbage into them.
        case corrupt(Connection, String)
        /// The connection spent its request budget; its ring is read again when a token is due.
        case outOfBudget(Connection)
    }

    /// Consumes up to `batch` submissions of every ring, in turn, and hands each packet (copied
    /// out of shared memory) to `handle`. `rate(connection, now)`: the rate at which a packet read
    /// now is charged to the connection's ring budget (nil: its own; `Daemon.isShared`).
    func poll(rate: (Connection, UInt64) -> UInt64?, _ handle: (Event) -> Void) {
        var events: [Event] = []
        var paused = false, progressed = false
        waitsForDevice = false
        for (_, entry) in attached {
            let rings = entry.rings, memory = rings.memory, layout = memory.layout
            // Replies held for a full completion ring go first; a connection with too many held
            // is not read until its client has taken them (back-pressure).
            let held = rings.held.load(ordering: .relaxed)
            if held > 0 {
                if rings.flushHeld() { entry.connection.resumeIfDrained() }
                if rings.held.load(ordering: .relaxed) < held { progressed = true }
            }
            if rings.headCorrupt.load(ordering: .relaxed) {
                events.append(.corrupt(entry.connection, "the completion ring's head is not within \(layout.cqEntries) entries behind its tail: the ring's memory was overwritten"))
                continue
            }
            if entry.connection.pauseIfBacklogged() {
                if rings.held.load(ordering: .relaxed) > 0 { paused = true }
                continue
            }
            // Its space has as many threads queued as it may: the rest waits in the ring until
            // the scheduler starts one (looked at again within a millisecond).
            if let space = entry.connection.space, holdsBack(space) {
                waitsForDevice = true
                continue
            }
            let tail = memory.load(RingLayout.sqTailOffset)
            guard let pending = RingLayout.pending(head: rings.sqHead, tail: tail, entries: layout.sqEntries) else {
                events.append(.corrupt(entry.connection, "the submission ring's tail (\(tail)) is not within \(layout.sqEntries) entries ahead of its head (\(rings.sqHead)): the ring's memory was overwritten"))
                continue
            }
            guard pending > 0 else { continue }
            let now = monotonicNanos()
            for _ in 0..<min(Int(pending), Self.batch) {
                // The ring has a request budget of its own: out of tokens, the rest waits in the
                // ring until the event loop wakes for the next one.
                guard entry.connection.ringBudget.hasToken(now: now) else {
                    if !entry.connection.ringWaits { events.append(.outOfBudget(entry.connection)) }
                    break
                }
                entry.connection.ringBudget.spend(now: now, rate: rate(entry.connection, now))
                let packet: Event
                do throws(TetherError) {
                    packet = .packet(entry.connection, try RingSlot.read(from: memory.slot(layout.sqSlot(rings.sqHead))))
                } catch {
                    packet = .badPacket(entry.connection, error)
                }
                rings.sqHead &+= 1
                events.append(packet)
            }
            memory.store(RingLayout.sqHeadOffset, rings.sqHead)
        }
        if progressed || (paused && !backlogged) { lastBacklogProgress = monotonicNanos() }
        backlogged = paused
        guard !events.isEmpty else { return }
        // Only packets count as activity: a throttled ring must not keep the loop polling.
        if events.contains(where: { if case .outOfBudget = $0 { false } else { true } }) { lastSubmission = monotonicNanos() }
        // A client that rang the doorbell cleared its flag: polling again, the flags are set anew
        // before the next sleep.
        if armed { setFlags(0) }
        for e in events { handle(e) }
    }
}

extension Sender {
    /// A ring packet's sender: the connection's owner. Only the owner has the rings — they are
    /// `MADV_DONTFORK` in its memory and the memfd is closed once attached — so whatever is in
    /// them was written by the owner's address space.
    convenience init(owner space: AddressSpace) {
        self.init(pid: space.pid, uid: space.uid, identity: space.identity)
    }
}

extension Daemon {
    /// One event of `RingServer.poll`, on the event loop.
    func ringEvent(_ event: RingServer.Event) {
        switch event {
        case .packet(let connection, let bytes):
            handleRingPacket(bytes, on: connection)
        case .badPacket(let connection, let error):
            connection.send(.error(error), id: 0)
        case .outOfBudget(let connection):
            throttle(connection, ring: true)
        case .corrupt(let connection, let reason):
            // The indices are beyond repair: told why, then cut off like a shared connection. The
            // space stays for a live owner, whose library resumes it with fresh rings.
            connection.send(.error(TetherError(.malformedMessage, "\(reason); the daemon closed this connection and its rings")), id: 0)
            _ = Glibc.shutdown(connection.rawFD, Int32(SHUT_RDWR))
            logger.notice("closed a connection with a corrupt ring", metadata: ["reason": "\(reason)"])
            drop(connection, released: false)
        }
    }

    /// A ring packet, decoded and checked by the code that handles socket messages (`respond`),
    /// on behalf of the connection's owner.
    private func handleRingPacket(_ bytes: [UInt8], on connection: Connection) {
        let requestID: UInt64
        let request: Request
        do {
            (requestID, request) = try MessageCodec.decodeRequest(bytes)
        } catch {
            var r = WireReader(bytes)
            connection.send(.error(error), id: (try? MessageCodec.readHeader(&r))?.requestID ?? 0)
            return
        }
        do throws(TetherError) {
            guard RingRequestID.isRing(requestID) else {
                throw TetherError(.malformedMessage, "a ring packet's request id must have the ring bit (1 << 63) set")
            }
            switch request {
            case .spawn, .run, .join, .kill, .status: break
            default:
                throw TetherError(.invalidArgument, "only spawn, run, join, kill and status travel over the rings; send \(request.op) on the socket")
            }
            // attachRings bound the connection, so it has a space.
            guard let space = connection.space else { throw TetherError(.ownerExited, "this connection has no address space") }
            var fds: [Int32] = []
            if let reply = try respond(request, id: requestID, sender: Sender(owner: space), fds: &fds, on: connection) {
                connection.send(reply, id: requestID)
            }
        } catch {
            if error.code == .resourceExhausted { connection.ringBudget.chargeRefusal() }
            connection.send(.error(error), id: requestID)
        }
    }
}
