import CTetherLinux
import Glibc
import TetherCore
import TetherSys

/// The client's side of one connection's submission and completion rings (`RingLayout`).
///
/// Any thread may submit (under `producer`) and any thread may consume completions (under
/// `consumer`): a caller waiting for its reply polls the completion ring for a bounded time and
/// hands every reply it finds to its waiter, whoever that is; the connection's reader thread does
/// the same when the daemon signals `eventfd` for a sleeping caller.
///
/// Once attached, every reply to this process comes through the completion ring, socket calls'
/// included: the pages and the eventfd exist only here, so another holder of the socket (a child
/// that kept it, a process it was passed to) cannot take a reply or a wake-up first.
///
/// **Fork.** The pages are `MADV_DONTFORK`, the memfd was closed once the daemon had it and the
/// eventfd is closed in every forked child (`tether_private_eventfd`), so a forked child has no
/// rings: it never touches this object (its `Connection` is not used in the
/// child) and gets rings of its own with its own connection. A child can therefore neither read
/// the parent's submissions nor forge them.
///
/// **Closing.** `detach()` unmaps under both locks after marking the channel closed, so no thread
/// is inside the pages when they go; every later use finds it closed and falls back or fails.
final class RingChannel: @unchecked Sendable {
    private let memory: RingMemory
    /// The completion doorbell: the daemon signals it when `cqNeedWakeup` is set. Closed by
    /// `closeEventfd`, after the reader stopped polling it.
    let eventfd: Int32
    private let eventfdOpen = Locked(true)
    private let openerPid = getpid()
    /// The submission tail this process owns; nil once detached.
    private let producer: Locked<UInt32?>
    /// The completion head this process owns; nil once detached.
    private let consumer: Locked<UInt32?>

    /// Creates the shared pages (`MADV_DONTFORK`, sealed), initialised, and the eventfd. Returns
    /// the channel and the memfd to attach (the caller closes it with `tether_close_tracked_fd`
    /// once sent).
    static func create(entries: UInt32) throws(TetherError) -> (RingChannel, memfd: Int32) {
        let layout = try RingLayout(sqEntries: entries, cqEntries: entries)
        let eventfd = tether_private_eventfd()
        guard eventfd >= 0 else {
            throw TetherError(.resourceExhausted, "cannot create the rings' eventfd: \(SystemError("eventfd"))")
        }
        let size = Memfd.pageRounded(layout.bytes)
        var memfd: Int32 = -1
        var mapped: UnsafeMutableRawPointer?
        // The mirror helper does exactly what rings need: sealed memfd, shared mapping marked
        // MADV_DONTFORK, fd closed in a forked child until we close it, all under the fork lock.
        guard tether_mirror_create(size, &memfd, &mapped) == 0, let base = mapped else {
            let e = SystemError("memfd_create/mmap")
            tether_close_tracked_fd(eventfd)
            throw TetherError(.resourceExhausted, "cannot create \(size) bytes of shared memory for the rings: \(e)")
        }
        let memory = RingMemory(adopting: base, size: size, layout: layout)
        memory.initialise()
        return (RingChannel(memory: memory, eventfd: eventfd), memfd)
    }

    private init(memory: RingMemory, eventfd: Int32) {
        self.memory = memory
        self.eventfd = eventfd
        producer = Locked(0)
        consumer = Locked(0)
    }

    deinit {
        detach()
        closeEventfd()
    }

    var entries: UInt32 { memory.layout.sqEntries }

    enum Submitted {
        /// In the ring; `doorbell`: the daemon sleeps, send it a `ringDoorbell`.
        case queued(doorbell: Bool)
        /// Not in the ring (too large, full, or detached): send it over the socket instead.
        case refused
    }

    /// Puts one request packet into the submission ring. A full ring waits up to `spinNanos` for
    /// the daemon to make room (it polls while busy; if it sleeps, the doorbell already went) and
    /// then refuses, so the caller falls back to the socket: back-pressure without loss.
    func submit(_ bytes: [UInt8], spinNanos: UInt64) -> Submitted {
        guard bytes.count <= RingLayout.maxPacketBytes else { return .refused }
        let layout = memory.layout
        var queued = tryQueue(bytes, layout)
        if queued == nil {
            _ = spinUntil(nanos: spinNanos) {
                queued = tryQueue(bytes, layout)
                return queued != nil
            }
        }
        guard queued == true else { return .refused }
        // Dekker with the daemon's sleep: tail published (release, in tryQueue), full fence, flag.
        RingMemory.fence()
        let sleeping = producer.withLock { tail -> Bool in
            guard tail != nil else { return false }
            return memory.load(RingLayout.sqNeedWakeupOffset) != 0 && memory.exchange(RingLayout.sqNeedWakeupOffset, 0) != 0
        }
        return .queued(doorbell: sleeping)
    }

    /// true: queued; false: detached; nil: full.
    private func tryQueue(_ bytes: [UInt8], _ layout: RingLayout) -> Bool? {
        producer.withLock { tail -> Bool? in
            guard let t = tail else { return false }
            // The daemon's head is only a hint of free space: an impossible one reads as full.
            guard let free = RingLayout.free(head: memory.load(RingLayout.sqHeadOffset), tail: t, entries: layout.sqEntries),
                  free > 0 else { return nil }
            RingSlot.write(bytes, to: memory.slot(layout.sqSlot(t)))
            // Where this caller will wait for the reply: the daemon does not poll on that CPU.
            memory.store(RingLayout.sqCPUOffset, UInt32(bitPattern: tether_current_cpu() &+ 1))
            tail = t &+ 1
            memory.store(RingLayout.sqTailOffset, t &+ 1)
            return true
        }
    }

    /// Whether the daemon has published completions this process has not consumed.
    func hasCompletions() -> Bool {
        consumer.withLock { head in
            guard let h = head else { return false }
            return memory.load(RingLayout.cqTailOffset) != h
        }
    }

    /// Copies every published completion out of the ring and returns the messages (in order),
    /// and whether the daemon holds more that waited for room (`cqOverflow`): the caller then
    /// sends `ringDoorbell`. Throws when the daemon's tail or a slot is impossible (not a daemon
    /// we can talk to).
    func drain() throws(TetherError) -> (messages: [[UInt8]], ringDoorbell: Bool) {
        let layout = memory.layout
        return try consumer.withLock { (head: inout UInt32?) throws(TetherError) -> ([[UInt8]], Bool) in
            guard var h = head else { return ([], false) }
            let tail = memory.load(RingLayout.cqTailOffset)
            guard var n = RingLayout.pending(head: h, tail: tail, entries: layout.cqEntries) else {
                throw TetherError(.malformedMessage, "the completion ring's tail (\(tail)) is not within \(layout.cqEntries) entries of its head (\(h))")
            }
            var messages: [[UInt8]] = []
            while n > 0 {
                let (bytes, slots) = try RingSlot.readCompletion(at: h, available: n, layout: layout, base: memory.base)
                messages.append(bytes)
                h &+= slots
                n -= slots
            }
            if !messages.isEmpty {
                head = h
                memory.store(RingLayout.cqHeadOffset, h)
            }
            // Dekker with the daemon holding a reply: head published, full fence, then the flag.
            RingMemory.fence()
            let held = memory.load(RingLayout.cqOverflowOffset) != 0 && memory.exchange(RingLayout.cqOverflowOffset, 0) != 0
            return (messages, held)
        }
    }

    /// Asks the daemon to signal `eventfd` for the next completion (a thread is about to
    /// sleep). The caller drains once more afterwards: a completion published before the daemon
    /// saw the flag is found by that look (the exchange is a full fence).
    func armWakeup() {
        consumer.withLock { head in
            if head != nil { _ = memory.exchange(RingLayout.cqNeedWakeupOffset, 1) }
        }
    }

    /// Closes the eventfd, in the process that made it, once nothing polls it. Idempotent.
    func closeEventfd() {
        guard getpid() == openerPid else { return }
        eventfdOpen.withLock { open in
            if open { tether_close_tracked_fd(eventfd) }
            open = false
        }
    }

    /// Stops using the rings and unmaps them, in the process that made them. Idempotent.
    func detach() {
        guard getpid() == openerPid else { return }
        producer.withLock { tail in
            consumer.withLock { head in
                guard tail != nil || head != nil else { return }
                tail = nil
                head = nil
                memory.unmap()
            }
        }
    }
}

extension Request {
    /// Requests the library sends over the rings when it can.
    var travelsOverRings: Bool {
        switch self {
        case .spawn, .run, .join, .kill, .status: true
        default: false
        }
    }
}
