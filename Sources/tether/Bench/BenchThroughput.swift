import ArgumentParser
import Dispatch
import Foundation
import Glibc
import Tether
import TetherCore
import TetherDevice
import TetherSys

struct ThroughputRow: Codable {
    var workload: String
    var size: Int
    var unit: String
    var daemonSeconds: Double
    var directSeconds: Double
    var daemonRate: Double
    var directRate: Double
    /// daemon rate / direct rate.
    var ratio: Double
    var verified: Bool
}

struct ThroughputReport: Codable {
    var backend: String
    var device: String
    var runs: Int
    var rows: [ThroughputRow]
    /// STREAM-triad-style bandwidth of this machine, measured in the same run (GB/s).
    var triadGBps: Double
    /// Software saxpy through the daemon over the triad bandwidth (target ≥ 0.8); software only.
    var saxpyOverTriad: Double?
}

/// Medians of one workload's runs in one path.
struct PathTiming: Codable {
    var workload: String
    var seconds: Double
    var verified: Bool
}

struct BenchThroughput: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "throughput",
        abstract: "Each sample workload through the daemon vs the same kernel dispatched directly in-process; software vs STREAM triad.")

    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Runs per workload and path (medians are reported).") var runs = 3
    @Option(parsing: .upToNextOption, help: "Workloads to run.") var workloads: [String] = ["saxpy", "reduce", "matmul", "mandelbrot", "listwalk"]
    @Option(help: "Scale every default size by this factor (0.25 for a quick run).") var scale: Double = 1
    @Option(help: "Use this daemon instead of a private one.") var socket: String?
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "Internal: time the direct path in this process and print JSON.") var direct = false

    func size(_ name: String) -> Int? {
        guard scale != 1, let w = try? Workloads.make(name, size: nil) else { return nil }
        if name == "matmul" { return max(16, Int(Double(w.size) * scale.squareRoot()) / 16 * 16) }
        if name == "mandelbrot" { return max(16, Int(Double(w.size) * scale.squareRoot())) }
        return max(1, Int(Double(w.size) * scale))
    }

    func run() throws {
        if direct { return try printJSON(try runDirect()) }
        let daemon = try BenchDaemon(socket: socket, backend: backendOptions.backend)
        defer { daemon.stop() }
        let device = try Device(DeviceOptions(socketPath: daemon.path))
        var daemonTimings: [PathTiming] = []
        for name in workloads {
            var w = try makeWorkload(name, size: size(name))
            let memory = try device.mirror(bytes: w.mirroredBytes)
            // Like STREAM: prepare and verify once (that run also warms up), then time the kernel
            // repeated over the same memory.
            let launch = w.prepare(memory: memory.base)
            let first = try device.run(w.kernel, args: launch.args, groups: launch.groups)
            let ok = first.state == .finished && w.verify(memory: memory.base).ok
            var times: [Double] = []
            for _ in 0..<runs {
                let start = monotonicNanos()
                _ = try device.run(w.kernel, args: launch.args, groups: launch.groups)
                times.append(Double(monotonicNanos() - start) / 1e9)
            }
            daemonTimings.append(PathTiming(workload: name, seconds: median(times), verified: ok))
            try device.unmirror(memory)
        }
        let hello = device.hello
        device.close()
        let directTimings = try directInChild(backend: hello.backend)
        let triad = streamTriadGBps()
        var rows: [ThroughputRow] = []
        for (d, b) in zip(daemonTimings, directTimings) {
            let w = try makeWorkload(d.workload, size: size(d.workload))
            let work = w.work
            let amount = work.computeBound ? work.flops / 1e9 : work.bytes / 1e9
            rows.append(ThroughputRow(workload: d.workload, size: w.size, unit: work.computeBound ? "GFLOP/s" : "GB/s",
                                      daemonSeconds: d.seconds, directSeconds: b.seconds, daemonRate: amount / d.seconds,
                                      directRate: amount / b.seconds, ratio: b.seconds / d.seconds, verified: d.verified && b.verified))
        }
        let saxpy = rows.first { $0.workload == "saxpy" }
        let report = ThroughputReport(backend: hello.backend.rawValue, device: hello.deviceName, runs: runs, rows: rows, triadGBps: triad,
                                      saxpyOverTriad: hello.backend == .software ? saxpy.map { $0.daemonRate / triad } : nil)
        if json { return try printJSON(report) }
        print("throughput on \(report.device) (\(report.backend)), median of \(runs) runs:")
        print(table(["workload", "size", "unit", "daemon", "direct", "daemon/direct", "verified"], rows.map {
            [$0.workload, "\($0.size)", $0.unit, formatDouble($0.daemonRate), formatDouble($0.directRate), formatDouble($0.ratio, 3), $0.verified ? "yes" : "NO"]
        }))
        print("STREAM-triad bandwidth of this machine: \(formatDouble(triad)) GB/s")
        if let r = report.saxpyOverTriad { print("software saxpy / triad: \(formatDouble(r, 3))") }
    }

    func directInChild(backend: BackendKind) throws -> [PathTiming] {
        try runSelfJSON(["bench", "throughput", "--direct", "--backend", backend.rawValue, "--runs", "\(runs)",
                         "--scale", "\(scale)", "--workloads"] + workloads)
    }

    /// The same kernels through a device opened in this process (no daemon, no socket).
    func runDirect() throws -> [PathTiming] {
        let backend = try BackendFactory.open(try BackendFactory.resolve(backendOptions.backend))
        let device = LocalDevice(backend: backend)
        defer { device.close() }
        var out: [PathTiming] = []
        for name in workloads {
            var w = try makeWorkload(name, size: size(name))
            let region = try device.mirror(bytes: w.mirroredBytes)
            let launch = w.prepare(memory: region.localBase!)
            let first = try device.run(.builtin(w.kernel), launch: launch)
            let ok = first.state == .finished && w.verify(memory: region.localBase!).ok
            var times: [Double] = []
            for _ in 0..<runs {
                let start = monotonicNanos()
                _ = try device.run(.builtin(w.kernel), launch: launch)
                times.append(Double(monotonicNanos() - start) / 1e9)
            }
            out.append(PathTiming(workload: name, seconds: median(times), verified: ok))
        }
        return out
    }
}

/// a[i] = b[i] + s·c[i] over 3 × 64 MiB of floats on every core, best of 5 (GB/s, 12 bytes per
/// element as STREAM counts them). The bandwidth the software saxpy (same traffic) is held to.
func streamTriadGBps() -> Double {
    let n = 16 << 20
    let a = UnsafeMutablePointer<Float>.allocate(capacity: n), b = UnsafeMutablePointer<Float>.allocate(capacity: n),
        c = UnsafeMutablePointer<Float>.allocate(capacity: n)
    defer { a.deallocate(); b.deallocate(); c.deallocate() }
    a.initialize(repeating: 0, count: n)
    b.initialize(repeating: 1, count: n)
    c.initialize(repeating: 2, count: n)
    let threads = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    let chunk = (n + threads - 1) / threads
    nonisolated(unsafe) let (pa, pb, pc) = (a, b, c)
    var best = 0.0
    for _ in 0..<5 {
        let start = monotonicNanos()
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let lo = t * chunk, hi = min(n, lo + chunk)
            var i = lo
            while i < hi {
                pa[i] = pb[i] + 3 * pc[i]
                i += 1
            }
        }
        let seconds = Double(monotonicNanos() - start) / 1e9
        best = max(best, Double(n) * 12 / seconds / 1e9)
    }
    return best
}
