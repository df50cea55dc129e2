import CTetherLinux
import Glibc

/// Pages of a memfd mapped `MAP_SHARED`: the unit of mirrored memory.
///
/// The owner process maps the memfd at its own address; the daemon maps the same pages at another
/// address and imports them into the device. Both see every store.
public struct SharedMapping: ~Copyable, @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let size: Int

    /// Maps `size` bytes of `fd` read-write and shared.
    public init(fd: Int32, size: Int) throws(SystemError) {
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw SystemError("mmap")
        }
        self.base = p
        self.size = size
    }

    deinit { munmap(base, size) }

    public var address: UInt64 { UInt64(UInt(bitPattern: base)) }
}

public enum Memfd {
    public static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Rounds up to whole pages (device imports need page-aligned sizes).
    public static func pageRounded(_ bytes: Int) -> Int {
        (max(bytes, 1) + pageSize - 1) / pageSize * pageSize
    }

    /// A new memfd of `size` bytes (sealed against shrinking, so no peer can make the other's
    /// mapping fault with SIGBUS by truncating it), its pages allocated unless `allocate` is false
    /// (a sparse memfd, which a daemon refuses to mirror).
    public static func create(name: String, size: Int, allocate: Bool = true) throws(SystemError) -> OwnedDescriptor {
        let raw = try retryingInterrupts("memfd_create") {
            tether_memfd_create(name, TETHER_MFD_CLOEXEC | TETHER_MFD_ALLOW_SEALING)
        }
        let fd = OwnedDescriptor(adopting: raw)
        try retryingInterrupts("ftruncate") { ftruncate(fd.raw, off_t(size)) }
        if allocate { try Memfd.allocate(fd.raw, size: size) }
        try retryingInterrupts("fcntl(F_ADD_SEALS)") {
            fcntl(fd.raw, TETHER_F_ADD_SEALS, TETHER_F_SEAL_SHRINK | TETHER_F_SEAL_GROW | TETHER_F_SEAL_SEAL)
        }
        return fd
    }

    /// How many bytes of a memfd no allocated page backs (0: every page is allocated), from
    /// `fstat`'s block count. (Not `SEEK_HOLE`: shmem reports pages that `fallocate` allocated
    /// but nobody wrote yet as holes, although they are allocated and charged.)
    public static func unallocatedBytes(_ fd: Int32) -> Int {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return Int.max }
        return max(0, Int(st.st_size) - Int(st.st_blocks) * 512)
    }

    /// Allocates every page of a memfd (`fallocate`): charged to the caller.
    public static func allocate(_ fd: Int32, size: Int) throws(SystemError) {
        try retryingInterrupts("fallocate") { tether_fallocate(fd, Int64(size)) }
    }

    /// The size of a memfd received from a peer, and whether it is sealed against shrinking.
    public static func inspect(_ fd: Int32) throws(SystemError) -> (size: Int, shrinkSealed: Bool) {
        var st = stat()
        try retryingInterrupts("fstat") { fstat(fd, &st) }
        let seals = fcntl(fd, TETHER_F_GET_SEALS)
        return (Int(st.st_size), seals >= 0 && (seals & TETHER_F_SEAL_SHRINK) != 0)
    }
}
