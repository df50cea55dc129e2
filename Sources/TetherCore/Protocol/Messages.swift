/// The Tether wire protocol, version 1.
///
/// One message per `SOCK_SEQPACKET` packet: a 16-byte header (magic `TTHR`, version, op, request
/// id) and an op-specific body. Replies echo the request id with the reply bit set in the op;
/// a failed request gets an `error` reply (code + sentence). Messages are bounded by
/// `Wire.maxMessageBytes`; fds (memfds for `mirror`) travel with `SCM_RIGHTS`. The daemon learns
/// who sent each message from the kernel (`SCM_CREDENTIALS`), never from the body.
public enum Wire {
    public static let magic: UInt32 = 0x5254_4854  // "THTR" little-endian → bytes T H T R
    public static let version: UInt16 = 1
    public static let headerBytes = 16
    /// Large enough for a custom SPIR-V kernel of ~190 KiB; the socket buffers hold it.
    public static let maxMessageBytes = 196_608
    public static let maxStringBytes = 4096
    public static let maxSpirvWords = (maxMessageBytes - 256) / 4
    /// The longest entry point name a module may ask for (what SPIR-V reflection keeps).
    public static let maxEntryPointBytes = 63
    public static let replyBit: UInt16 = 0x8000
}

public enum Op: UInt16, Sendable, CaseIterable {
    // Owner requests: the first one binds the connection to the sender's address space.
    case hello = 1, mirror = 2, unmirror = 3, spawn = 4, join = 5, kill = 6, status = 7, run = 8
    case loadModule = 9, unloadModule = 10
    /// User-mode submission queues (`RingLayout`): attach a connection's rings, ring its doorbell.
    case attachRings = 11, ringDoorbell = 12
    // Tool requests: allowed on any connection, they bind nothing.
    case ps = 20, killProcess = 21, killThread = 22, timelines = 23, ping = 24, awaitTeardown = 25
    case psPage = 26, timelinesPage = 27
    case error = 0x7FFF
}

/// What a client asks.
public enum Request: Sendable, Equatable {
    /// Binds the connection: policy override (nil: daemon default), backend it expects (auto: any).
    case hello(policy: LifetimePolicy?, backend: BackendChoice)
    /// The memfd travels as the message's one fd; `ownerBase` is where the owner mapped it.
    case mirror(ownerBase: UInt64, size: UInt64)
    case unmirror(RegionID)
    /// A user's SPIR-V compute module: validated and reflected once, then spawned many times.
    /// Answered with `module`. An empty `entryPoint` picks the module's one compute entry point.
    case loadModule(words: [UInt32], entryPoint: String)
    case unloadModule(ModuleID)
    /// The connection's submission and completion rings (`RingLayout`): the memfd that holds them
    /// and the eventfd the daemon signals for a sleeping consumer travel as the message's two fds.
    /// Answered with `done`, over the socket; every later reply to the owner comes in the
    /// completion ring.
    case attachRings(sqEntries: UInt32, cqEntries: UInt32)
    /// The client published submissions while the daemon slept (its need-wakeup flag was set), or
    /// made room in a completion ring the daemon had found full. Never answered.
    case ringDoorbell
    case spawn(SpawnRequest)
    /// Spawn and join in one round trip: answered with `joined` when the thread ends.
    case run(SpawnRequest)
    /// Answered when the thread ends (the reply may come much later).
    case join(ThreadID)
    case kill(ThreadID)
    case status(ThreadID)
    case ps
    case killProcess(pid: Int32)
    case killThread(ThreadID)
    /// Teardown timelines recorded by the daemon, for one pid (0: all).
    case timelines(pid: Int32)
    case ping
    /// Answered with the timelines of `pid` once its address space has been released (at once if
    /// it already was), or with an empty list when `timeoutMillis` passes first.
    case awaitTeardown(pid: Int32, timeoutMillis: UInt32)
    /// One page of `ps`, from a cursor (0, 0: the start; else the `next` of the previous page).
    case psPage(afterSpace: UInt64, afterThread: UInt64)
    /// One page of `timelines`, from a cursor (0: the oldest kept; else the previous page's `next`).
    case timelinesPage(pid: Int32, after: UInt64)

    public var op: Op {
        switch self {
        case .hello: .hello
        case .mirror: .mirror
        case .unmirror: .unmirror
        case .loadModule: .loadModule
        case .unloadModule: .unloadModule
        case .attachRings: .attachRings
        case .ringDoorbell: .ringDoorbell
        case .spawn: .spawn
        case .run: .run
        case .join: .join
        case .kill: .kill
        case .status: .status
        case .ps: .ps
        case .killProcess: .killProcess
        case .killThread: .killThread
        case .timelines: .timelines
        case .ping: .ping
        case .awaitTeardown: .awaitTeardown
        case .psPage: .psPage
        case .timelinesPage: .timelinesPage
        }
    }

    /// Requests that act on behalf of an address space (and so bind the connection).
    public var isOwnerRequest: Bool { op.rawValue < Op.ps.rawValue }
}

public struct SpawnRequest: Sendable, Equatable {
    public enum Program: Sendable, Equatable {
        case builtin(BuiltinKernel)
        /// SPIR-V with Tether's pointer ABI (`KernelABI` push constants): raw device addresses,
        /// so only from the daemon's own uid when it runs with `--allow-raw-pointers`.
        case spirv(words: [UInt32], invocationsPerGroup: UInt32)
        /// A loaded user module with descriptor bindings (`groups` is then the grid's total).
        case module(ModuleLaunch)
    }
    public var program: Program
    public var args: [UInt64]
    public var groups: UInt32
    /// Persistent threads repeat their grid for this long (0: run it once).
    public var persistentNanos: UInt64
    public var priority: PriorityClass

    public init(program: Program, args: [UInt64], groups: UInt32, persistentNanos: UInt64 = 0, priority: PriorityClass = .normal) {
        self.program = program
        self.args = args
        self.groups = groups
        self.persistentNanos = persistentNanos
        self.priority = priority
    }
}

/// What the daemon answers.
public enum Reply: Sendable, Equatable {
    case hello(HelloReply)
    case mirrored(RegionID)
    case module(ModuleID, ModuleDescription)
    case done
    case spawned(ThreadID)
    case joined(ThreadReport)
    case killed(wasAlive: Bool)
    case status(ThreadReport)
    case ps(ProcessTable)
    case killedProcess(threads: UInt32)
    case timelines([TeardownTimeline])
    /// A page of the process table and the cursor of the next one (nil: the last page). A space
    /// cut by a page's end comes again, with its remaining threads, at the top of the next.
    case psPage(ProcessTable, next: PsCursor?)
    /// A page of timelines and the cursor of the next one (nil: the last page).
    case timelinesPage([TeardownTimeline], next: UInt64?)
    case pong
    case error(TetherError)
}

public struct HelloReply: Sendable, Equatable, Codable {
    public var space: SpaceID
    public var pid: Int32
    public var policy: LifetimePolicy
    public var backend: BackendKind
    public var deviceName: String
    public init(space: SpaceID, pid: Int32, policy: LifetimePolicy, backend: BackendKind, deviceName: String) {
        self.space = space
        self.pid = pid
        self.policy = policy
        self.backend = backend
        self.deviceName = deviceName
    }
}

public struct ThreadReport: Sendable, Equatable, Codable {
    public var thread: ThreadID
    public var kernel: String
    public var state: ThreadState
    public var deviceNanos: UInt64
    public var priority: PriorityClass
    /// Why it failed or faulted (nil otherwise).
    public var error: TetherError?
    public init(thread: ThreadID, kernel: String, state: ThreadState, deviceNanos: UInt64, priority: PriorityClass, error: TetherError? = nil) {
        self.thread = thread
        self.kernel = kernel
        self.state = state
        self.deviceNanos = deviceNanos
        self.priority = priority
        self.error = error
    }
}

public struct SpaceReport: Sendable, Equatable, Codable {
    public var space: SpaceID
    public var pid: Int32
    public var uid: UInt32
    public var policy: LifetimePolicy
    public var ownerAlive: Bool
    public var connections: UInt32
    public var regions: UInt32
    public var mirroredBytes: UInt64
    public var deviceNanos: UInt64
    public var threads: [ThreadReport]
    public init(space: SpaceID, pid: Int32, uid: UInt32, policy: LifetimePolicy, ownerAlive: Bool, connections: UInt32,
                regions: UInt32, mirroredBytes: UInt64, deviceNanos: UInt64, threads: [ThreadReport]) {
        self.space = space
        self.pid = pid
        self.uid = uid
        self.policy = policy
        self.ownerAlive = ownerAlive
        self.connections = connections
        self.regions = regions
        self.mirroredBytes = mirroredBytes
        self.deviceNanos = deviceNanos
        self.threads = threads
    }
}

/// Where the next page of `ps` starts: after `thread` in space `space`.
public struct PsCursor: Sendable, Equatable {
    public var space: UInt64
    public var thread: UInt64
    public init(space: UInt64, thread: UInt64) {
        self.space = space
        self.thread = thread
    }
}

public struct ProcessTable: Sendable, Equatable, Codable {
    public var backend: BackendKind
    public var deviceName: String
    public var policy: LifetimePolicy
    public var spaces: [SpaceReport]
    public init(backend: BackendKind, deviceName: String, policy: LifetimePolicy, spaces: [SpaceReport]) {
        self.backend = backend
        self.deviceName = deviceName
        self.policy = policy
        self.spaces = spaces
    }
}

/// When an address space was torn down, and how long each step took (CLOCK_MONOTONIC ns).
public struct TeardownTimeline: Sendable, Equatable, Codable {
    public var space: SpaceID
    public var pid: Int32
    /// `ownerExit` (pidfd readable), `release` (last connection closed), `kill` (tether kill),
    /// or `shutdown`.
    public var reason: String
    public var noticeNanos: UInt64
    public var quiescedNanos: UInt64
    public var releasedNanos: UInt64
    public var threadsKilled: UInt32
    public var regionsFreed: UInt32
    public var bytesFreed: UInt64
    public init(space: SpaceID, pid: Int32, reason: String, noticeNanos: UInt64, quiescedNanos: UInt64,
                releasedNanos: UInt64, threadsKilled: UInt32, regionsFreed: UInt32, bytesFreed: UInt64) {
        self.space = space
        self.pid = pid
        self.reason = reason
        self.noticeNanos = noticeNanos
        self.quiescedNanos = quiescedNanos
        self.releasedNanos = releasedNanos
        self.threadsKilled = threadsKilled
        self.regionsFreed = regionsFreed
        self.bytesFreed = bytesFreed
    }
}

extension TetherError: Codable {
    enum CodingKeys: String, CodingKey { case code, message }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let name = try c.decode(String.self, forKey: .code)
        let code = (1...UInt16(32)).map(Code.init(rawValue:)).first { $0.description == name } ?? .deviceError
        self.init(code, try c.decode(String.self, forKey: .message))
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(code.description, forKey: .code)
        try c.encode(message, forKey: .message)
    }
}
