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
    /// Each with the uid of the space it records, so that tools show a user only their own.
    private var timelines: [(sequence: UInt64, uid: UInt32, timeline: TeardownTimeline)] = []
    public let timelineCapacity = 65_536
    /// The daemon instance every id made here carries (see `DaemonGeneration`).
    public let generation: DaemonGeneration
    /// The caps checked when threads, regions and modules are added.
    public let quota: RegistryQuota
    /// Per uid: what its spaces hold (threads not yet reaped, regions, mirrored bytes).
    private var usage: [UInt32: Usage] = [:]
    /// Recorded timelines get increasing sequence numbers, the cursor of a paged read.
    private var nextTimelineSequence: UInt64 = 1

    public init(generation: DaemonGeneration = .local, quota: RegistryQuota = .unlimited) {
        self.generation = generation
        self.quota = quota
    }

    public func withLock<T>(_ body: () throws(TetherError) -> T) throws(TetherError) -> T {
        try monitor.withLock(body)
    }

    /// The live space of this owner (a second connection of the same process joins it, and so
    /// does the owner's library resuming after its connection was shut down), or a new one. The
    /// owner is the process `pidfd` refers to: matched by `identity` (its pidfs inode) where the
    /// kernel gives one, else by pid while the space's owner is still alive — never by a bare pid
    /// of a dead owner. The pidfd is closed here if an existing space is joined.
    public func bind(pid: Int32, uid: UInt32, policy: LifetimePolicy, asked: Bool = false, pidfd: consuming OwnedDescriptor,
                     identity: UInt64?) throws(TetherError) -> (AddressSpace, created: Bool) {
        let raw = pidfd.release()
        return try monitor.withLock { () throws(TetherError) -> (AddressSpace, created: Bool) in
            if let existing = spaces.values.first(where: { $0.phase == .live && $0.ownerAlive && $0.isOwner(pid: pid, identity: identity) }) {
                // One process, one space, one policy: a connection that asks for another must not
                // be given this one silently (asking `exit` under a `release` space would leave its
                // work alive through a forked child's fd).
                guard !asked || existing.policy == policy else {
                    close(raw)
                    throw TetherError(.invalidArgument, "this process's address space already runs policy \(existing.policy) (an earlier connection chose it), not \(policy); a process has one address space: ask for policy \(existing.policy) or none")
                }
                existing.connections += 1
                close(raw)
                return (existing, false)
            }
            guard let id = Self.next(&nextSpace, generation) else {
                close(raw)
                throw Self.exhausted("address space")
            }
            let space = AddressSpace(id: SpaceID(rawValue: id), pid: pid, uid: uid, policy: policy, pidfd: raw, identity: identity)
            space.connections = 1
            spaces[space.id] = space
            return (space, true)
        }
    }

    /// A connection of a space came back (the owner resumed it): counted again.
    public func connectionResumed(_ space: AddressSpace) {
        monitor.withLock { space.connections += 1 }
    }

    public var allSpaces: [AddressSpace] { monitor.withLock { spaces.values.sorted { $0.id < $1.id } } }
    public func spaces(ofPid pid: Int32) -> [AddressSpace] {
        monitor.withLock { spaces.values.filter { $0.pid == pid }.sorted { $0.id < $1.id } }
    }

    public func makeRegionID() throws(TetherError) -> RegionID {
        guard let id = monitor.withLock({ Self.next(&nextRegion, generation) }) else { throw Self.exhausted("region") }
        return RegionID(rawValue: id)
    }
    public func makeModuleID() throws(TetherError) -> ModuleID {
        guard let id = monitor.withLock({ Self.next(&nextModule, generation) }) else { throw Self.exhausted("module") }
        return ModuleID(rawValue: id)
    }

    public func add(_ module: UserModule, to space: AddressSpace) throws(TetherError) {
        try monitor.withLock { () throws(TetherError) in
            guard space.phase == .live else { throw TetherError(.ownerExited, "the address space is being torn down") }
            try quota.modulesPerSpace.check(have: UInt64(space.modules.count), hint: "unload one first")
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

    public func makeThreadID() throws(TetherError) -> ThreadID {
        guard let id = monitor.withLock({ Self.next(&nextThread, generation) }) else { throw Self.exhausted("device thread") }
        return ThreadID(rawValue: id)
    }

    /// The next id of a counter, or nil once its serials are spent (never reused).
    private static func next(_ counter: inout UInt64, _ generation: DaemonGeneration) -> UInt64? {
        guard counter <= DaemonGeneration.maxSerial else { return nil }
        defer { counter += 1 }
        return generation.id(serial: counter)
    }

    private static func exhausted(_ what: String) -> TetherError {
        TetherError(.resourceExhausted, "this daemon has handed out all 2^\(DaemonGeneration.serialBits) \(what) ids; restart it")
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
            let size = UInt64(region.size)
            let mine = usage[space.uid, default: Usage()]
            try quota.regionsPerSpace.check(have: UInt64(space.regions.count), hint: "unmirror one first")
            try quota.regionsPerUser.check(have: mine.regions, hint: "unmirror some first")
            try quota.bytesPerSpace.check(have: space.mirroredBytes, adding: size, hint: "unmirror some first")
            try quota.bytesPerUser.check(have: mine.bytes, adding: size, hint: "unmirror some first")
            space.regions[region.id] = region
            space.publishTable()
            usage[space.uid, default: Usage()].regions += 1
            usage[space.uid, default: Usage()].bytes += size
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
            usage[space.uid]?.regions -= 1
            usage[space.uid]?.bytes -= UInt64(region.size)
            return region
        }
    }

    public func add(_ thread: DeviceThread, to space: AddressSpace) throws(TetherError) {
        try monitor.withLock { () throws(TetherError) in
            guard space.phase == .live else { throw TetherError(.ownerExited, "the address space is being torn down") }
            try quota.threadsPerSpace.check(have: UInt64(space.threads.count), hint: "join (reap) or kill some first")
            try quota.threadsPerUser.check(have: usage[space.uid, default: Usage()].threads, hint: "join (reap) or kill some first")
            space.threads[thread.id] = thread
            usage[space.uid, default: Usage()].threads += 1
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
            if var u = usage[space.uid] {
                u.threads -= UInt64(t.count)
                u.regions -= UInt64(r.count)
                u.bytes -= r.reduce(0) { $0 + UInt64($1.size) }
                usage[space.uid] = u.threads == 0 && u.regions == 0 ? nil : u
            }
            space.threads = [:]
            space.regions = [:]
            space.modules = [:]
            space.publishTable()
            return (t, r)
        }
    }

    /// Last step: the space leaves the registry and its timeline is recorded. The pidfd stays open:
    /// whoever watches it (the daemon's event loop) closes it once it no longer does, so that its
    /// number cannot be reused under a watch that still names it.
    public func finishTeardown(_ space: AddressSpace, timeline: TeardownTimeline) {
        monitor.withLock {
            space.phase = .gone
            spaces[space.id] = nil
            if timelines.count >= timelineCapacity { timelines.removeFirst(timelines.count / 2) }
            timelines.append((nextTimelineSequence, space.uid, timeline))
            nextTimelineSequence += 1
            monitor.broadcast()
        }
    }

    /// Whether a recorded timeline is one of `pid` (0: any) that `uid` may see: its own, or all for
    /// root (nil: all, for the daemon itself).
    private static func shows(_ entry: (sequence: UInt64, uid: UInt32, timeline: TeardownTimeline), pid: Int32, uid: UInt32?) -> Bool {
        (pid == 0 || entry.timeline.pid == pid) && (uid == nil || uid == 0 || entry.uid == uid)
    }

    /// The recorded timelines of `pid` (0: all) that `uid` may see (`shows`).
    public func timelines(pid: Int32, uid: UInt32? = nil) -> [TeardownTimeline] {
        monitor.withLock {
            timelines.filter { Self.shows($0, pid: pid, uid: uid) }.map(\.timeline)
        }
    }

    /// The newest `limit` timelines of `pid` (0: all) that `uid` may see, oldest first: what
    /// `awaitTeardown` answers, so its reply stays one small message however many spaces the pid
    /// has released before (a server that connects per request releases one each time).
    /// - Complexity: O(timelines kept), at most `timelineCapacity`.
    public func newestTimelines(pid: Int32, uid: UInt32?, limit: Int) -> [TeardownTimeline] {
        monitor.withLock {
            var list: [TeardownTimeline] = []
            for entry in timelines.reversed() where list.count < limit && Self.shows(entry, pid: pid, uid: uid) {
                list.append(entry.timeline)
            }
            return list.reversed()
        }
    }

    /// One page of `timelines(pid:uid:)`: at most `limit` timelines recorded after cursor `after`
    /// (0: from the oldest kept), and the cursor of the next page (nil: this was the last).
    /// - Complexity: O(timelines kept), at most `timelineCapacity`.
    public func timelines(pid: Int32, uid: UInt32?, after: UInt64, limit: Int) -> (list: [TeardownTimeline], next: UInt64?) {
        monitor.withLock {
            var list: [TeardownTimeline] = []
            for entry in timelines where entry.sequence > after && Self.shows(entry, pid: pid, uid: uid) {
                if list.count == limit { return (list, entry.sequence - 1) }
                list.append(entry.timeline)
            }
            return (list, nil)
        }
    }

    /// One page of `report`: spaces in id order, each space's threads in id order, starting after
    /// thread `afterThread` of space `afterSpace` (0, 0: from the start), with at most `limit`
    /// entries (a space counts one, each of its threads one). A space cut by the page's end
    /// comes again at the top of the next page with its remaining threads. Returns the cursor of
    /// the next page (nil: this was the last).
    public func reportPage(uid: UInt32?, afterSpace: UInt64, afterThread: UInt64, limit: Int,
                           deviceNanos: (SpaceID) -> UInt64) -> (spaces: [SpaceReport], next: (space: UInt64, thread: UInt64)?) {
        monitor.withLock {
            let limit = max(limit, 2)
            var used = 0
            var page: [SpaceReport] = []
            let visible = spaces.values.filter { (uid == nil || uid == 0 || $0.uid == uid) && $0.id.rawValue >= afterSpace }
            for s in visible.sorted(by: { $0.id < $1.id }) {
                if used + 1 >= limit { return (page, (s.id.rawValue, 0)) }
                used += 1
                let from = s.id.rawValue == afterSpace ? afterThread : 0
                let ids = s.threads.keys.filter { $0.rawValue > from }.sorted()
                let room = limit - used
                let shown = ids.prefix(room)
                used += shown.count
                page.append(SpaceReport(space: s.id, pid: s.pid, uid: s.uid, policy: s.policy, ownerAlive: s.ownerAlive,
                                        connections: UInt32(max(s.connections, 0)), regions: UInt32(s.regions.count),
                                        mirroredBytes: s.mirroredBytes, deviceNanos: deviceNanos(s.id),
                                        threads: shown.map { id in
                                            let t = s.threads[id]!
                                            return ThreadReport(thread: t.id, kernel: t.program.name, state: t.state,
                                                                deviceNanos: t.deviceNanos, priority: t.priority)
                                        }))
                if ids.count > shown.count { return (page, (s.id.rawValue, shown.last?.rawValue ?? from)) }
            }
            return (page, nil)
        }
    }

    /// What `tether ps` shows, taken under the lock: the spaces of `uid` (root and nil: all).
    public func report(uid: UInt32? = nil, deviceNanos: (SpaceID) -> UInt64) -> [SpaceReport] {
        monitor.withLock {
            spaces.values.filter { uid == nil || uid == 0 || $0.uid == uid }.sorted { $0.id < $1.id }.map { s in
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

    /// Forgets a thread that ended, once its join was answered (keeping `ps` short); its `report`
    /// is kept a while (`reapedReport(_:of:)`).
    public func forget(_ thread: ThreadID, of space: AddressSpace, report: ThreadReport) {
        monitor.withLock {
            // Kept only by the reap that removed it: a second reply for the same thread (a join
            // asked again while the first reply was still held) adds no second copy.
            guard space.threads.removeValue(forKey: thread) != nil else { return }
            usage[space.uid]?.threads -= 1
            space.reaped.add(report)
        }
    }

    /// The report of one of the space's threads reaped lately, once (`RecentReaps`); nil when it
    /// was never reaped here or too long ago.
    public func reapedReport(_ thread: ThreadID, of space: AddressSpace) -> ThreadReport? {
        monitor.withLock { space.reaped.take(thread) }
    }
}
