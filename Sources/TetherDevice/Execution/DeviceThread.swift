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

    // Protected by the scheduler's monitor.
    public internal(set) var state: ThreadState = .queued
    public internal(set) var deviceNanos: UInt64 = 0
    var firstStartNanos: UInt64 = 0
    var slicesInFlight = 0
    var killRequested = false
    /// How it ends once its slices in flight are done.
    var ending: (ThreadState, TetherError?)?
    var outcome: ThreadOutcome?
    var waiters: [@Sendable (ThreadOutcome) -> Void] = []

    public init(id: ThreadID, space: SpaceID, program: KernelProgram, args: [UInt64], groups: UInt32,
                persistentNanos: UInt64 = 0, priority: PriorityClass = .normal,
                context: any ThreadContext, regions: RegionTable) {
        self.id = id
        self.space = space
        self.program = program
        self.args = args
        self.groups = groups
        self.persistentNanos = persistentNanos
        self.priority = priority
        self.context = context
        self.regions = regions
    }
}
