import ArgumentParser
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure: kill latency, fairness, slicing overhead, teardown, dispatch, throughput, latency under hostile load.",
        subcommands: [BenchAll.self, BenchTeardown.self, BenchDispatch.self, BenchThroughput.self, BenchKill.self, BenchFairness.self, BenchSlicing.self, BenchLoad.self])
}

/// `--daemon-arg`: flags passed on to a benchmark's private daemon, so that one binary compares a
/// daemon setting on and off.
struct DaemonArgOptions: ParsableArguments {
    @Option(name: .customLong("daemon-arg"), parsing: .unconditionalSingleValue,
            help: "One more argument for the private daemon, e.g. --daemon-arg --no-small-slices-on-worker (repeatable).")
    var daemonArgs: [String] = []
}

/// A daemon for a benchmark or scenario: the one at `--socket`, or a private one started for the
/// run (with the given policy) and stopped after it.
struct BenchDaemon {
    let path: String
    let owned: PrivateDaemon?

    init(socket: String?, backend: BackendChoice?, policy: LifetimePolicy = .exit, notifier: String? = nil, extra: [String] = []) throws {
        if let socket {
            path = SocketPath.resolve(socket)
            owned = nil
        } else {
            let d = try PrivateDaemon(backend: backend, policy: policy, extra: (notifier.map { ["--notifier", $0] } ?? []) + extra)
            owned = d
            path = d.socketPath
        }
    }

    func stop() { owned?.stop() }
}

struct KillReport: Codable {
    var backend: String
    var device: String
    var runs: Int
    var minMicros: Double
    var p50Micros: Double
    var p99Micros: Double
    var maxMicros: Double
    var samplesMicros: [Double]
}

struct BenchKill: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kill",
        abstract: "Start a spin thread meant to run 10 s, kill it mid-run, and time kill → thread reported dead.")

    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Use this daemon instead of a private one.") var socket: String?
    @Option(help: "Kills to time.") var runs = 50
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let daemon = try BenchDaemon(socket: socket, backend: backendOptions.backend)
        defer { daemon.stop() }
        let device = try Device(DeviceOptions(socketPath: daemon.path))
        var samples: [UInt64] = []
        let progress = Progress(total: runs, label: "kill")
        for i in 0..<runs {
            let t = try device.spawn(.spin, args: [BuiltinKernel.maxSpinIterations], groups: 64, persistentSeconds: 10)
            // Let it get going: kill it in the middle of a slice, not before its first one.
            var report = try device.status(t)
            let deadline = monotonicNanos() + 5_000_000_000
            while report.deviceNanos == 0 && monotonicNanos() < deadline {
                usleep(200)
                report = try device.status(t)
            }
            usleep(UInt32.random(in: 1000...3000))
            let start = monotonicNanos()
            _ = try device.kill(t)
            samples.append(monotonicNanos() - start)
            let end = try device.wait(t, timeoutSeconds: 10)
            guard end.state == .killed else { throw fail("thread ended \(end.state), not killed") }
            progress.update(i + 1)
        }
        let s = LatencySummary(nanos: samples)
        let hello = device.hello
        let report = KillReport(backend: hello.backend.rawValue, device: hello.deviceName, runs: runs, minMicros: s.minMicros,
                                p50Micros: s.p50Micros, p99Micros: s.p99Micros, maxMicros: s.maxMicros,
                                samplesMicros: samples.map { Double($0) / 1000 })
        device.close()
        if json { return try printJSON(report) }
        print("kill latency on \(hello.deviceName) (\(hello.backend.rawValue)), \(runs) runs, kill request → thread dead:")
        print(table(["runs"] + LatencySummary.header, [["\(runs)"] + s.row]))
    }
}

struct FairnessReport: Codable {
    struct Share: Codable {
        var pid: Int32
        var threads: Int
        var deviceMillis: Double
        var share: Double
    }
    var backend: String
    var seconds: Double
    var shares: [Share]
    var jain: Double
}

struct BenchFairness: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fairness",
        abstract: "Two processes, with 1 and 8 device threads of the same kernel, share the device for a fixed time.")

    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Use this daemon instead of a private one.") var socket: String?
    @Option(help: "How long both run.") var seconds: Double = 3
    @Option(help: "Threads of the two processes.") var threads: [Int] = [1, 8]
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let daemon = try BenchDaemon(socket: socket, backend: backendOptions.backend)
        defer { daemon.stop() }
        let control = try DaemonControl(socketPath: daemon.path)
        let backend = try control.ps().backend.rawValue
        var victims: [Victim] = []
        for n in threads {
            victims.append(try Victim.launch(VictimSpec(socketPath: daemon.path, privateMiB: 0, threads: n, deviceWork: true,
                                                        persistentSeconds: seconds + 30)))
        }
        for v in victims { try v.waitReady() }
        let before = try control.ps().spaces
        usleep(UInt32(seconds * 1e6))  // the measurement window
        let after = try control.ps().spaces
        for v in victims { v.killNow() }
        var shares: [FairnessReport.Share] = []
        for (v, n) in zip(victims, threads) {
            let b = before.first { $0.pid == v.pid }?.deviceNanos ?? 0
            let a = after.first { $0.pid == v.pid }?.deviceNanos ?? 0
            shares.append(.init(pid: v.pid, threads: n, deviceMillis: Double(a - b) / 1e6, share: 0))
        }
        let total = shares.reduce(0) { $0 + $1.deviceMillis }
        guard total > 0 else {
            // Device threads run in SCHED_IDLE: on a machine busy with other work they may get no
            // CPU at all, and a share of nothing is no measurement.
            throw fail("no device time was accounted in the \(seconds) s window (is the machine busy with other work?)")
        }
        for i in shares.indices { shares[i].share = shares[i].deviceMillis / total }
        let report = FairnessReport(backend: backend, seconds: seconds, shares: shares, jain: jain(shares.map(\.deviceMillis)))
        if json { return try printJSON(report) }
        print("fairness on \(backend) over \(seconds) s:")
        print(table(["pid", "threads", "device ms", "share"],
                    shares.map { ["\($0.pid)", "\($0.threads)", formatDouble($0.deviceMillis, 1), formatDouble($0.share * 100, 1) + " %"] }))
        print("Jain's fairness index: \(formatDouble(report.jain, 4)) (1 = perfectly fair)")
    }
}
