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
    /// daemon p50 / direct p50 (target ≤ 1.3 on Vulkan).
    var ratio: Double
    /// The same round trip for a user kernel (descriptor bindings, push constants), Vulkan only.
    var userKernel: LatencySummary?
    /// user kernel p50 / built-in p50, both through the daemon in this run.
    var userOverBuiltin: Double?
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
    @Flag(help: "Internal: measure the direct baseline in this process and print its samples.") var direct = false
    @Flag(help: "Print only the round trips through the daemon, in ns, one per line (tools/bench-languages compares them with C and Python).")
    var samples = false

    func run() throws {
        if direct { return try runDirect() }
        let daemon = try BenchDaemon(socket: socket, backend: backendOptions.backend)
        defer { daemon.stop() }
        let device = try Device(DeviceOptions(socketPath: daemon.path))
        var samples: [UInt64] = []
        for i in 0..<(runs + 20) {
            let start = monotonicNanos()
            let r = try device.run(.spin, args: [1], groups: 1, timeoutSeconds: 10)
            let took = monotonicNanos() - start
            guard r.state == .finished else { throw fail("tiny thread ended \(r.state)") }
            if i >= 20 { samples.append(took) }  // the first ones create pipelines and contexts
        }
        if self.samples { return print(samples.map(String.init).joined(separator: "\n")) }
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
        let report = DispatchReport(backend: hello.backend.rawValue, device: hello.deviceName, runs: runs, daemon: d, direct: b,
                                    ping: LatencySummary(nanos: pings),
                                    daemonP50Micros: d.p50Micros, directP50Micros: b.p50Micros, ratio: d.p50Micros / b.p50Micros,
                                    userKernel: user, userOverBuiltin: user.map { $0.p50Micros / d.p50Micros })
        if json { return try printJSON(report) }
        print("dispatch round trip of a tiny device thread on \(hello.deviceName) (\(hello.backend.rawValue)), \(runs) runs:")
        print(table(["path", "n"] + LatencySummary.header, [["through the daemon (run = spawn+join)", "\(d.count)"] + d.row,
                                                             ["direct, in-process (submit → wait)", "\(b.count)"] + b.row,
                                                             ["ping (socket round trip only)", "\(pings.count)"] + report.ping.row]
                    + (user.map { [["user kernel through the daemon (run)", "\($0.count)"] + $0.row] } ?? [])))
        print("ratio daemon/direct (p50): \(formatDouble(report.ratio, 2))")
        if let r = report.userOverBuiltin { print("ratio user kernel/built-in through the daemon (p50): \(formatDouble(r, 2))") }
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
