import ArgumentParser
import Foundation
import Tether
import TetherCore
import TetherDevice
import TetherSys

struct DispatchReport: Codable {
    var backend: String
    var device: String
    var runs: Int
    var daemon: LatencySummary
    var direct: LatencySummary
    /// A ping round trip to the daemon: the socket and thread hand-offs alone, no device work.
    var ping: LatencySummary
    var daemonP50Micros: Double
    var directP50Micros: Double
    /// The library's default path (the rings) p50 / direct p50 (target ≤ 1.1).
    var ratio: Double
    /// The same round trip over the submission rings (the default) and over the socket
    /// (`DeviceOptions.rings = false`), measured in interleaved rounds in this run.
    var ring: LatencySummary
    var socket: LatencySummary
    var ringRatio: Double
    var socketRatio: Double
    /// Tiny threads spawned per second (spawns only, joined afterwards) from one client and from
    /// four clients (four connections, one thread each), over the rings.
    var streamOneClientPerSecond: Double
    var streamFourClientsPerSecond: Double
    /// Two clients side by side: the device time a neighbour's long-running thread gets per wall
    /// second while this client is idle, and while it runs round trips over each path (its
    /// polling must not take device time from others).
    var neighbourDeviceShare: NeighbourShare?
    /// The daemon's CPU time per wall second over an idle period with rings attached (0: no polling when idle).
    var idleDaemonCPU: Double?
    /// The same round trip for a user kernel (descriptor bindings, push constants), Vulkan only.
    var userKernel: LatencySummary?
    /// user kernel p50 / built-in p50, both through the daemon in this run.
    var userOverBuiltin: Double?
}

struct NeighbourShare: Codable {
    var idle: Double
    var ring: Double
    var socket: Double
}

/// A tiny user kernel in the style of real compute shaders (a storage buffer, a push constant),
/// compiled with glslc for `bench dispatch`.
let benchUserKernelGLSL = """
    #version 450
    layout(local_size_x = 64) in;
    layout(set = 0, binding = 0) buffer Data { uint v[]; };
    layout(push_constant) uniform Push { uint add; } push;
    void main() { v[gl_GlobalInvocationID.x] += push.add; }
    """

struct BenchDispatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dispatch",
        abstract: "Round trip of a tiny device thread (spawn → join) through the daemon vs a direct in-process dispatch.",
        discussion: "The direct baseline runs in a child process that never forks (`tether bench dispatch --direct`).")

    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Round trips to time.") var runs = 300
    @Option(help: "Use this daemon instead of a private one.") var socket: String?
    @Flag(help: "Print one JSON object.") var json = false
    @Option(name: .customLong("ring-spin-us"), help: "How long a caller polls the completion ring before it sleeps (DeviceOptions.ringSpinMicroseconds).")
    var ringSpinMicros: Double = DeviceOptions().ringSpinMicroseconds
    @Option(name: .customLong("daemon-ring-poll-us"), help: "The private daemon's --ring-poll-us (default: the daemon's).")
    var daemonRingPollMicros: UInt64?
    @OptionGroup var daemonArgOptions: DaemonArgOptions
    @Flag(help: "Internal: measure the direct baseline in this process and print its samples.") var direct = false
    @Flag(help: "Print only the round trips through the daemon, in ns, one per line (tools/bench-languages compares them with C and Python).")
    var samples = false

    func run() throws {
        if direct { return try runDirect() }
        let daemon = try BenchDaemon(socket: socket, backend: backendOptions.backend,
                                     extra: (daemonRingPollMicros.map { ["--ring-poll-us", "\($0)"] } ?? []) + daemonArgOptions.daemonArgs)
        defer { daemon.stop() }
        let device = try Device(DeviceOptions(socketPath: daemon.path, ringSpinMicroseconds: ringSpinMicros))
        let socketDevice = try Device(DeviceOptions(socketPath: daemon.path, rings: false))
        guard device.usesRings else { throw fail("the daemon at \(daemon.path) did not take the submission rings") }
        // Paired rounds: ring and socket alternate, so that a burst of other load on this shared
        // machine hits both paths alike.
        var ringSamples: [UInt64] = [], socketSamples: [UInt64] = []
        let rounds = 10
        for round in 0..<rounds {
            let n = runs / rounds + (round < runs % rounds ? 1 : 0)
            ringSamples += try roundTrips(device, n, warmup: round == 0 ? 20 : 2)
            if !self.samples { socketSamples += try roundTrips(socketDevice, n, warmup: round == 0 ? 20 : 2) }
        }
        let samples = ringSamples
        if self.samples { return print(samples.map(String.init).joined(separator: "\n")) }
        socketDevice.close()
        let streamOne = try stream(clients: 1, path: daemon.path)
        let streamFour = try stream(clients: 4, path: daemon.path)
        let idleCPU = daemon.owned.map { idleCPUShare(pid: $0.process.processIdentifier) }
        let neighbour = try sideBySide(device, path: daemon.path)
        let control = try DaemonControl(socketPath: daemon.path)
        var pings: [UInt64] = []
        for _ in 0..<runs {
            let start = monotonicNanos()
            try control.ping()
            pings.append(monotonicNanos() - start)
        }
        let hello = device.hello
        let user = hello.backend == .vulkan ? try measureUserKernel(device) : nil
        device.close()
        let directSamples = try measureDirectInChild(backend: hello.backend)
        let d = LatencySummary(nanos: samples), b = LatencySummary(nanos: directSamples)
        let s = LatencySummary(nanos: socketSamples)
        let report = DispatchReport(backend: hello.backend.rawValue, device: hello.deviceName, runs: runs, daemon: d, direct: b,
                                    ping: LatencySummary(nanos: pings),
                                    daemonP50Micros: d.p50Micros, directP50Micros: b.p50Micros, ratio: d.p50Micros / b.p50Micros,
                                    ring: d, socket: s, ringRatio: d.p50Micros / b.p50Micros, socketRatio: s.p50Micros / b.p50Micros,
                                    streamOneClientPerSecond: streamOne, streamFourClientsPerSecond: streamFour,
                                    neighbourDeviceShare: neighbour, idleDaemonCPU: idleCPU,
                                    userKernel: user, userOverBuiltin: user.map { $0.p50Micros / d.p50Micros })
        if json { return try printJSON(report) }
        print("dispatch round trip of a tiny device thread on \(hello.deviceName) (\(hello.backend.rawValue)), \(runs) runs:")
        print(table(["path", "n"] + LatencySummary.header, [["through the daemon, rings (run = spawn+join)", "\(d.count)"] + d.row,
                                                             ["through the daemon, socket (run)", "\(s.count)"] + s.row,
                                                             ["direct, in-process (submit → wait)", "\(b.count)"] + b.row,
                                                             ["ping (socket round trip only)", "\(pings.count)"] + report.ping.row]
                    + (user.map { [["user kernel through the daemon (run)", "\($0.count)"] + $0.row] } ?? [])))
        print("ratio daemon/direct (p50): rings \(formatDouble(report.ringRatio, 2)), socket \(formatDouble(report.socketRatio, 2))")
        print("stream of tiny threads over the rings: \(Int(streamOne)) spawns/s from one client, \(Int(streamFour)) spawns/s from four")
        print("a neighbour's device time per second beside this client: idle \(formatDouble(neighbour.idle * 100, 1)) %, ring round trips \(formatDouble(neighbour.ring * 100, 1)) %, socket round trips \(formatDouble(neighbour.socket * 100, 1)) %")
        if let idleCPU { print("idle daemon CPU with rings attached: \(formatDouble(idleCPU * 100, 2)) % of one CPU") }
        if let r = report.userOverBuiltin { print("ratio user kernel/built-in through the daemon (p50): \(formatDouble(r, 2))") }
    }

    /// `n` timed `run` round trips of a tiny spin thread, after `warmup` untimed ones (the first
    /// ones create pipelines and contexts).
    func roundTrips(_ device: Device, _ n: Int, warmup: Int) throws -> [UInt64] {
        var samples: [UInt64] = []
        for i in 0..<(n + warmup) {
            let start = monotonicNanos()
            let r = try device.run(.spin, args: [1], groups: 1, timeoutSeconds: 10)
            let took = monotonicNanos() - start
            guard r.state == .finished else { throw fail("tiny thread ended \(r.state)") }
            if i >= warmup { samples.append(took) }
        }
        return samples
    }

    /// Spawns per second: each of `clients` connections (one thread each) spawns `runs` × 10
    /// tiny threads back to back (their joins come after the clock stops), at most 50,000, best
    /// of 3. At most 50,000: the connections share this process's address space, whose threads
    /// (unjoined ones included) the daemon caps at `--max-threads-per-space`, 262,144 by
    /// default; and tenths of a second of spawns give the rate already.
    func stream(clients: Int, path: String) throws -> Double {
        let devices = try (0..<clients).map { _ in try Device(DeviceOptions(socketPath: path, ringSpinMicroseconds: ringSpinMicros)) }
        defer { devices.forEach { $0.close() } }
        let perClient = min(max(100, runs * 10), 50_000)
        var best = 0.0
        for _ in 0..<3 {
            let handles = Locked<[[DeviceThreadHandle]]>(Array(repeating: [], count: clients))
            let failures = Locked<[TetherError]>([])
            let start = monotonicNanos()
            let threads = (0..<clients).map { c in
                startJoinableThread {
                    var mine: [DeviceThreadHandle] = []
                    mine.reserveCapacity(perClient)
                    for _ in 0..<perClient {
                        do throws(TetherError) {
                            mine.append(try devices[c].spawn(.spin, args: [1], groups: 1))
                        } catch {
                            failures.withLock { $0.append(error) }
                            return
                        }
                    }
                    handles.withLock { $0[c] = mine }
                }
            }
            for t in threads { pthread_join(t, nil) }
            let seconds = Double(monotonicNanos() - start) / 1e9
            if let failure = failures.withLock({ $0.first }) { throw fail("a spawn of the stream failed: \(failure.message)") }
            for (c, list) in handles.withLock({ $0 }).enumerated() {
                for t in list { _ = try devices[c].wait(t, timeoutSeconds: 60) }
            }
            best = max(best, Double(clients * perClient) / seconds)
        }
        return best
    }

    /// A second client (its own address space) runs a persistent kernel; its device time per wall
    /// second is read over windows in which this client is idle, or runs round trips over the
    /// rings or the socket (interleaved, 3 windows each, medians). A window's round trips are
    /// `3 × runs`, 200 to 1,200 (the default `--runs 400`'s): beside a neighbour that keeps the
    /// device busy one can take milliseconds, and `--runs 20000` would make this part run for
    /// many minutes.
    func sideBySide(_ device: Device, path: String) throws -> NeighbourShare {
        let neighbour = try Device(DeviceOptions(socketPath: path))
        defer { neighbour.close() }
        let socketDevice = try Device(DeviceOptions(socketPath: path, rings: false))
        defer { socketDevice.close() }
        let t = try neighbour.spawn(.spin, args: [BuiltinKernel.maxSpinIterations], groups: 64, persistentSeconds: 600)
        defer { _ = try? neighbour.kill(t) }
        func window(_ body: () throws -> Void) throws -> Double {
            let before = try neighbour.status(t).deviceNanos, start = monotonicNanos()
            try body()
            let after = try neighbour.status(t).deviceNanos
            return Double(after - before) / Double(monotonicNanos() - start)
        }
        var idle: [Double] = [], ring: [Double] = [], socket: [Double] = []
        for _ in 0..<3 {
            idle.append(try window { usleep(300_000) })
            let count = min(max(200, 3 * runs), 1_200)
            ring.append(try window { _ = try roundTrips(device, count, warmup: 0) })
            socket.append(try window { _ = try roundTrips(socketDevice, count, warmup: 0) })
        }
        func median(_ a: [Double]) -> Double { a.sorted()[a.count / 2] }
        return NeighbourShare(idle: median(idle), ring: median(ring), socket: median(socket))
    }

    /// The daemon's user + system CPU over one idle second (after the polling window), per second.
    func idleCPUShare(pid: pid_t) -> Double {
        func ticks() -> Int {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return 0 }
            let f = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            return (Int(f[11]) ?? 0) + (Int(f[12]) ?? 0)
        }
        usleep(100_000)
        let before = ticks(), start = monotonicNanos()
        usleep(1_000_000)
        let used = Double(ticks() - before) / Double(sysconf(Int32(_SC_CLK_TCK)))
        return used / (Double(monotonicNanos() - start) / 1e9)
    }

    /// `run` round trips of a one-group user kernel (a storage buffer and a push constant).
    func measureUserKernel(_ device: Device) throws -> LatencySummary {
        let source = FileManager.default.temporaryDirectory.appendingPathComponent("tether-bench-\(getpid()).comp").path
        try benchUserKernelGLSL.write(toFile: source, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: source) }
        let words: [UInt32]
        do { words = try ShaderRun.compile(glsl: source) } catch { throw fail(error.message) }
        let module = try device.loadModule(spirv: words)
        let memory = try device.mirror(bytes: 4096)
        let bindings = [BufferBinding(set: 0, binding: 0, memory: memory, bytes: 256)]
        var samples: [UInt64] = []
        for i in 0..<(runs + 20) {
            let start = monotonicNanos()
            let r = try device.run(module, bindings: bindings, pushConstants: pushConstantBytes(of: UInt32(1)), grid: Grid(1),
                                   timeoutSeconds: 10)
            let took = monotonicNanos() - start
            guard r.state == .finished else { throw fail("tiny user kernel ended \(r.state)") }
            if i >= 20 { samples.append(took) }
        }
        return LatencySummary(nanos: samples)
    }

    /// Runs `tether bench dispatch --direct` as a child process and reads its samples.
    func measureDirectInChild(backend: BackendKind) throws -> [UInt64] {
        let data = try runSelf(["bench", "dispatch", "--direct", "--backend", backend.rawValue, "--runs", "\(runs)"])
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { UInt64($0) }
    }

    /// The baseline: one context, a 1-group dispatch submitted and waited for, in this process.
    func runDirect() throws {
        let backend = try BackendFactory.open(try BackendFactory.resolve(backendOptions.backend))
        let context = try backend.makeContext(program: .builtin(.spin))
        var lines: [String] = []
        for i in 0..<(runs + 20) {
            let start = monotonicNanos()
            try context.runSlice(SliceLaunch(args: [1], regions: [], groupBase: 0, groupCount: 1, groupTotal: 1))
            let took = monotonicNanos() - start
            if i >= 20 { lines.append(String(took)) }
        }
        print(lines.joined(separator: "\n"))
    }
}
