import Synchronization
import TetherCore
import TetherSys

/// The region table of one address space, as its device threads see it at each slice.
public final class RegionTable: Sendable {
    private let entries = Mutex<[RegionTableEntry]>([])
    public init() {}
    public var snapshot: [RegionTableEntry] { entries.withLock { $0 } }
    public func set(_ new: [RegionTableEntry]) { entries.withLock { $0 = new } }
}

/// How many of one address space's device threads are queued and have not started yet (read
/// without a lock). The daemon stops reading a space's requests while this is at its limit
/// (`--max-queued-threads-per-space`): a client that spawns faster than the scheduler gives it the
/// device then waits in its own calls, at the rate its fair share of the device allows, instead of
/// making the daemon admit (and spend its control plane on) work it will not run soon.
public final class QueuedThreads: Sendable {
    private let count = Atomic<Int>(0)
    public init() {}
    public var value: Int { count.load(ordering: .relaxed) }
    func add(_ n: Int) { count.add(n, ordering: .relaxed) }
}

/// How a device thread ended.
public struct ThreadOutcome: Sendable, Equatable {
    public var state: ThreadState
    public var error: TetherError?
    public var deviceNanos: UInt64
}

/// A kernel + arguments + grid, owned by one address space, run in slices by the `Scheduler`.
///
/// Mutable fields are protected by the scheduler's monitor; completion callbacks run outside it.
public final class DeviceThread: @unchecked Sendable {
    public let id: ThreadID
    public let space: SpaceID
    public let program: KernelProgram
    public let args: [UInt64]
    public let groups: UInt32
    /// Persistent threads repeat their grid until this much time has passed (0: run it once).
    public let persistentNanos: UInt64
    public let priority: PriorityClass
    let context: any ThreadContext
    let regions: RegionTable
    let queued: QueuedThreads

    // Protected by the scheduler's monitor.
    public internal(set) var state: ThreadState = .queued
    public internal(set) var deviceNanos: UInt64 = 0
    var firstStartNanos: UInt64 = 0
    /// Counted in `queued` (from submission to its first slice, or its end without one).
    var countedQueued = false
    var slicesInFlight = 0
    var killRequested = false
    /// How it ends once its slices in flight are done.
    var ending: (ThreadState, TetherError?)?
    var outcome: ThreadOutcome?
    var waiters: [@Sendable (ThreadOutcome) -> Void] = []
    /// Its known-tiny slices run on the scheduler's worker even while nobody waits for it
    /// (`Scheduler.start`), instead of being handed to the device's threads. The daemon sets it
    /// for a thread spawned while another client uses the device: a flood of tiny spawns beside
    /// that client then wakes the worker once per spawn, instead of waking the device's threads
    /// and the worker again for each one's end — a worker in the real-time class that the kernel
    /// kept on the client's CPU and that preempted it ~20,000 times a second (measured, `tether
    /// bench load --floods spawns`, software, 2 cores: the neighbour's dispatch 4–8× its time
    /// alone in a third to half of the rounds without, never past 1.73× in 24 rounds with). Not
    /// for a client alone: one streaming spawns keeps the device's threads busy in parallel with
    /// its submissions (~160 k spawns/s, against ~35 k with every slice on the worker). At most
    /// 5 % of the worker's time (`TinySliceBudget`); past that they go to the device's threads.
    /// Set before the thread is submitted.
    public var tinySlicesOnWorker = false

    public init(id: ThreadID, space: SpaceID, program: KernelProgram, args: [UInt64], groups: UInt32,
                persistentNanos: UInt64 = 0, priority: PriorityClass = .normal,
                context: any ThreadContext, regions: RegionTable, queued: QueuedThreads = QueuedThreads()) {
        self.id = id
        self.space = space
        self.program = program
        self.args = args
        self.groups = groups
        self.persistentNanos = persistentNanos
        self.priority = priority
        self.context = context
        self.regions = regions
        self.queued = queued
    }
}

extension DeviceThread {
    /// Whether what its groups cost follows from the kernel and its arguments alone: every
    /// built-in but `listwalk`, which follows lists in the client's memory (the client can make
    /// the same arguments cost up to the loop cap per group by rewriting them).
    var costIsInArguments: Bool {
        guard case .builtin(let kernel) = program else { return false }
        return kernel != .listwalk
    }

    /// No longer counted as queued: it started, or ended without starting (lock held).
    func leaveQueued() {
        guard countedQueued else { return }
        countedQueued = false
        queued.add(-1)
    }

    /// Names the work this thread does: the same built-in kernel with the same arguments over the
    /// same grid does the same work, so a one-group thread of work its space ran before starts
    /// with that work's measured cost known (`RunQueue.add`). The grid is part of the name because
    /// a measured cost is an average over the groups run, and groups differ (a grid past the data
    /// has groups that return at once: a million of them would make one real group look free).
    /// Nil for user kernels, whose cost depends on bindings and constants too.
    var costKey: Int? {
        guard case .builtin(let kernel) = program else { return nil }
        var hasher = Hasher()
        hasher.combine(kernel)
        hasher.combine(args)
        hasher.combine(groups)
        return hasher.finalize()
    }
}
