import Glibc
import TetherCore
import TetherSys

/// The registry of off-CPU tasks, keyed by owning address space (amdkfd's process table keyed by
/// mm): address space → its regions, device threads and accounting, plus the recorded teardown
/// timelines.
///
/// All state is protected by one lock held only for bookkeeping — never across device work, an
/// import or an unmap. Teardown takes a space's resources out under the lock (`beginTeardown`),
/// releases them outside it, and records the timeline (`finishTeardown`).
public final class Registry: @unchecked Sendable {
    private let monitor = Monitor()
    private var spaces: [SpaceID: AddressSpace] = [:]
    private var nextSpace: UInt64 = 1
    private var nextRegion: UInt64 = 1
    private var nextThread: UInt64 = 1
    private var nextModule: UInt64 = 1
    private var timelines: [TeardownTimeline] = []
    public let timelineCapacity = 65_536

    public init() {}

    public func withLock<T>(_ body: () throws(TetherError) -> T) throws(TetherError) -> T {
        try monitor.withLock(body)
    }

    /// The live space of `pid` (a second connection of the same process joins it), or a new one.
    /// The caller passes a pidfd it opened; it is closed here if an existing space is joined.
    public func bind(pid: Int32, uid: UInt32, policy: LifetimePolicy, pidfd: consuming OwnedDescriptor) -> (AddressSpace, created: Bool) {
        let raw = pidfd.release()
        return monitor.withLock {
            if let existing = spaces.values.first(where: { $0.pid == pid && $0.phase == .live && $0.ownerAlive }) {
                existing.connections += 1
                close(raw)
                return (existing, false)
            }
            let space = AddressSpace(id: SpaceID(rawValue: nextSpace), pid: pid, uid: uid, policy: policy, pidfd: raw)
            nextSpace += 1
            space.connections = 1
            spaces[space.id] = space
            return (space, true)
        }
    }

    public var allSpaces: [AddressSpace] { monitor.withLock { spaces.values.sorted { $0.id < $1.id } } }
    public func spaces(ofPid pid: Int32) -> [AddressSpace] {
        monitor.withLock { spaces.values.filter { $0.pid == pid }.sorted { $0.id < $1.id } }
    }

    public func makeRegionID() -> RegionID {
        monitor.withLock { defer { nextRegion += 1 }; return RegionID(rawValue: nextRegion) }
    }
    public func makeModuleID() -> ModuleID {
        monitor.withLock { defer { nextModule += 1 }; return ModuleID(rawValue: nextModule) }
    }

    /// Modules one address space may hold at once (each up to `Wire.maxSpirvWords` words).
    public static let maxModulesPerSpace = 64

    public func add(_ module: UserModule, to space: AddressSpace) throws(TetherError) {
        try monitor.withLock { () throws(TetherError) in
            guard space.phase == .live else { throw TetherError(.ownerExited, "the address space is being torn down") }
            guard space.modules.count < Self.maxModulesPerSpace else {
                throw TetherError(.resourceExhausted, "an address space may hold \(Self.maxModulesPerSpace) modules; unload one first")
            }
            space.modules[module.id] = module
        }
    }

    public func module(_ id: ModuleID, of space: AddressSpace) throws(TetherError) -> UserModule {
        try monitor.withLock { () throws(TetherError) -> UserModule in
            guard let m = space.modules[id] else { throw TetherError(.invalidArgument, "no module \(id) in this address space") }
            return m
        }
    }

    /// Forgets a module; threads already running it keep it until they end.
    public func removeModule(_ id: ModuleID, of space: AddressSpace) throws(TetherError) {
        try monitor.withLock { () throws(TetherError) in
            guard space.modules.removeValue(forKey: id) != nil else {
                throw TetherError(.invalidArgument, "no module \(id) in this address space")
            }
        }
    }

    public func makeThreadID() -> ThreadID {
        monitor.withLock { defer { nextThread += 1 }; return ThreadID(rawValue: nextThread) }
    }

    /// Adds a region to a live space. Fails if the space is going away or the range overlaps.
    public func add(_ region: DeviceRegion, to space: AddressSpace) throws(TetherError) {
        try monitor.withLock { () throws(TetherError) in
            guard space.phase == .live else { throw TetherError(.ownerExited, "the address space is being torn down") }
            if let other = space.regions.values.first(where: {
                region.ownerBase < $0.ownerBase + UInt64($0.size) && $0.ownerBase < region.ownerBase + UInt64(region.size)
            }) {
                throw TetherError(.invalidArgument, "the range overlaps mirrored region \(other.id) at 0x\(String(other.ownerBase, radix: 16))")
            }
            space.regions[region.id] = region
            space.publishTable()
        }
    }

    /// Removes a region that no live device thread may be using.
    public func removeRegion(_ id: RegionID, of space: AddressSpace) throws(TetherError) -> DeviceRegion {
        try monitor.withLock { () throws(TetherError) -> DeviceRegion in
            guard let region = space.regions[id] else { throw TetherError(.noSuchRegion, "no region \(id) in this address space") }
            let running = space.threads.values.filter { $0.state == .queued || $0.state == .running }.count
            guard running == 0 else {
                throw TetherError(.invalidArgument, "region \(id) may be in use by \(running) device thread(s); join or kill them first")
            }
            space.regions[id] = nil
            space.publishTable()
            return region
        }
    }

    public func add(_ thread: DeviceThread, to space: AddressSpace) throws(TetherError) {
        try monitor.withLock { () throws(TetherError) in
            guard space.phase == .live else { throw TetherError(.ownerExited, "the address space is being torn down") }
            space.threads[thread.id] = thread
        }
    }

    /// Finds a thread in any space.
    public func thread(_ id: ThreadID) -> (DeviceThread, AddressSpace)? {
        monitor.withLock {
            for s in spaces.values { if let t = s.threads[id] { return (t, s) } }
            return nil
        }
    }

    public func connectionClosed(_ space: AddressSpace) -> Int {
        monitor.withLock {
            space.connections -= 1
            return space.connections
        }
    }

    public func ownerExited(_ space: AddressSpace) {
        monitor.withLock { space.ownerAlive = false }
    }

    /// Step one of the exit notifier chain: stop admitting work. Returns false if teardown
    /// already began (it runs once).
    public func beginTeardown(_ space: AddressSpace, noticeNanos: UInt64) -> Bool {
        monitor.withLock {
            guard space.phase == .live else { return false }
            space.phase = .tearingDown
            space.noticeNanos = noticeNanos
            return true
        }
    }

    /// The space's threads and regions, taken out of the registry for release.
    public func takeResources(_ space: AddressSpace) -> (threads: [DeviceThread], regions: [DeviceRegion]) {
        monitor.withLock {
            let t = Array(space.threads.values)
            let r = Array(space.regions.values)
            space.threads = [:]
            space.regions = [:]
            space.modules = [:]
            space.publishTable()
            return (t, r)
        }
    }

    /// Last step: the space leaves the registry and its timeline is recorded.
    public func finishTeardown(_ space: AddressSpace, timeline: TeardownTimeline) {
        monitor.withLock {
            space.phase = .gone
            spaces[space.id] = nil
            close(space.pidfd)
            if timelines.count >= timelineCapacity { timelines.removeFirst(timelines.count / 2) }
            timelines.append(timeline)
            monitor.broadcast()
        }
    }

    public func timelines(pid: Int32) -> [TeardownTimeline] {
        monitor.withLock { pid == 0 ? timelines : timelines.filter { $0.pid == pid } }
    }

    /// What `tether ps` shows, taken under the lock.
    public func report(deviceNanos: (SpaceID) -> UInt64) -> [SpaceReport] {
        monitor.withLock {
            spaces.values.sorted { $0.id < $1.id }.map { s in
                SpaceReport(space: s.id, pid: s.pid, uid: s.uid, policy: s.policy, ownerAlive: s.ownerAlive,
                            connections: UInt32(max(s.connections, 0)), regions: UInt32(s.regions.count),
                            mirroredBytes: s.mirroredBytes, deviceNanos: deviceNanos(s.id),
                            threads: s.threads.values.sorted { $0.id < $1.id }.map { t in
                                ThreadReport(thread: t.id, kernel: t.program.name, state: t.state,
                                             deviceNanos: t.deviceNanos, priority: t.priority)
                            })
            }
        }
    }

    /// Forgets thread entries that ended (after their join was answered), keeping `ps` short.
    public func forget(_ thread: ThreadID, of space: AddressSpace) {
        monitor.withLock { _ = space.threads.removeValue(forKey: thread) }
    }
}
