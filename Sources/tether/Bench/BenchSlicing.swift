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
    var runs: Int
    var unslicedMillis: [Double]
    var slicedMillis: [Double]
    var slices: Double
    /// Sliced throughput over unsliced throughput (medians): 1 = free, 0.95 = 5 % overhead.
    var throughputRatio: Double
    var overheadPercent: Double
}

struct BenchSlicing: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slicing",
        abstract: "The same long saxpy as one unsliced dispatch and as scheduler slices; prints the throughput ratio.",
        discussion: "Runs in this process (a direct device, no daemon): it isolates what slicing costs.")

    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "saxpy elements.") var size = 4_194_304
    @Option(help: "Alternating runs of each.") var runs = 5
    @Option(name: .customLong("quantum-us"), help: "Slice quantum.") var quantumMicros: UInt64 = 2000
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        do {
            let report = try measure()
            if json { return try printJSON(report) }
            print("slicing overhead: saxpy of \(size) elements on \(report.device) (\(report.backend)), quantum \(quantumMicros) µs, \(runs) runs each")
            print(table(["", "median ms", "slices"], [
                ["unsliced (one dispatch)", formatDouble(median(report.unslicedMillis), 2), "1"],
                ["sliced (scheduler)", formatDouble(median(report.slicedMillis), 2), formatDouble(report.slices, 0)],
            ]))
            print("throughput ratio sliced/unsliced: \(formatDouble(report.throughputRatio, 3)) (overhead \(formatDouble(report.overheadPercent, 1)) %)")
        } catch let error as TetherError {
            throw fail(error.message)
        }
    }

    func measure() throws(TetherError) -> SlicingReport {
        let backend = try BackendFactory.open(try BackendFactory.resolve(backendOptions.backend))
        let device = LocalDevice(backend: backend, quantumNanos: quantumMicros * 1000)
        defer { device.close() }
        var w = try makeWorkload("saxpy", size: size)
        let region = try device.mirror(bytes: w.mirroredBytes)
        let launch = w.prepare(memory: region.localBase!)
        let direct = try backend.makeContext(program: .builtin(.saxpy))
        var unsliced: [Double] = []
        var sliced: [Double] = []
        // Warm-up: pipeline creation and first-touch costs stay out of both.
        try direct.runSlice(args: launch.args, regions: [region.entry], groupBase: 0, groupCount: launch.groups,
                            groupTotal: launch.groups, round: 0)
        _ = try device.run(.builtin(.saxpy), launch: launch)
        for _ in 0..<runs {
            var t = monotonicNanos()
            try direct.runSlice(args: launch.args, regions: [region.entry], groupBase: 0, groupCount: launch.groups,
                                groupTotal: launch.groups, round: 0)
            unsliced.append(Double(monotonicNanos() - t) / 1e6)
            t = monotonicNanos()
            let outcome = try device.run(.builtin(.saxpy), launch: launch)
            sliced.append(Double(monotonicNanos() - t) / 1e6)
            if let e = outcome.error { throw e }
        }
        let ratio = median(unsliced) / median(sliced)
        let slices = Double(device.scheduler.slicesRun) / Double(runs + 1)
        return SlicingReport(backend: backend.device.backend.rawValue, device: backend.device.name, workload: "saxpy", size: size,
                             quantumMicros: quantumMicros, runs: runs, unslicedMillis: unsliced, slicedMillis: sliced,
                             slices: slices, throughputRatio: ratio, overheadPercent: (1 - ratio) * 100)
    }
}
