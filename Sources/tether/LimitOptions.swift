import ArgumentParser
import TetherDaemon

/// `tether daemon --max-…`: the caps of `DaemonLimits` (its doc comments give the defaults'
/// reasons).
struct LimitOptions: ParsableArguments {
    private static let d = DaemonLimits()

    @Option(help: "Device threads not yet joined, per address space.") var maxThreadsPerSpace = d.threadsPerSpace
    @Option(help: "Device threads not yet joined, per user.") var maxThreadsPerUser = d.threadsPerUser
    @Option(help: "Device threads queued and not yet started, per address space, while other spaces have work on the device (beyond it, all of the space's requests wait to be read).")
    var maxQueuedThreadsPerSpace = d.queuedThreadsPerSpace
    @Option(help: "Mirrored regions per address space.") var maxRegionsPerSpace = d.regionsPerSpace
    @Option(help: "Mirrored regions per user.") var maxRegionsPerUser = d.regionsPerUser
    @Option(help: "Mirrored MiB per address space.") var maxMirroredMibPerSpace = d.mirroredBytesPerSpace >> 20
    @Option(help: "Mirrored MiB per user.") var maxMirroredMibPerUser = d.mirroredBytesPerUser >> 20
    @Option(help: "Open connections per user.") var maxConnectionsPerUser = d.connectionsPerUser
    @Option(help: "Joins and runs waiting for their thread, per connection.") var maxPendingJoinsPerConnection = d.pendingJoinsPerConnection
    @Option(help: "Teardown waiters (awaitTeardown) per connection.") var maxWaitersPerConnection = d.waitersPerConnection
    @Option(help: "Teardown waiters per user.") var maxWaitersPerUser = d.waitersPerUser
    @Option(help: "Loaded user modules per address space.") var maxModulesPerSpace = d.modulesPerSpace
    @Option(help: "Requests read from one connection per second (beyond a burst, the rest wait in its socket).")
    var maxRequestsPerSecond = d.requestsPerSecond
    @Option(help: "Requests read from one connection per second while the daemon is shared: another address space or tool connection made a request within 10 ms, or more than one space has threads on the device (fair admission).")
    var maxSharedRequestsPerSecond = d.sharedRequestsPerSecond
    @Option(help: "Requests one connection may send at once before its per-second budget applies.")
    var maxRequestBurst = d.requestBurst
    @Option(help: "Requests read from one connection's submission ring per second.")
    var maxRingRequestsPerSecond = d.ringRequestsPerSecond
    @Option(help: "Requests read from one connection's submission ring per second while the daemon is shared: another address space or tool connection made a request within 10 ms, or more than one space has threads on the device (fair admission).")
    var maxSharedRingRequestsPerSecond = d.sharedRingRequestsPerSecond
    @Option(help: "New connections served per user per second (beyond a burst of 128, a new connection waits to be read).")
    var maxNewConnectionsPerSecond = d.newConnectionsPerSecond

    func validate() throws {
        let all: [(String, UInt64)] = [
            ("--max-threads-per-space", maxThreadsPerSpace), ("--max-threads-per-user", maxThreadsPerUser),
            ("--max-queued-threads-per-space", maxQueuedThreadsPerSpace), ("--max-regions-per-space", maxRegionsPerSpace), ("--max-regions-per-user", maxRegionsPerUser),
            ("--max-mirrored-mib-per-space", maxMirroredMibPerSpace), ("--max-mirrored-mib-per-user", maxMirroredMibPerUser),
            ("--max-connections-per-user", maxConnectionsPerUser),
            ("--max-pending-joins-per-connection", maxPendingJoinsPerConnection),
            ("--max-waiters-per-connection", maxWaitersPerConnection), ("--max-waiters-per-user", maxWaitersPerUser),
            ("--max-modules-per-space", maxModulesPerSpace),
            ("--max-requests-per-second", maxRequestsPerSecond), ("--max-request-burst", maxRequestBurst),
            ("--max-shared-requests-per-second", maxSharedRequestsPerSecond),
            ("--max-ring-requests-per-second", maxRingRequestsPerSecond),
            ("--max-shared-ring-requests-per-second", maxSharedRingRequestsPerSecond),
            ("--max-new-connections-per-second", maxNewConnectionsPerSecond),
        ]
        for (flag, value) in all where value < 1 { throw ValidationError("\(flag) must be at least 1") }
        for (flag, value) in all where value > 1 << 40 { throw ValidationError("\(flag) must be at most 2^40") }
    }

    var daemonLimits: DaemonLimits {
        var l = DaemonLimits()
        l.threadsPerSpace = maxThreadsPerSpace
        l.threadsPerUser = maxThreadsPerUser
        l.queuedThreadsPerSpace = maxQueuedThreadsPerSpace
        l.regionsPerSpace = maxRegionsPerSpace
        l.regionsPerUser = maxRegionsPerUser
        l.mirroredBytesPerSpace = maxMirroredMibPerSpace << 20
        l.mirroredBytesPerUser = maxMirroredMibPerUser << 20
        l.connectionsPerUser = maxConnectionsPerUser
        l.pendingJoinsPerConnection = maxPendingJoinsPerConnection
        l.waitersPerConnection = maxWaitersPerConnection
        l.waitersPerUser = maxWaitersPerUser
        l.modulesPerSpace = maxModulesPerSpace
        l.requestsPerSecond = maxRequestsPerSecond
        l.requestBurst = maxRequestBurst
        l.sharedRequestsPerSecond = maxSharedRequestsPerSecond
        l.ringRequestsPerSecond = maxRingRequestsPerSecond
        l.sharedRingRequestsPerSecond = maxSharedRingRequestsPerSecond
        l.newConnectionsPerSecond = maxNewConnectionsPerSecond
        return l
    }
}
