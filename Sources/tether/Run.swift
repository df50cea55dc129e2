import ArgumentParser
import Foundation
import Tether
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
        abstract: "Run one sample workload, verified against its CPU reference, or your own compute shader (--spirv).",
        discussion: """
            Workloads: \(Workloads.names.joined(separator: ", ")).

            Your own shader: tether run --spirv FILE (.spv, or GLSL compiled with glslc) --buffer SET.BINDING=@FILE|zeros:BYTES … \
            [--push @FILE] [--spec ID=VALUE …] --groups X[,Y[,Z]] [--output SET.BINDING=FILE …]. Whether a binding is a \
            storage or uniform buffer comes from the module's reflection.
            """)

    @Argument(help: "The workload to run (omit with --spirv).") var workload: String?
    @OptionGroup var shader: ShaderOptions
    @OptionGroup var backendOptions: BackendOptions
    // `.unconditional`: `--size -1` is a value to refuse with a sentence, not a missing one.
    @Option(parsing: .unconditional, help: "Problem size (elements, matrix order, image width, list nodes or spin iterations).") var size: Int?
    @Option(parsing: .unconditional, help: "spin only: run for this many seconds unless killed.") var seconds: Double = 1

    func validate() throws {
        if let size, size < 1 { throw ValidationError("--size must be a positive whole number, not \(size)") }
    }
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "Open the device in this process instead of going through a daemon.") var local = false
    @OptionGroup var socket: SocketOption

    func run() throws {
        let choice: BackendChoice
        var w: any Workload
        if shader.spirv != nil {
            guard workload == nil, !local else { throw fail("--spirv runs your shader through a daemon: give no workload and no --local") }
            return try ShaderRun(options: shader, socketPath: socket.socket, backend: backendOptions.backend, json: json).run()
        }
        guard let workload else { throw fail("name a workload (\(Workloads.names.joined(separator: ", "))) or a shader with --spirv FILE") }
        do {
            choice = try BackendFactory.resolve(backendOptions.backend)
            w = try makeWorkload(workload, size: size)
        } catch {
            throw fail(error.message)
        }
        guard seconds > 0, seconds <= 86_400 else { throw fail("--seconds must be in (0, 86400]") }
        let report: RunReport
        do {
            report = local ? try runLocal(&w, choice: choice) : try runThroughDaemon(&w, choice: choice)
        } catch {
            throw fail(error.message)
        }
        if json {
            try printJSON(report)
        } else {
            print("\(report.workload) on \(report.device) (\(report.backend), \(report.path)), size \(report.size): "
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
        try requireFinished(outcome.state, outcome.error)
        return report(w, backend: backend.device.backend, device: backend.device.name, elapsed: elapsed, memory: region.localBase!,
                      state: outcome.state, path: "local")
    }

    /// Runs through the daemon at the socket path; when none answers, through a private daemon
    /// started for this run (with the requested backend) and stopped after.
    func runThroughDaemon(_ w: inout any Workload, choice: BackendChoice) throws(TetherError) -> RunReport {
        let (device, privateDaemon) = try openDevice(socketPath: socket.socket, backend: choice)
        defer {
            device.close()
            privateDaemon?.stop()
        }
        let memory = try device.mirror(bytes: w.mirroredBytes)
        let launch = w.prepare(memory: memory.base)
        let persistent = w.kernel == .spin ? seconds : 0
        let start = monotonicNanos()
        let thread = try device.spawn(launch, kernel: w.kernel, persistentSeconds: persistent)
        let outcome = try device.wait(thread, timeoutSeconds: max(600, seconds * 2))
        let elapsed = Double(monotonicNanos() - start) / 1e9
        try requireFinished(outcome.state, outcome.error)
        let hello = device.hello
        return report(w, backend: hello.backend, device: hello.deviceName, elapsed: elapsed, memory: memory.base, state: outcome.state,
                      path: privateDaemon == nil ? "daemon" : "private daemon")
    }

    /// A run counts only if its device thread finished: a fault or failure is its own error, a kill
    /// (`tether kill`, a stopping daemon) is one too.
    func requireFinished(_ state: ThreadState, _ error: TetherError?) throws(TetherError) {
        if let error { throw error }
        guard state == .finished else {
            throw TetherError(.killed, "the device thread was \(state) before it finished (tether kill, or its daemon stopped)")
        }
    }

    func report(_ w: any Workload, backend: BackendKind, device: String, elapsed: Double, memory: UnsafeMutableRawPointer,
                state: ThreadState, path: String) -> RunReport {
        let verification = w.verify(memory: memory)
        let work = w.work
        return RunReport(workload: w.kernel.rawValue, backend: backend.rawValue, device: device,
                         size: w.size, verified: verification.ok, detail: verification.detail, seconds: elapsed,
                         gbps: work.computeBound ? nil : work.bytes / elapsed / 1e9,
                         gflops: work.computeBound || work.flops > 0 ? work.flops / elapsed / 1e9 : nil,
                         state: state.description, path: path)
    }
}

/// A connection to the daemon at `socketPath`; when none answers — or, at the default socket,
/// the daemon there serves another backend than the one asked for — to a private daemon started
/// for this run (with `backend`), which the caller stops when done.
func openDevice(socketPath: String?, backend: BackendChoice) throws(TetherError) -> (Device, PrivateDaemon?) {
    var options = DeviceOptions(socketPath: socketPath, backend: backend)
    do {
        return (try Device(options), nil)
    } catch let error where error.code == .deviceLost || (error.code == .backendUnavailable && socketPath == nil) {
        let privateDaemon: PrivateDaemon
        do { privateDaemon = try PrivateDaemon(backend: backend, policy: .exit) } catch let e as TetherError { throw e } catch {
            throw TetherError(.deviceLost, "\(error)")
        }
        options.socketPath = privateDaemon.socketPath
        do { return (try Device(options), privateDaemon) } catch {
            privateDaemon.stop()
            throw error
        }
    }
}
