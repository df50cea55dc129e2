import TetherCore
import TetherDevice

/// The caps one address space, one connection and one user (uid) live under, so that a flooding
/// or careless client ends with a `resourceExhausted` sentence naming the cap and its flag
/// instead of taking the daemon's memory, fds or event loop from everyone else.
///
/// Defaults are far above what a workstation's real use reaches and well below what would hurt
/// the daemon (the sources of the numbers are next to each); `tether daemon --max-…` changes them.
public struct DaemonLimits: Sendable, Equatable {
    /// Device threads not yet reaped (queued, running, or ended but not joined). A thread costs
    /// the daemon ~1 KiB plus its device context; 262,144 of them is ~0.3 GiB.
    public var threadsPerSpace: UInt64 = 262_144
    public var threadsPerUser: UInt64 = 1_048_576
    /// Mirrored regions: each is a mapping and, on Vulkan, an import (drivers allow ~4 billion
    /// allocations, but every one is a VMA in the daemon: `vm.max_map_count` is 65,530 by default).
    public var regionsPerSpace: UInt64 = 16_384
    public var regionsPerUser: UInt64 = 32_768
    /// Mirrored bytes: pages the owner allocated (they are charged to it, see docs/lifetime.md),
    /// mapped by the daemon; bounded by the daemon's address space (128 TiB).
    public var mirroredBytesPerSpace: UInt64 = 16 << 40
    public var mirroredBytesPerUser: UInt64 = 32 << 40
    /// Open connections of one uid (each is an fd in the daemon).
    public var connectionsPerUser: UInt64 = 4_096
    /// Device threads of one address space queued and not yet started, while other spaces have
    /// work on the device too. Not a refusal: at the limit the daemon stops reading the space's
    /// connections until the scheduler starts one (`QueuedThreads`), so a client spawning faster
    /// than its share of the device waits in its own calls instead of costing the others the
    /// control plane's time (measured: a ring spawn flood took a neighbour's saxpy from 0.3 ms
    /// to 2–7 ms without it). 256 is a submission ring's worth of spawns four times over.
    public var queuedThreadsPerSpace: UInt64 = 256
    /// Joins and runs of one connection waiting for their thread.
    public var pendingJoinsPerConnection: UInt64 = 262_144
    /// `awaitTeardown` waiters: per connection, and per uid over all its connections.
    public var waitersPerConnection: UInt64 = 1_024
    public var waitersPerUser: UInt64 = 16_384
    /// Loaded user modules per address space (each up to `Wire.maxSpirvWords` words and a pipeline).
    public var modulesPerSpace: UInt64 = 64
    /// Requests read from one connection per second, in bursts of up to `requestBurst`
    /// (`RequestBudget`): a client may pipeline a burst (a thousand joins, say) at once. A round
    /// trip over the socket takes 25–35 µs on the VMs here and
    /// `tether bench dispatch` makes ~5,000 a second: 20,000 leaves a fast client room while
    /// keeping what one flooding connection can make the daemon do to a fraction of a core.
    public var requestsPerSecond: UInt64 = 20_000
    public var requestBurst: UInt64 = 1_024
    /// The same while the connection is not alone (a request of another address space, or of a
    /// connection without one, was read within `Daemon.sharedWindowNanos`, or threads of more than
    /// one space are on the device): fair admission. The client library's own calls travel over
    /// the ring (its budget is below), so this only slows a socket that floods. Measured (`tether
    /// bench load --floods spawns`, software, 2 cores, builds alternated): a neighbour's tiny
    /// dispatch 1.0–11× its time alone beside a spawn flood read at 20,000 a second, 0.62–1.22×
    /// at 5,000 while shared.
    public var sharedRequestsPerSecond: UInt64 = 5_000
    /// The same for the submission ring, which exists for streams of tiny threads (~200,000 a
    /// second from one client on the software backend here) and costs the daemon no system call
    /// per request; its burst is the socket's × 4.
    public var ringRequestsPerSecond: UInt64 = 400_000
    /// The ring's rate while the connection is not alone (as `sharedRequestsPerSecond`): four
    /// clients streaming tiny threads side by side make 127–230 k spawns a second together here,
    /// so 100,000 each leaves them room, while a refusal (64 tokens) then costs a flooding ring
    /// 0.64 ms of its budget instead of 0.16.
    public var sharedRingRequestsPerSecond: UInt64 = 100_000
    /// New connections of one uid served per second, in bursts of up to `newConnectionBurst`: a
    /// connection beyond them is accepted but not read until its turn, so a client that connects
    /// in a loop waits in its own `connect`-then-call instead of costing the daemon an accept and a
    /// round trip each time (the per-connection request budget starts full, so without this a
    /// flood of fresh connections would escape it). Opening a connection and asking one thing
    /// takes ~100 µs here: 1,000 a second is far above any tool's or library's use.
    public var newConnectionsPerSecond: UInt64 = 1_000
    public static let newConnectionBurst: UInt64 = 128

    public init() {}

    var connections: Limit { Limit(connectionsPerUser, "connections per user", flag: "--max-connections-per-user") }
    var pendingJoins: Limit { Limit(pendingJoinsPerConnection, "pending joins per connection", flag: "--max-pending-joins-per-connection") }
    var waitersOfConnection: Limit { Limit(waitersPerConnection, "teardown waiters per connection", flag: "--max-waiters-per-connection") }
    var waitersOfUser: Limit { Limit(waitersPerUser, "teardown waiters per user", flag: "--max-waiters-per-user") }

    /// The caps the registry checks itself (under its lock, as it adds).
    var quota: RegistryQuota {
        RegistryQuota(
            threadsPerSpace: Limit(threadsPerSpace, "device threads per address space", flag: "--max-threads-per-space"),
            threadsPerUser: Limit(threadsPerUser, "device threads per user", flag: "--max-threads-per-user"),
            regionsPerSpace: Limit(regionsPerSpace, "regions per address space", flag: "--max-regions-per-space"),
            regionsPerUser: Limit(regionsPerUser, "regions per user", flag: "--max-regions-per-user"),
            bytesPerSpace: Limit(mirroredBytesPerSpace, "mirrored bytes per address space", flag: "--max-mirrored-mib-per-space"),
            bytesPerUser: Limit(mirroredBytesPerUser, "mirrored bytes per user", flag: "--max-mirrored-mib-per-user"),
            modulesPerSpace: Limit(modulesPerSpace, "modules per address space", flag: "--max-modules-per-space"))
    }
}

extension AddressSpace {
    /// Whether the space has as many device threads queued (not started) as it may while it
    /// shares the device: its connections are then not read until the scheduler starts one
    /// (`QueuedThreads`). Alone on the device, a space may queue up to its thread limit.
    func hasQueuedEnough(_ limits: DaemonLimits, on scheduler: Scheduler) -> Bool {
        UInt64(queued.value) >= limits.queuedThreadsPerSpace && scheduler.isShared
    }
}
