/// The scheduling policy: which device thread runs next and for how many workgroups. Pure and
/// deterministic (no clock, no threads) so tests drive it with a manual clock and compare it with
/// a reference model; `Scheduler` in TetherDevice runs it against a real backend.
///
/// The shape follows the kernel's DRM scheduler: run queues per priority class, one *entity* per
/// address space, jobs (here: slices of a device thread's grid) in push order.
///
/// ```swift
/// var queue = RunQueue(quantumNanos: 2_000_000)
/// queue.add(ThreadID(rawValue: 1), space: SpaceID(rawValue: 1), priority: .normal, groups: 1000, persistent: false)
/// let pick = queue.pick()!            // (thread 1, a first probing slice)
/// queue.account(pick, nanos: 40_000)   // measured cost of that slice
/// ```
///
/// Algorithm:
/// - Classes are strict (`high` before `normal` before `low`), except that a runnable lower class
///   passed over `floorInterval` times in a row gets the next slice: the guaranteed floor. When
///   several lower classes are due, the most passed-over one runs; a tie goes to the higher class.
/// - Within a class, the address space with the least *virtual time* (device time received) runs
///   next — fairness between address spaces, not threads. Ties go to the earlier arrival (a
///   sequence number: the selection must stay FIFO for equal keys). A space that becomes runnable
///   starts no lower than the class's minimum virtual time, so idling earns no burst. That
///   minimum never goes back (as CFS's `min_vruntime`): a space arriving while the class is idle
///   starts where the class left off, not at 0. A space that changes class starts at the new
///   class's minimum (virtual times of different classes do not compare).
/// - Within an address space, its runnable threads take turns (round-robin).
/// - Slices in flight: a thread may have up to `slicesPerThread` (so the device has the next one
///   queued while one runs), but only once its cost is known — a probing thread waits for its
///   probe. A slice in flight counts against its space's virtual time from the pick, at its
///   estimated cost (the quantum while unknown), until `account` charges what it really took; so
///   the slots of a deep queue go round the spaces instead of to the one that was last picked.
///   Slices of one thread are accounted in the order they were picked.
/// - Slices are sized from the thread's measured cost per workgroup (decayed sums of time and groups) to
///   `quantumNanos`; the first slice of a thread probes with one workgroup, and a slice that ran
///   under half the quantum lets the next one at least double — quadruple under a quarter — (the first estimates still include
///   the fixed cost of a dispatch; a slice measured at 0 ns also doubles). A one-group thread
///   doing work its space did before (same `costKey`: the daemon's built-in kernel with the same
///   arguments and grid) starts with that work's measured cost known, so the daemon can tell a
///   tiny `run` before it runs it. A larger grid always probes: a cost averaged over its groups
///   says nothing about the first ones (a grid of one real group and a million that return at
///   once would otherwise start with one slice of every real group — review, issue 14).
/// - A thread that is not persistent and has completed its grid is not picked again; it stays
///   queued until `remove`.
///
/// - Complexity: `add`, `remove` and `account` are O(1) in the threads (turns are a linked list,
///   `TurnList`), `removeSpace` is O(its threads), so tearing down n threads costs O(n).
///   `pick` and `account` are O(address spaces) — they look for the least virtual time — plus,
///   in `pick`, the space's threads passed over as not runnable (those with a full set of slices
///   in flight: at most `slicesPerThread` slots' worth). Spaces are bounded by the daemon's
///   connection limits.
public struct RunQueue: Sendable {
    public struct Pick: Sendable, Equatable {
        public var thread: ThreadID
        public var space: SpaceID
        public var groupBase: UInt32
        public var groupCount: UInt32
        public var round: UInt32
        /// What the pick charged its space in advance (see `account`).
        public var estimateNanos: UInt64
    }

    /// What `account` concluded about the thread after its slice.
    public enum Progress: Sendable, Equatable {
        /// More workgroups remain; it stays queued.
        case more
        /// The grid is complete (a persistent thread starts its next round unless removed).
        case gridComplete
    }

    struct Thread: Sendable {
        var space: SpaceID
        var priority: PriorityClass
        var groupTotal: UInt32
        /// The first group of the next slice to pick, and the round it belongs to.
        var nextGroup: UInt32 = 0
        var round: UInt32 = 0
        var persistent: Bool
        /// Runs its whole grid in one slice (a user kernel that reads `gl_NumWorkGroups`).
        var unsliced = false
        /// Names the work it does (see `add`): its cost is remembered under this key in its space.
        var costKey: Int?
        /// Measured time and groups, both decayed by 0.7 per slice: their ratio is the cost per group.
        var decayedNanos = 0.0
        var decayedGroups = 0.0
        var nanosPerGroup: Double? { decayedGroups > 0 ? decayedNanos / decayedGroups : nil }
        /// Size and duration of the last slice: a slice that ended well inside the quantum means
        /// the per-group estimate still carries fixed dispatch overhead, so the next one doubles.
        var lastCount: UInt32 = 0
        var lastNanos: UInt64 = 0
        var deviceNanos: UInt64 = 0
        var inFlight = 0
    }

    struct Space: Sendable {
        var priority: PriorityClass
        var virtualNanos: UInt64
        var arrival: UInt64
        /// Its threads in turn order.
        var turns = TurnList()
        var deviceNanos: UInt64 = 0
        /// Estimated cost of its slices in flight.
        var pendingNanos: UInt64 = 0
        /// The decayed cost sums of its threads' last slices, by `costKey` (at most
        /// `rememberedCosts` keys).
        var costs: [Int: (nanos: Double, groups: Double)] = [:]
        /// The key that orders spaces of a class.
        var key: (UInt64, UInt64) { (virtualNanos &+ pendingNanos, arrival) }
    }

    /// Cost keys remembered per space.
    static let rememberedCosts = 64
    public var quantumNanos: UInt64
    public var floorInterval: Int
    public let slicesPerThread: Int
    private(set) var threads: [ThreadID: Thread] = [:]
    private(set) var spaces: [SpaceID: Space] = [:]
    private var passedOver = PerClass<Int>(0)
    /// Per class, the highest value its minimum virtual time has had (it only moves forward).
    private var classFloor = PerClass<UInt64>(0)
    private var arrivals: UInt64 = 0

    public init(quantumNanos: UInt64 = 2_000_000, floorInterval: Int = 8, slicesPerThread: Int = 1) {
        self.quantumNanos = max(quantumNanos, 1)
        self.floorInterval = max(floorInterval, 1)
        self.slicesPerThread = max(slicesPerThread, 1)
    }

    public var isEmpty: Bool { threads.isEmpty }
    /// Address spaces with threads queued (runnable, in flight or waiting for `remove`).
    public private(set) var activeSpaces = 0
    public var threadCount: Int { threads.count }
    /// Whether the space has threads queued (runnable, in flight or waiting for `remove`).
    public func isActive(_ space: SpaceID) -> Bool { spaces[space].map { !$0.turns.isEmpty } ?? false }
    public func contains(_ id: ThreadID) -> Bool { threads[id] != nil }
    public func deviceNanos(of id: ThreadID) -> UInt64? { threads[id]?.deviceNanos }
    /// A queued thread's cost per workgroup as measured so far (its own slices, or its space's
    /// last thread of the same `costKey`); nil while unknown.
    public func nanosPerGroup(of id: ThreadID) -> Double? { threads[id]?.nanosPerGroup }
    public func deviceNanos(ofSpace id: SpaceID) -> UInt64? { spaces[id]?.deviceNanos }

    /// Queues a device thread of `groups` workgroups. A space's priority is that of its most
    /// recent thread (an address space is one entity, as in the DRM scheduler). An `unsliced`
    /// thread gets its whole remaining grid in one slice. `costKey` names the work (the caller
    /// says which threads do the same work): a one-group thread whose key its space ran before
    /// starts with that thread's measured cost (`nanosPerGroup(of:)`).
    public mutating func add(_ id: ThreadID, space: SpaceID, priority: PriorityClass, groups: UInt32, persistent: Bool,
                             unsliced: Bool = false, costKey: Int? = nil) {
        var thread = Thread(space: space, priority: priority, groupTotal: max(groups, 1), persistent: persistent,
                            unsliced: unsliced, costKey: costKey)
        // Dictionary positions, not keys, after the first look-up: every key look-up hashes
        // (SipHash), and a tiny `run` goes through this queue on the daemon's event loop.
        var si = spaces.index(forKey: space)
        if groups == 1, let costKey, let si, let cost = spaces.values[si].costs[costKey] {
            (thread.decayedNanos, thread.decayedGroups) = cost
        }
        precondition(threads.updateValue(thread, forKey: id) == nil, "thread \(id) queued twice")
        if let i = si {
            if spaces.values[i].priority != priority {
                // Changing class: its virtual time meant nothing in the new one (no credit, no debt).
                spaces.values[i].virtualNanos = minimumVirtualNanos(priority)
            } else if spaces.values[i].turns.isEmpty {
                // Waking up after idling: no credit for the idle time.
                spaces.values[i].virtualNanos = max(spaces.values[i].virtualNanos, minimumVirtualNanos(priority))
            }
            spaces.values[i].priority = priority
        } else {
            arrivals += 1
            spaces[space] = Space(priority: priority, virtualNanos: minimumVirtualNanos(priority), arrival: arrivals)
            si = spaces.index(forKey: space)
        }
        if spaces.values[si!].turns.isEmpty { activeSpaces += 1 }
        spaces.values[si!].turns.append(id)
    }

    /// Removes a thread (finished, killed or failed). Its slices in flight, if any, are the caller's
    /// to wait for and to account.
    @discardableResult
    public mutating func remove(_ id: ThreadID) -> Bool {
        guard let t = threads.removeValue(forKey: id) else { return false }
        if let si = spaces.index(forKey: t.space) {
            spaces.values[si].turns.remove(id)
            if spaces.values[si].turns.isEmpty { activeSpaces -= 1 }
        }
        return true
    }

    /// Removes every thread of an address space and forgets the space; returns the removed ids.
    public mutating func removeSpace(_ space: SpaceID) -> [ThreadID] {
        guard let removed = spaces.removeValue(forKey: space) else { return [] }
        if !removed.turns.isEmpty { activeSpaces -= 1 }
        let ids = removed.turns.all.sorted()
        for id in ids { threads[id] = nil }
        return ids
    }

    /// The least virtual time of the class's non-idle spaces, but never below what it has been.
    private func minimumVirtualNanos(_ priority: PriorityClass) -> UInt64 {
        var live: UInt64?
        for s in spaces.values where s.priority == priority && !s.turns.isEmpty {
            live = min(live ?? s.virtualNanos, s.virtualNanos)
        }
        return max(classFloor[priority], live ?? 0)
    }

    private func runnable(_ id: ThreadID) -> Bool {
        guard let t = threads[id] else { return false }
        return t.nextGroup < t.groupTotal && (t.inFlight == 0 || (t.inFlight < slicesPerThread && t.nanosPerGroup != nil))
    }

    private func runnable(_ space: Space) -> Bool {
        space.turns.first { runnable($0) } != nil
    }

    /// The next slice to run, or nil when nothing is runnable. The slice is in flight until
    /// `account`.
    public mutating func pick() -> Pick? {
        // One pass, keeping only ids and keys: a copy of a space held across the mutation below
        // would make that mutation copy the space's whole turn list.
        var best = PerClass<(id: SpaceID, key: (UInt64, UInt64))?>(nil)
        for (sid, space) in spaces where runnable(space) {
            if let b = best[space.priority], b.key <= space.key { continue }
            best[space.priority] = (sid, space.key)
        }
        guard let top = PriorityClass.ascending.last(where: { best[$0] != nil }) else { return nil }
        var chosen = top
        // The floor: the most-passed-over lower class that reached the interval runs now (a tie
        // goes to the higher class).
        for c in PriorityClass.ascending where c < top && best[c] != nil && passedOver[c] >= floorInterval
            && (chosen == top || passedOver[c] >= passedOver[chosen]) {
            chosen = c
        }
        for c in PriorityClass.ascending where c != chosen && best[c] != nil { passedOver[c] += 1 }
        passedOver[chosen] = 0

        let spaceID = best[chosen]!.id
        let si = spaces.index(forKey: spaceID)!
        let id = spaces.values[si].turns.first { runnable($0) }!
        // Round-robin: the chosen thread goes to the back of its space's turns.
        spaces.values[si].turns.moveToBack(id)

        let ti = threads.index(forKey: id)!
        var t = threads.values[ti]
        let remaining = t.groupTotal - t.nextGroup
        var count: UInt32 = t.unsliced ? remaining : 1
        if !t.unsliced, let cost = t.nanosPerGroup {
            var estimate = cost > 0 ? (Double(quantumNanos) / cost).rounded(.down) : 0
            // Grow fast while far below the quantum: ×4 under a quarter, ×2 under a half (a
            // linear cost grown ×4 from under Q/4 stays under Q).
            if t.lastNanos < quantumNanos / 4 {
                estimate = max(estimate, Double(t.lastCount) * 4)
            } else if t.lastNanos < quantumNanos / 2 {
                estimate = max(estimate, Double(t.lastCount) * 2)
            }
            count = UInt32(max(1, min(Double(remaining), estimate)))
        }
        let estimate = t.nanosPerGroup.map { UInt64(($0 * Double(count)).rounded()) } ?? quantumNanos
        let pick = Pick(thread: id, space: spaceID, groupBase: t.nextGroup, groupCount: count, round: t.round,
                        estimateNanos: estimate)
        t.inFlight += 1
        t.nextGroup += count
        if t.nextGroup >= t.groupTotal && t.persistent {
            t.nextGroup = 0
            t.round &+= 1
        }
        threads.values[ti] = t
        spaces.values[si].pendingNanos &+= estimate
        return pick
    }

    /// Records that `pick` ran for `nanos` and advances the thread. `heldNanos`: how long the
    /// slice kept the device from others, from its start (or the previous slice's end) to the
    /// moment its end was seen; the space's virtual time is charged the larger of the two, so a
    /// stream of tiny slices pays for the fixed cost of each dispatch and does not get hundreds of
    /// slices for each one of a neighbour's.
    @discardableResult
    public mutating func account(_ pick: Pick, nanos: UInt64, heldNanos: UInt64 = 0) -> Progress {
        if let si = spaces.index(forKey: pick.space) {
            spaces.values[si].pendingNanos -= min(spaces.values[si].pendingNanos, pick.estimateNanos)
            spaces.values[si].virtualNanos &+= max(nanos, heldNanos)
            spaces.values[si].deviceNanos &+= nanos
            let priority = spaces.values[si].priority
            classFloor[priority] = minimumVirtualNanos(priority)
        }
        guard let ti = threads.index(forKey: pick.thread) else { return .gridComplete }
        var t = threads.values[ti]
        t.inFlight -= 1
        t.deviceNanos &+= nanos
        // Decayed sums, not an average of per-slice ratios: a slice weighs by its groups, so the
        // probe's fixed dispatch cost (one group) stops inflating the estimate as soon as a bigger
        // slice is measured, and a kernel whose cost drifts is followed within a few slices.
        t.decayedNanos = 0.7 * t.decayedNanos + Double(nanos)
        t.decayedGroups = 0.7 * t.decayedGroups + Double(max(pick.groupCount, 1))
        t.lastCount = pick.groupCount
        t.lastNanos = nanos
        threads.values[ti] = t
        if t.groupTotal == 1, let key = t.costKey, let si = spaces.index(forKey: t.space) {
            // Bounded: a space that runs more kinds of work than this starts over.
            if spaces.values[si].costs.count >= Self.rememberedCosts, spaces.values[si].costs[key] == nil {
                spaces.values[si].costs.removeAll()
            }
            spaces.values[si].costs[key] = (t.decayedNanos, t.decayedGroups)
        }
        // The slice that ends the grid completes it (a persistent thread's next round was picked).
        return pick.groupBase + pick.groupCount >= t.groupTotal ? .gridComplete : .more
    }

    /// Verifies the internal invariants (tests call it after every mutation).
    public func checkInvariants() {
        precondition(activeSpaces == spaces.values.filter { !$0.turns.isEmpty }.count, "active spaces miscounted")
        for (id, t) in threads {
            precondition(spaces[t.space] != nil, "thread \(id) has no space")
            precondition(spaces[t.space]!.turns.contains(id), "thread \(id) not in its turns")
            precondition(t.nextGroup <= t.groupTotal, "thread \(id) past its grid")
            precondition(t.inFlight >= 0 && t.inFlight <= slicesPerThread, "thread \(id) has \(t.inFlight) slices in flight")
        }
        for (sid, s) in spaces {
            let all = s.turns.all
            precondition(all.count == s.turns.count && Set(all).count == all.count, "space \(sid)'s turns are not a list")
            for id in all { precondition(threads[id]?.space == sid, "space \(sid) lists a foreign or dead thread") }
            precondition(s.turns.isEmpty || s.virtualNanos >= classFloor[s.priority],
                         "space \(sid) is behind its class's minimum virtual time")
        }
    }
}

/// One value per priority class, stored inline (no hashing, no allocation: the run queue is on
/// the path of every tiny `run`).
struct PerClass<Value>: Sendable where Value: Sendable {
    private var values: InlineArray<3, Value>
    init(_ value: Value) { values = InlineArray(repeating: value) }
    subscript(c: PriorityClass) -> Value {
        get { values[Int(c.rawValue)] }
        set { values[Int(c.rawValue)] = newValue }
    }
}

extension PriorityClass {
    /// Every class, lowest first.
    static let ascending: [PriorityClass] = allCases.sorted()
}
