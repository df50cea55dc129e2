/// The shape of one connection's submission and completion rings in memory shared by a client
/// and the daemon (a memfd the client maps `MADV_DONTFORK` and passes with `attachRings`).
///
/// ```
/// offset 0      control page: one 64-byte line per word, so producer and consumer never share one
///               +0    magic "TRNG", +4 layout version
///               +64   sqTail        written by the client (producer), read by the daemon
///               +128  sqHead        written by the daemon (consumer), read by the client
///               +192  sqNeedWakeup  1: the daemon sleeps; the client rings the socket doorbell
///               +256  cqTail        written by the daemon (producer)
///               +320  cqHead        written by the client (consumer)
///               +384  cqNeedWakeup  1: a client thread sleeps; the daemon rings the socket doorbell
/// offset 4096   sqEntries × 256-byte submission slots
///               cqEntries × 256-byte completion slots
/// ```
///
/// A slot is a `u32` byte count and that many bytes of one ordinary protocol message (header and
/// body, `MessageCodec`): a submission is a request, a completion is its reply. The rings are a
/// second transport for messages that fit a slot, not a second protocol, so the daemon decodes and
/// validates a ring packet with exactly the code that handles a socket message.
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
    public static let version: UInt32 = 1
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
}

/// Reading and writing one slot's packet (`RingLayout`).
public enum RingSlot {
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

/// Request ids of messages that travel over the rings carry this bit, so the daemon sends their
/// replies to the completion ring (or, when a reply does not fit a slot or the ring is full, over
/// the socket with the same id). The library draws every id from one counter, so socket and ring
/// ids never collide.
public enum RingRequestID {
    public static let bit: UInt64 = 1 << 63
    public static func isRing(_ id: UInt64) -> Bool { id & bit != 0 }
}
