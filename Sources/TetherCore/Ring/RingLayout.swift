/// The shape of one connection's submission and completion rings in memory shared by a client
/// and the daemon (a memfd the client maps `MADV_DONTFORK` and passes with `attachRings`).
///
/// ```
/// offset 0      control page: one 64-byte line per word, so producer and consumer never share one
///               +0    magic "TRNG", +4 layout version
///               +64   sqTail        written by the client (producer), read by the daemon
///               +128  sqHead        written by the daemon (consumer), read by the client
///               +192  sqNeedWakeup  1: the daemon sleeps; the client sends `ringDoorbell`
///               +256  cqTail        written by the daemon (producer)
///               +320  cqHead        written by the client (consumer)
///               +384  cqNeedWakeup  1: a client thread sleeps; the daemon signals the eventfd
///               +448  cqOverflow    1: the daemon holds completions the full ring could not take;
///                                   the client sends `ringDoorbell` once it has made room
///               +512  sqCPU         the CPU the client last submitted from, plus one (0: not
///                                   said); a hint for the daemon's polling, nothing else
/// offset 4096   sqEntries × 256-byte submission slots
///               cqEntries × 256-byte completion slots
/// ```
///
/// A slot is a `u32` byte count and that many bytes of one ordinary protocol message (header and
/// body, `MessageCodec`): a submission is a request, a completion is its reply. The rings are a
/// second transport, not a second protocol, so the daemon decodes and validates a ring packet with
/// exactly the code that handles a socket message. A submission is one slot. A completion may span
/// consecutive slots (`RingSlot.moreBit` in every count but the last, published with one tail
/// store), so that every reply to the owner fits the ring: replies that travel only in memory the
/// owner alone maps cannot be read by another holder of the socket (ownership.md, rule 3).
///
/// The completion wake-up is an eventfd the client creates, passes with `attachRings` and keeps out
/// of every forked child; a doorbell on the shared socket could be read first by a child holding a
/// copy of it.
///
/// Indices are free-running `u32` counters (slot = index mod entries, entries a power of two), as
/// in io_uring. The peer can write anything into the shared page at any time, so each side keeps
/// its own copy of the index it owns, never re-reads it from the page, and checks the peer's
/// index against it (`pending(head:tail:)`) before trusting a count; slots are copied out before
/// they are decoded (`RingSlot.read`).
///
/// The need-wakeup flags are the io_uring `SQ_NEED_WAKEUP` idea on both sides: a consumer about to
/// sleep sets its flag and then looks at the ring once more; a producer publishes its tail and then
/// looks at the flag. With a full fence between the two steps on both sides (Dekker), either the
/// consumer sees the new entry or the producer sees the flag, so no wake-up is lost, and no
/// system call is made while the consumer is polling.
public struct RingLayout: Sendable, Equatable {
    public static let magic: UInt32 = 0x474E_5254  // "TRNG" little-endian
    public static let version: UInt32 = 2
    /// Bytes per slot: a `u32` length and up to `maxPacketBytes` of message.
    public static let slotBytes = 256
    public static let maxPacketBytes = slotBytes - 4
    /// The control page (one page on every Linux page size ≥ 4 KiB).
    public static let controlBytes = 4096
    /// Entries per ring: a power of two in this range.
    public static let minEntries: UInt32 = 2
    public static let maxEntries: UInt32 = 4096

    // Control word offsets, each on its own 64-byte line.
    public static let magicOffset = 0
    public static let versionOffset = 4
    public static let sqTailOffset = 64
    public static let sqHeadOffset = 128
    public static let sqNeedWakeupOffset = 192
    public static let cqTailOffset = 256
    public static let cqHeadOffset = 320
    public static let cqNeedWakeupOffset = 384
    public static let cqOverflowOffset = 448
    /// Where the client last submitted from (`sqCPU`). The daemon reads it only to decide whether
    /// to poll: a client on the event loop's own CPU needs that CPU for its next submission
    /// (`RingServer.sleepTimeout`). A false value costs the lying client its own polling, no more.
    public static let sqCPUOffset = 512

    public let sqEntries: UInt32
    public let cqEntries: UInt32

    /// Checks the counts (powers of two, `minEntries…maxEntries`): they come from a client.
    public init(sqEntries: UInt32, cqEntries: UInt32) throws(TetherError) {
        for (name, n) in [("submission", sqEntries), ("completion", cqEntries)] {
            guard n >= Self.minEntries, n <= Self.maxEntries, n & (n - 1) == 0 else {
                throw TetherError(.invalidArgument, "a \(name) ring needs a power of two of \(Self.minEntries) to \(Self.maxEntries) entries, not \(n)")
            }
        }
        self.sqEntries = sqEntries
        self.cqEntries = cqEntries
    }

    public var sqOffset: Int { Self.controlBytes }
    public var cqOffset: Int { sqOffset + Int(sqEntries) * Self.slotBytes }
    /// Bytes the shared memory must hold (before rounding up to pages).
    public var bytes: Int { cqOffset + Int(cqEntries) * Self.slotBytes }

    /// The offset of the slot for free-running index `index` of the submission ring.
    public func sqSlot(_ index: UInt32) -> Int { sqOffset + Int(index & (sqEntries - 1)) * Self.slotBytes }
    public func cqSlot(_ index: UInt32) -> Int { cqOffset + Int(index & (cqEntries - 1)) * Self.slotBytes }

    /// Entries between a consumer's `head` (its own copy) and a producer's `tail` (read from shared
    /// memory), or nil when `tail` is not a position the producer could have reached: more than
    /// `entries` ahead of `head`, or behind it. Wrap-around of the `u32` counters is handled.
    public static func pending(head: UInt32, tail: UInt32, entries: UInt32) -> UInt32? {
        let n = tail &- head
        return n <= entries ? n : nil
    }

    /// Free slots for a producer at `tail` (its own copy) given the consumer's `head` (read from
    /// shared memory), or nil when `head` is impossible (ahead of `tail`, or more than `entries`
    /// behind it): a producer treats that as a full ring.
    public static func free(head: UInt32, tail: UInt32, entries: UInt32) -> UInt32? {
        guard let used = pending(head: head, tail: tail, entries: entries) else { return nil }
        return entries - used
    }

    /// The daemon's matching of `ringDoorbell`s with submissions: whether a doorbell is excused by
    /// a submission not yet matched with one — consumed already (below the consumer's `head`) or
    /// `pending` — and the new `mark` (the submissions before it excused a doorbell each, or never
    /// will). At most `backlog` submissions consumed without a doorbell still excuse one. The mark
    /// never passes `head + pending`, so it is at most `entries` ahead of the head, and may be any
    /// distance behind it (a client may stream 2^31 submissions without a doorbell); wrap-around of
    /// the `u32` counters is handled.
    public static func excuseDoorbell(head: UInt32, pending: UInt32, mark: UInt32, entries: UInt32, backlog: UInt32) -> (excused: Bool, mark: UInt32) {
        var mark = mark
        let behind = head &- mark
        if behind > backlog && behind <= UInt32.max - entries { mark = head &- backlog }
        guard (head &+ pending) &- mark &- 1 < entries &+ backlog else { return (false, mark) }
        return (true, mark &+ 1)
    }
}

/// Reading and writing one slot's packet (`RingLayout`).
public enum RingSlot {
    /// Set in a completion slot's count when the message goes on in the next slot.
    public static let moreBit: UInt32 = 1 << 31

    /// Slots a completion of `bytes` bytes takes.
    public static func count(forMessageBytes bytes: Int) -> Int {
        max(1, (bytes + RingLayout.maxPacketBytes - 1) / RingLayout.maxPacketBytes)
    }

    /// Writes `bytes` over `count(forMessageBytes:)` consecutive slots starting at free-running
    /// index `index` of the completion ring; the caller checked there is room and publishes the
    /// tail afterwards.
    public static func writeCompletion(_ bytes: [UInt8], at index: UInt32, layout: RingLayout, base: UnsafeMutableRawPointer) {
        let n = count(forMessageBytes: bytes.count)
        bytes.withUnsafeBytes { all in
            for i in 0..<n {
                let from = i * RingLayout.maxPacketBytes
                let length = min(RingLayout.maxPacketBytes, bytes.count - from)
                let slot = base + layout.cqSlot(index &+ UInt32(i))
                slot.storeBytes(of: (UInt32(length) | (i < n - 1 ? moreBit : 0)).littleEndian, as: UInt32.self)
                if length > 0 { slot.advanced(by: 4).copyMemory(from: all.baseAddress! + from, byteCount: length) }
            }
        }
    }

    /// Copies one completion out of the ring, starting at free-running index `index`, reading no
    /// further than `available` slots. Returns the message and the slots it took. Throws
    /// `malformedMessage` for a count a slot cannot hold, a message that runs past `available`,
    /// or one longer than `Wire.maxMessageBytes`.
    public static func readCompletion(at index: UInt32, available: UInt32, layout: RingLayout,
                                      base: UnsafeRawPointer) throws(TetherError) -> (bytes: [UInt8], slots: UInt32) {
        var bytes: [UInt8] = []
        var used: UInt32 = 0
        while true {
            guard used < available else {
                throw TetherError(.malformedMessage, "a completion runs past the ring's tail")
            }
            let slot = base + layout.cqSlot(index &+ used)
            let word = UInt32(littleEndian: slot.loadUnaligned(as: UInt32.self))
            used += 1
            let length = Int(word & ~moreBit)
            guard length <= RingLayout.maxPacketBytes, bytes.count + length <= Wire.maxMessageBytes else {
                throw TetherError(.malformedMessage, "a completion slot claims \(length) bytes; a slot holds at most \(RingLayout.maxPacketBytes)")
            }
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: slot.advanced(by: 4), count: length))
            if word & moreBit == 0 { return (bytes, used) }
        }
    }

    /// Writes `bytes` into the slot at `slot` (length first). False when they do not fit: the
    /// caller sends the message over the socket instead.
    @discardableResult
    public static func write(_ bytes: [UInt8], to slot: UnsafeMutableRawPointer) -> Bool {
        guard bytes.count <= RingLayout.maxPacketBytes else { return false }
        slot.storeBytes(of: UInt32(bytes.count).littleEndian, as: UInt32.self)
        bytes.withUnsafeBytes { slot.advanced(by: 4).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return true
    }

    /// Copies the packet in the slot at `slot` out of shared memory, so that the peer cannot change
    /// it while it is checked. Throws `malformedMessage` for a length the slot cannot hold.
    public static func read(from slot: UnsafeRawPointer) throws(TetherError) -> [UInt8] {
        // One load of the length: the peer may rewrite it at any moment.
        let length = Int(UInt32(littleEndian: slot.loadUnaligned(as: UInt32.self)))
        guard length <= RingLayout.maxPacketBytes else {
            throw TetherError(.malformedMessage, "a ring slot claims \(length) bytes; a slot holds at most \(RingLayout.maxPacketBytes)")
        }
        return [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            UnsafeMutableRawBufferPointer(buffer).copyMemory(from: UnsafeRawBufferPointer(start: slot.advanced(by: 4), count: length))
            count = length
        }
    }
}

/// Request ids of messages that travel over the submission ring carry this bit (a packet without
/// it is refused). Once a connection has rings, the daemon answers every request of its owner —
/// ring or socket — in the completion ring; the bit only tells the two transports' ids apart. The
/// library draws every id from one counter, so socket and ring ids never collide.
public enum RingRequestID {
    public static let bit: UInt64 = 1 << 63
    public static func isRing(_ id: UInt64) -> Bool { id & bit != 0 }
}
