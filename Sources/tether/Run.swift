import ArgumentParser
import Foundation
import TetherCore
import TetherDevice
import TetherSys

/// What `tether run --json` prints.
struct RunReport: Codable {
    var workload: String
    var backend: String
    var device: String
    var size: Int
    var verified: Bool
    var detail: String
    var seconds: Double
    var gbps: Double?
    var gflops: Double?
    var state: String
    var path: String
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one sample workload, verify it against the CPU reference, and print time and throughput.",
        discussion: "Workloads: \(Workloads.names.joined(separator: ", ")).")

    @Argument(help: "The workload to run.") var workload: String
    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Problem size (elements, matrix order, image width, list nodes or spin iterations).") var size: Int?
    @Option(help: "spin only: run for this many seconds unless killed.") var seconds: Double = 1
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let choice: BackendChoice
        var w: any Workload
        do {
            choice = try BackendFactory.resolve(backendOptions.backend)
            w = try Workloads.make(workload, size: size)
        } catch let error as TetherError {
            throw fail(error.message)
        } catch {
            throw fail("\(error)")
        }
        guard seconds > 0, seconds <= 86_400 else { throw fail("--seconds must be in (0, 86400]") }
        let report: RunReport
        do {
            report = try runLocal(&w, choice: choice)
        } catch {
            throw fail(error.message)
        }
        if json {
            try printJSON(report)
        } else {
            print("\(report.workload) on \(report.device) (\(report.backend)), size \(report.size): "
                + "\(report.verified ? "verified" : "NOT VERIFIED") — \(report.detail)")
            var line = "  \(formatDouble(report.seconds * 1000, 3)) ms"
            if let g = report.gbps { line += ", \(formatDouble(g)) GB/s" }
            if let g = report.gflops { line += ", \(formatDouble(g)) GFLOP/s" }
            print(line)
        }
        if !report.verified { throw ExitCode(2) }
    }

    /// Runs in this process on a device opened here.
    func runLocal(_ w: inout any Workload, choice: BackendChoice) throws(TetherError) -> RunReport {
        let backend = try BackendFactory.open(choice)
        let device = LocalDevice(backend: backend)
        defer { device.close() }
        let region = try device.mirror(bytes: w.mirroredBytes)
        let launch = w.prepare(memory: region.localBase!)
        let persistent = w.kernel == .spin ? UInt64(seconds * 1e9) : 0
        let start = monotonicNanos()
        let outcome = try device.run(.builtin(w.kernel), launch: launch, persistentNanos: persistent)
        let elapsed = Double(monotonicNanos() - start) / 1e9
        if let error = outcome.error { throw error }
        return report(w, backend: backend.device, elapsed: elapsed, memory: region.localBase!,
                      state: outcome.state, path: "local")
    }

    func report(_ w: any Workload, backend: DeviceDescription, elapsed: Double, memory: UnsafeMutableRawPointer,
                state: ThreadState, path: String) -> RunReport {
        let verification = w.verify(memory: memory)
        let work = w.work
        return RunReport(workload: w.kernel.rawValue, backend: backend.backend.rawValue, device: backend.name,
                         size: w.size, verified: verification.ok, detail: verification.detail, seconds: elapsed,
                         gbps: work.computeBound ? nil : work.bytes / elapsed / 1e9,
                         gflops: work.computeBound || work.flops > 0 ? work.flops / elapsed / 1e9 : nil,
                         state: state.description, path: path)
    }
}
