import CTetherLinux
import Glibc
import TetherCore
import TetherSys

/// Memory that this process and the device share: memfd pages mapped `MAP_SHARED` here at
/// `base`, and mapped by the daemon at an address of its own. Device code reaches it through
/// owner virtual addresses (`address + offset`), exactly the pointers this process uses, so a
/// pointer stored inside the region (a linked list, say) means the same thing on both sides.
///
/// **Fork.** The pages belong to this process's address space and to no other. The mapping is
/// `MADV_DONTFORK` and the memfd is closed as soon as the daemon has its own copy (until then it
/// is closed in a forked child by the library's atfork handler), so a forked child inherits
/// neither: in a child, `[base, base + size)` is not mapped — a load or store there faults with
/// SIGSEGV, as RDMA-registered memory does after `ibv_fork_init` — and the child pins none of the
/// parent's pages. When the parent dies, its mirrored memory is freed even while the child lives.
/// A child that needs device memory mirrors its own (see `Device`).
///
/// `base` is valid until `Device.unmirror(_:)` or `Device.close()`; after that the pages are
/// unmapped here (the daemon keeps its own mapping until it is done with them).
public final class MirroredMemory: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    /// Bytes, whole pages (the request is rounded up).
    public let size: Int
    public let region: RegionID
    /// The process whose address space holds the mapping.
    let ownerPid: pid_t
    /// Whether the mapping is still there (in `ownerPid`).
    private let mapped = Locked(true)

    /// The owner virtual address of `base`, as kernel arguments carry it.
    public var address: UInt64 { UInt64(UInt(bitPattern: base)) }

    init(base: UnsafeMutableRawPointer, size: Int, region: RegionID) {
        self.base = base
        self.size = size
        self.region = region
        ownerPid = getpid()
    }

    /// Unmaps, once, in the process that mirrored it. In a forked child it does nothing: the
    /// range was never mapped there, and the child may have mapped something else at it since.
    func release() {
        guard getpid() == ownerPid else { return }
        let wasMapped = mapped.withLock { m in
            defer { m = false }
            return m
        }
        if wasMapped { munmap(base, size) }
    }
}
