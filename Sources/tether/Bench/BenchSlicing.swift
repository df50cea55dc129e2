import ArgumentParser
import TetherCore
import TetherDevice
import TetherSys

struct SlicingReport: Codable {
    var backend: String
    var device: String
    var workload: String
    var size: Int
    var quantumMicros: UInt64
    var slicesInFlight: Int
    var runs: Int
    var unslicedMillis: [Double]
    var slicedMillis: [Double]
    /// Slices per sliced run.
    var slices: Double
    /// unsliced / sliced time of each pair of back-to-back runs.
    var pairRatios: [Double]
    /// Sliced over unsliced throughput, the median of the pairs: 1 = free, 0.95 = 5 % overhead.
    var throughputRatio: Double
    var overheadPercent: Double
}

struct BenchSlicing: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slicing",
        abstract: "The same long saxpy as one unsliced dispatch and as scheduler slices; prints the throughput ratio.",
        discussion: """
            Runs in this process (a direct device, no daemon): it isolates what slicing costs. The two \
            run back to back in pairs, in alternating order, and the ratio is the median over the pairs: \
            this machine's speed drifts by tens of percent over seconds, and a pair sees one speed.
            """)

    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "saxpy elements (default: 4 Mi on Vulkan, 32 Mi on the software backend — ~100 ms and ~20 ms here).")
    var size: Int?
    @Option(help: "Pairs of runs (default: 21 on Vulkan, 41 on the software backend, whose short runs vary more).")
    var runs: Int?
    @Option(name: .customLong("quantum-us"), help: "Slice quantum.") var quantumMicros: UInt64 = 2000
    @Option(help: "Slices on the device at once, 1 or 2 (default: 1 on a Vulkan CPU driver, else 2).")
    var slicesInFlight: Int?
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        do {
            let report = try measure()
            if json { return try printJSON(report) }
            print("slicing overhead: saxpy of \(report.size) elements on \(report.device) (\(report.backend)), "
                + "quantum \(quantumMicros) µs, \(report.slicesInFlight) slice(s) in flight, \(report.runs) pairs")
            print(table(["", "median ms", "slices"], [
                ["unsliced (one dispatch)", formatDouble(median(report.unslicedMillis), 2), "1"],
                ["sliced (scheduler)", formatDouble(median(report.slicedMillis), 2), formatDouble(report.slices, 0)],
            ]))
            let r = report.pairRatios.sorted()
            print("throughput ratio sliced/unsliced, median of pairs: \(formatDouble(report.throughputRatio, 3)) "
                + "(overhead \(formatDouble(report.overheadPercent, 1)) %; pairs ranged \(formatDouble(r.first!, 3))–\(formatDouble(r.last!, 3)))")
        } catch let error as TetherError {
            throw fail(error.message)
        }
    }

    func measure() throws(TetherError) -> SlicingReport {
        let backend = try BackendFactory.open(try BackendFactory.resolve(backendOptions.backend))
        let software = backend.device.backend == .software
        let size = self.size ?? (software ? 32 << 20 : 4 << 20)
        let runs = self.runs ?? (software ? 41 : 21)
        let device = LocalDevice(backend: backend, quantumNanos: quantumMicros * 1000, slicesInFlight: slicesInFlight)
        defer { device.close() }
        var w = try makeWorkload("saxpy", size: size)
        let region = try device.mirror(bytes: w.mirroredBytes)
        let launch = w.prepare(memory: region.localBase!)
        let direct = try backend.makeContext(program: .builtin(.saxpy))
        let whole = SliceLaunch(args: launch.args, regions: [region.entry], groupBase: 0, groupCount: launch.groups,
                                groupTotal: launch.groups)
        func unsliced() throws(TetherError) -> Double {
            let t = monotonicNanos()
            try direct.runSlice(whole)
            return Double(monotonicNanos() - t) / 1e6
        }
        func sliced() throws(TetherError) -> Double {
            let t = monotonicNanos()
            let outcome = try device.run(.builtin(.saxpy), launch: launch)
            if let e = outcome.error { throw e }
            return Double(monotonicNanos() - t) / 1e6
        }
        // Warm-up: pipeline creation and first-touch costs stay out of both.
        _ = try unsliced()
        _ = try sliced()
        let slicesBefore = device.scheduler.slicesRun
        var unslicedMillis: [Double] = [], slicedMillis: [Double] = [], ratios: [Double] = []
        for i in 0..<runs {
            var u = 0.0, s = 0.0
            if i % 2 == 0 {
                u = try unsliced()
                s = try sliced()
            } else {
                s = try sliced()
                u = try unsliced()
            }
            unslicedMillis.append(u)
            slicedMillis.append(s)
            ratios.append(u / s)
        }
        let ratio = median(ratios)
        return SlicingReport(backend: backend.device.backend.rawValue, device: backend.device.name, workload: "saxpy", size: size,
                             quantumMicros: quantumMicros, slicesInFlight: device.scheduler.slicesInFlight, runs: runs,
                             unslicedMillis: unslicedMillis, slicedMillis: slicedMillis,
                             slices: Double(device.scheduler.slicesRun - slicesBefore) / Double(runs),
                             pairRatios: ratios, throughputRatio: ratio, overheadPercent: (1 - ratio) * 100)
    }
}
