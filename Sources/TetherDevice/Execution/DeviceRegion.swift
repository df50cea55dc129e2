import Glibc
import TetherCore
import TetherSys

/// The device side of a mirrored region: this process's mapping of the owner's memfd pages and
/// their import into the backend. Device code reaches it through the owner's addresses
/// `[ownerBase, ownerBase + size)`.
///
/// `release()` frees in the order the device needs — the import before the pages it covers are
/// unmapped, the mapping before the memfd is closed — and is idempotent. (Raw fields rather than
/// `~Copyable` wrappers: moving those out in a throwing initialiser trips a Swift 6.3 compiler bug.)
public final class DeviceRegion: @unchecked Sendable {
    public let id: RegionID
    public let ownerBase: UInt64
    public let size: Int
    public let entry: RegionTableEntry
    private var imported: (any ImportedMemory)?
    private var mapping: UnsafeMutableRawPointer?
    private var memfd: Int32

    /// Maps `memfd` (whole pages, `size` bytes) and imports it into `backend`. A nil `ownerBase`
    /// means the owner is this process: its addresses are those of this mapping.
    public init(id: RegionID, memfd: consuming OwnedDescriptor, ownerBase: UInt64?, size: Int,
                backend: any ComputeBackend) throws(TetherError) {
        let fd = memfd.release()
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let error = SystemError("mmap")
            close(fd)
            throw TetherError(.resourceExhausted, "cannot map the region: \(error)")
        }
        let imported: any ImportedMemory
        do {
            imported = try backend.importMemory(base: p, size: size)
        } catch {
            munmap(p, size)
            close(fd)
            throw error
        }
        self.id = id
        self.size = size
        self.ownerBase = ownerBase ?? UInt64(UInt(bitPattern: p))
        self.imported = imported
        self.mapping = p
        self.memfd = fd
        entry = RegionTableEntry(ownerBase: self.ownerBase, size: UInt64(size), deviceBase: imported.deviceBase)
    }

    /// The backend's import of the pages (nil after release).
    public var importedMemory: (any ImportedMemory)? { imported }

    /// This process's address of the region's first byte (nil after release).
    public var localBase: UnsafeMutableRawPointer? { mapping }

    public func release() {
        imported = nil
        if let mapping { munmap(mapping, size) }
        mapping = nil
        if memfd >= 0 { close(memfd) }
        memfd = -1
    }

    deinit { release() }
}
