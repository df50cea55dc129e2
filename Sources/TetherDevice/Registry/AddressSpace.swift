import Glibc
import TetherCore
import TetherSys

/// One running process image that owns device work: the user-space twin of an `mm`.
///
/// It is identified by a pidfd held for its whole life (never a bare pid: pids are reused). Every
/// region and device thread belongs to exactly one address space. Mutable fields are protected by
/// the `Registry`'s lock; the teardown executor takes them out under that lock and then releases
/// them without it.
public final class AddressSpace: @unchecked Sendable {
    public enum Phase: Sendable, Equatable {
        /// Accepting work.
        case live
        /// The exit notifier chain is running: new work is refused with `ownerExited`.
        case tearingDown
        /// Everything is released; connections still held are orphans.
        case gone
    }

    public let id: SpaceID
    public let pid: Int32
    public let uid: UInt32
    public let policy: LifetimePolicy
    /// Owned; closed by whoever watches it once the space is released (see `Registry.finishTeardown`).
    public let pidfd: Int32
    /// The owner's pidfs inode (`Pidfd.identity`): equal for every pidfd of the owner, never for
    /// another process, dead or alive. nil where the kernel lacks pidfs.
    public let identity: UInt64?
    public let table = RegionTable()
    /// Its threads not started yet.
    public let queued = QueuedThreads()

    // Protected by the registry lock.
    public internal(set) var phase: Phase = .live
    public internal(set) var ownerAlive = true
    public internal(set) var connections = 0
    public internal(set) var regions: [RegionID: DeviceRegion] = [:]
    public internal(set) var threads: [ThreadID: DeviceThread] = [:]
    /// Reports of its threads reaped lately, for a `join` asked again (`RecentReaps`).
    var reaped = RecentReaps()
    /// Loaded user modules (threads that run one hold it too).
    public internal(set) var modules: [ModuleID: UserModule] = [:]
    /// When the daemon noticed that the space must go (pidfd readable, last hang-up, kill).
    public internal(set) var noticeNanos: UInt64 = 0

    init(id: SpaceID, pid: Int32, uid: UInt32, policy: LifetimePolicy, pidfd: Int32, identity: UInt64?) {
        self.id = id
        self.pid = pid
        self.uid = uid
        self.policy = policy
        self.pidfd = pidfd
        self.identity = identity
    }

    /// Whether a sender is this space's owner: the same process by pidfs identity where both are
    /// known; else the same pid while the owner's pidfd says it has not exited (a pid is reused only
    /// after its process was reaped, and a dead owner's pidfd stays readable for ever).
    public func isOwner(pid: Int32, identity: UInt64?) -> Bool {
        if let mine = self.identity, let identity { return mine == identity }
        return pid == self.pid && !Pidfd.hasExited(pidfd)
    }

    public var mirroredBytes: UInt64 { regions.values.reduce(0) { $0 + UInt64($1.size) } }

    /// The region containing owner range `[va, va + bytes)`, if any.
    public func region(containing va: UInt64, bytes: UInt64 = 1) -> DeviceRegion? {
        regions.values.first { $0.entry.translate(va, bytes: bytes) != nil }
    }

    func publishTable() {
        table.set(regions.values.sorted { $0.ownerBase < $1.ownerBase }.map(\.entry))
    }
}
