import Glibc
import TetherCore
import TetherSys

/// Memory that this process and the device share: a memfd mapped `MAP_SHARED` here at `base`,
/// and mapped by the daemon at an address of its own. Device code reaches it through owner
/// virtual addresses (`address + offset`), exactly the pointers this process uses, so a pointer
/// stored inside the region (a linked list, say) means the same thing on both sides.
///
/// The memfd stays open for the life of the mirror: a forked child, which inherits both the
/// mapping (at the same address) and the memfd, must hand that memfd to the daemon again to
/// become an owner of the region in its own right (see `Device`).
///
/// `base` is valid until `Device.unmirror(_:)` or `Device.close()`; after that the pages are
/// unmapped here (the daemon keeps its own mapping until it is done with them).
public final class MirroredMemory: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    /// Bytes, whole pages (the request is rounded up).
    public let size: Int
    /// The region as first mirrored. In a forked child the `Device` mirrors the memory again and
    /// translates this id to the child's own region, so the handle keeps working there.
    public let region: RegionID

    /// The memfd and the mapping, nil once released. Released here, never by the daemon.
    private let resources: Locked<Resources?>

    struct Resources: ~Copyable {
        var memfd: OwnedDescriptor
        var mapping: SharedMapping
    }

    /// The owner virtual address of `base`, as kernel arguments carry it.
    public var address: UInt64 { UInt64(UInt(bitPattern: base)) }

    init(memfd: consuming OwnedDescriptor, mapping: consuming SharedMapping, region: RegionID) {
        base = mapping.base
        size = mapping.size
        self.region = region
        resources = Locked(Resources(memfd: memfd, mapping: mapping))
    }

    /// Runs `body` with the memfd while holding it open (nil once released), so that a
    /// concurrent release cannot close the number under a `sendmsg` that is passing it.
    func withMemfd<T, E: Error>(_ body: (Int32?) throws(E) -> T) throws(E) -> T {
        try resources.withLock { (r: inout Resources?) throws(E) -> T in
            try body(r?.memfd.raw)
        }
    }

    /// Unmaps and closes, once. In a forked child this releases the child's copies only.
    func release() {
        let taken = resources.withLock { $0.take() }
        _ = consume taken  // munmap and close happen here, outside the lock
    }
}
