import CTetherLinux
import Glibc
import TetherCore

/// The shared pages of one connection's rings (`RingLayout`), mapped in this process, with the
/// atomic accesses the ring protocol needs on their control words.
///
/// The client creates the memfd and maps it `MADV_DONTFORK` (a forked child never has the rings);
/// the daemon maps the memfd it received with `attachRings`. Either peer may write any word at any
/// time: this type only moves bits, and `RingLayout` says how to check them.
///
/// Unmapped by `unmap()` (once; the owner serialises it against every other access) or on deinit.
public final class RingMemory: @unchecked Sendable {
    public let layout: RingLayout
    public let base: UnsafeMutableRawPointer
    /// Mapped bytes (whole pages).
    public let size: Int
    /// Set by `unmap()`; read only by the owner under its own lock.
    public private(set) var unmapped = false
    /// The process that mapped it: in a forked child (client side) the range is not mapped
    /// (`MADV_DONTFORK`) and may hold something else by now, so nothing there is unmapped.
    private let mapperPid = getpid()

    /// Takes over a mapping made by the caller (the client's, from `tether_mirror_create`).
    public init(adopting base: UnsafeMutableRawPointer, size: Int, layout: RingLayout) {
        self.base = base
        self.size = size
        self.layout = layout
    }

    /// Maps a peer's memfd after checking it: a memfd sealed against shrinking (a peer that could
    /// shrink it would make our loads fault with SIGBUS) of at least `layout.bytes`.
    public convenience init(mapping fd: Int32, layout: RingLayout) throws(TetherError) {
        let inspected: (size: Int, shrinkSealed: Bool)
        do { inspected = try Memfd.inspect(fd) } catch {
            throw TetherError(.invalidArgument, "the fd attached to attachRings is not a memfd: \(error)")
        }
        let size = Memfd.pageRounded(layout.bytes)
        guard inspected.shrinkSealed, inspected.size >= size else {
            throw TetherError(.invalidArgument, "the rings' memfd must be sealed against shrinking (F_SEAL_SHRINK) and hold at least \(size) bytes for \(layout.sqEntries) + \(layout.cqEntries) entries")
        }
        // Pages the client never allocated would be allocated by the daemon's first touch of a
        // slot and charged to the daemon (up to ~2 MiB per connection), as with `mirror`.
        guard Memfd.unallocatedBytes(fd) == 0 else {
            throw TetherError(.invalidArgument, "the rings' memfd must have every page allocated (fallocate) before attachRings; pages the daemon touched first would be charged to the daemon")
        }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw TetherError(.resourceExhausted, "cannot map the rings: \(SystemError("mmap"))")
        }
        self.init(adopting: p, size: size, layout: layout)
    }

    deinit { unmap() }

    /// Unmaps the pages, once. The caller makes sure nobody touches them any more.
    public func unmap() {
        guard !unmapped, getpid() == mapperPid else { return }
        unmapped = true
        munmap(base, size)
    }

    // MARK: Control words

    @inline(__always) private func word(_ offset: Int) -> UnsafeMutablePointer<UInt32> {
        (base + offset).assumingMemoryBound(to: UInt32.self)
    }

    /// Load-acquire: what the peer published before this word is visible after it.
    @inline(__always) public func load(_ offset: Int) -> UInt32 { tether_atomic_load_u32(word(offset)) }
    /// Store-release: everything written before (a slot) is visible to a peer that loads this word.
    @inline(__always) public func store(_ offset: Int, _ value: UInt32) { tether_atomic_store_u32(word(offset), value) }
    /// Sequentially consistent exchange (returns the old value): a full fence too.
    @inline(__always) public func exchange(_ offset: Int, _ value: UInt32) -> UInt32 {
        tether_atomic_exchange_u32(word(offset), value)
    }
    /// A full fence (the store-then-load step of the need-wakeup handshake).
    @inline(__always) public static func fence() { tether_atomic_fence() }

    @inline(__always) public func slot(_ offset: Int) -> UnsafeMutableRawPointer { base + offset }

    /// Writes the header words a fresh ring starts with (the client does, before attaching).
    public func initialise() {
        base.storeBytes(of: RingLayout.magic.littleEndian, toByteOffset: RingLayout.magicOffset, as: UInt32.self)
        base.storeBytes(of: RingLayout.version.littleEndian, toByteOffset: RingLayout.versionOffset, as: UInt32.self)
        for offset in [RingLayout.sqTailOffset, RingLayout.sqHeadOffset, RingLayout.sqNeedWakeupOffset,
                       RingLayout.cqTailOffset, RingLayout.cqHeadOffset, RingLayout.cqNeedWakeupOffset, RingLayout.cqOverflowOffset] {
            store(offset, 0)
        }
    }
}

/// Bounded polling: spins (with a pause hint) until `ready` holds or `nanos` have passed.
/// Returns whether it became ready.
///
/// `yielding`: every round also offers the CPU to any other runnable thread (`sched_yield`), so
/// that polling for a result never keeps the thread that produces it off the CPU — on a machine
/// with more runnable threads than CPUs, a plain spin delays the very work it waits for (device
/// threads run in `SCHED_IDLE` and never preempt a spinning thread).
@inline(__always)
public func spinUntil(nanos: UInt64, yielding: Bool = false, _ ready: () -> Bool) -> Bool {
    if ready() { return true }
    guard nanos > 0 else { return false }
    let deadline = monotonicNanos() &+ nanos
    var i = 0
    while true {
        if yielding { sched_yield() } else { for _ in 0..<32 { tether_cpu_relax() } }
        if ready() { return true }
        i += 1
        // The clock costs ~25 ns (vDSO): read it every few rounds only.
        if i & 7 == 0, monotonicNanos() >= deadline { return false }
    }
}
