import ArgumentParser
import CTetherLinux
import Glibc
import Tether
import TetherCore
import TetherSys

struct Scenario: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay a lifetime scenario with real processes.",
        subcommands: [ForkExit.self])
}

/// What `tether scenario fork-exit --json` prints.
struct ForkExitReport: Codable {
    var policy: String
    var backend: String
    var closeOnFork: Bool
    var ownerPid: Int32
    var childPid: Int32
    /// B still runs once A's teardown had its chance.
    var childAlive: Bool
    /// A's device threads and regions still in the registry at that point.
    var ownerThreadsAfter: Int
    var ownerRegionsAfter: Int
    var ownerMirroredBytesAfter: UInt64
    /// Measured from the kill of A (null where no teardown happened while B lived).
    var noticeMicros: Double?
    var quiescedMicros: Double?
    var releasedMicros: Double?
    var teardownReason: String?
    /// How long A's device work and memory lived on after A was killed (until B exited and the
    /// daemon released them) — the cost of the fd-lifetime policy.
    var livedOnMicros: Double?
}

struct ForkExit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fork-exit",
        abstract: "The seed's scenario: A mirrors memory and runs a device thread, forks B (which keeps the device fd), and is SIGKILLed.",
        discussion: """
        A runs with closeOnFork off unless --close-on-fork is given, so the inherited fd really survives in B. \
        Under --policy exit, A's device work dies with A; under release it lives while B holds the fd.
        """)

    @Option(help: "Lifetime policy of the private daemon (ignored with --socket).") var policy: PolicyName = .exit
    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Use this running daemon instead of starting a private one.") var socket: String?
    @Flag(help: "Run A with the closeOnFork workaround on.") var closeOnFork = false
    @Option(help: "Mirrored memory of A in MiB.") var mib = 64
    @Option(help: "How long B lives on after A's death before it exits, in seconds (release policy shows this).")
    var childSeconds: Double = 1
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        do {
            let report = try runScenario()
            if json { return try printJSON(report) }
            print(describe(report))
        } catch let error as TetherError {
            throw fail(error.message)
        }
    }

    func runScenario() throws -> ForkExitReport {
        _ = tether_set_child_subreaper()  // B becomes our child when A dies, so we can reap it
        let daemon = try BenchDaemon(socket: socket, backend: backendOptions.backend, policy: policy.policy)
        defer { daemon.stop() }
        let path = daemon.path
        let control = try DaemonControl(socketPath: path)
        let table = try control.ps()
        let effectivePolicy = socket == nil ? policy.policy : table.policy

        let victim = try Victim.launch(VictimSpec(socketPath: path, privateMiB: 0, threads: 1, deviceWork: true,
                                                  mirroredMiB: mib, forkHolder: true, closeOnFork: closeOnFork))
        try victim.waitReady()
        victim.killNow()
        let killed = victim.exitNanos
        // Give the teardown its chance: under exit it happens at A's death; under release it must
        // not happen while B lives, so wait the same bound and then look.
        let wait = effectivePolicy == .exit ? 5 : max(childSeconds, 0.1) / 2
        let first = try control.awaitTeardown(pid: victim.pid, timeoutSeconds: wait)
        let after = try control.ps().spaces.filter { $0.pid == victim.pid }
        let childAlive = victim.holderAlive
        var report = ForkExitReport(
            policy: effectivePolicy.description, backend: table.backend.rawValue, closeOnFork: closeOnFork,
            ownerPid: victim.pid, childPid: victim.holderPid, childAlive: childAlive,
            ownerThreadsAfter: after.reduce(0) { $0 + $1.threads.count },
            ownerRegionsAfter: after.reduce(0) { $0 + Int($1.regions) },
            ownerMirroredBytesAfter: after.reduce(0) { $0 + $1.mirroredBytes })
        if let t = first.last {
            report.noticeMicros = micros(t.noticeNanos, since: killed)
            report.quiescedMicros = micros(t.quiescedNanos, since: killed)
            report.releasedMicros = micros(t.releasedNanos, since: killed)
            report.teardownReason = t.reason
        }
        // Let B go; whatever A left behind must be released with B's last fd copy.
        if childSeconds > 0 { usleep(UInt32(min(childSeconds, 60) * 1e6)) }
        victim.releaseHolder()
        if first.isEmpty {
            let later = try control.awaitTeardown(pid: victim.pid, timeoutSeconds: 10)
            if let t = later.last { report.livedOnMicros = micros(t.releasedNanos, since: killed) }
        }
        return report
    }

    func micros(_ t: UInt64, since: UInt64) -> Double { Double(Int64(bitPattern: t &- since)) / 1000 }

    func describe(_ r: ForkExitReport) -> String {
        func us(_ v: Double?) -> String { v.map { formatDouble($0, 1) + " µs" } ?? "—" }
        var lines = [
            "fork-exit under policy \(r.policy) on \(r.backend), closeOnFork \(r.closeOnFork ? "on" : "off")",
            "  A (pid \(r.ownerPid)) mirrored \(mib) MiB, ran a spin device thread, forked B (pid \(r.childPid)), was SIGKILLed",
            "  timeline from the kill: notice \(us(r.noticeMicros)), quiesced \(us(r.quiescedMicros)), released \(us(r.releasedMicros))\(r.teardownReason.map { " (\($0))" } ?? "")",
            "  after: B \(r.childAlive ? "alive" : "gone"); A's device threads left: \(r.ownerThreadsAfter), regions left: \(r.ownerRegionsAfter) (\(bytes(r.ownerMirroredBytesAfter)))",
        ]
        if let lived = r.livedOnMicros {
            lines.append("  A's device work and memory lived on \(formatDouble(lived / 1000, 1)) ms after A died, until B exited")
        }
        return lines.joined(separator: "\n")
    }
}
