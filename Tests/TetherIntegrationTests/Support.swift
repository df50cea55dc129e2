import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import Testing

/// The `tether` binary built next to these tests (`TETHER_BIN` overrides).
func tetherBinary() -> String {
    if let bin = ProcessInfo.processInfo.environment["TETHER_BIN"] { return bin }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    for config in ["debug", "release"] {
        let path = root.appendingPathComponent(".build/\(config)/tether").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return root.appendingPathComponent(".build/debug/tether").path
}

/// How a run of the `tether` binary ended.
struct TetherRun {
    var status: Int32
    var stdout: String
    /// Everything it wrote with `keepStderr`, else only the last 2,000 characters (for failures).
    var stderr: String
}

/// Runs the `tether` binary with `args` (and `extra` added to the environment) to its end.
/// Standard error goes to a file, never a pipe: a benchmark's progress output could fill a pipe
/// while standard output is being read.
func runTether(_ args: [String], environment extra: [String: String] = [:], keepStderr: Bool = false,
               launcher: [String] = []) throws -> TetherRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: launcher.first ?? tetherBinary())
    process.arguments = launcher.isEmpty ? args : Array(launcher.dropFirst()) + [tetherBinary()] + args
    if !extra.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 } }
    let out = Pipe()
    let errPath = FileManager.default.temporaryDirectory.appendingPathComponent("tether-stderr-\(UUID().uuidString)").path
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: errPath) }
    process.standardOutput = out
    process.standardError = FileHandle(forWritingAtPath: errPath)
    try process.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let e = (try? Data(contentsOf: URL(fileURLWithPath: errPath))) ?? Data()
    // Without keepStderr only its end is kept, for a failure's message.
    let text = String(decoding: e, as: UTF8.self)
    return TetherRun(status: process.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                     stderr: keepStderr ? text : String(text.suffix(2000)))
}

/// A real `tether daemon` process on a private socket, stopped (SIGTERM) at the end of the test.
final class TestDaemon {
    let socketPath: String
    let process = Process()
    let stderrPipe = Pipe()

    /// `launcher`: a command that runs the daemon (e.g. `setpriv` with capabilities dropped).
    /// `socketPath`: a given path (a restart on the same socket), else a fresh one.
    init(policy: LifetimePolicy = .exit, backend: String = "software", extra: [String] = [], launcher: [String] = [],
         socketPath given: String? = nil) throws {
        let dir = "/tmp/tether-tests-\(getuid())"
        mkdir(dir, 0o700)
        socketPath = given ?? "\(dir)/d-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let arguments = ["daemon", "--socket", socketPath, "--policy", policy.description, "--backend", backend] + extra
        process.executableURL = URL(fileURLWithPath: launcher.first ?? tetherBinary())
        process.arguments = launcher.isEmpty ? arguments : Array(launcher.dropFirst()) + [tetherBinary()] + arguments
        let ready = Pipe()
        process.standardOutput = ready
        process.standardError = stderrPipe
        try process.run()
        // The daemon prints "ready" once it listens: wait for that line, bounded.
        let fd = ready.fileHandleForReading.fileDescriptor
        var text = ""
        let deadline = monotonicNanos() + 30_000_000_000
        while !text.contains("\n") && monotonicNanos() < deadline {
            guard (try? waitReadable(fd, timeoutMillis: 500)) == true else { continue }
            var buf = [UInt8](repeating: 0, count: 256)
            let n = read(fd, &buf, 256)
            if n <= 0 { break }
            text += String(decoding: buf[0..<n], as: UTF8.self)
        }
        guard text.hasPrefix("ready") else {
            process.terminate()
            throw TetherError(.deviceLost, "daemon did not start: \(text)")
        }
    }

    var pid: pid_t { process.processIdentifier }

    /// The daemon's standard error up to the first line containing `marker` (bounded).
    func stderr(upTo marker: String, timeoutSeconds: Double = 10) -> String {
        let fd = stderrPipe.fileHandleForReading.fileDescriptor
        var text = ""
        let deadline = monotonicNanos() + UInt64(timeoutSeconds * 1e9)
        while !text.split(separator: "\n").contains(where: { $0.contains(marker) }) && monotonicNanos() < deadline {
            guard (try? waitReadable(fd, timeoutMillis: 200)) == true else { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            text += String(decoding: buf[0..<n], as: UTF8.self)
        }
        return text
    }

    func control() throws -> DaemonControl { try DaemonControl(socketPath: socketPath, timeoutSeconds: 10) }

    func options(closeOnFork: Bool = true, policy: LifetimePolicy? = nil) -> DeviceOptions {
        DeviceOptions(socketPath: socketPath, policy: policy, closeOnFork: closeOnFork, requestTimeoutSeconds: 10)
    }

    /// The daemon's open fds and its mappings of memfd pages.
    func resources() -> (fds: Int, memfdMappings: Int) {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
        let maps = (try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)) ?? ""
        return (fds, maps.split(separator: "\n").filter { $0.contains("/memfd:") }.count)
    }

    func fdTargets() -> [String] {
        let dir = "/proc/\(pid)/fd"
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted().map {
            "\($0)→" + ((try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0)) ?? "?")
        }
    }

    /// User + system CPU time of the daemon, in clock ticks.
    func cpuTicks() -> Int {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return -1 }
        let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
    }

    func stop() {
        guard process.isRunning, let pidfd = try? Pidfd.open(pid) else { return }
        kill(pid, SIGTERM)
        if (try? waitReadable(pidfd.raw, timeoutMillis: 15_000)) != true { kill(pid, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        stop()
        unlink(socketPath)
    }

    /// A raw connection, bound by a `hello` (no client library in between).
    func rawConnection() throws -> OwnedDescriptor {
        let fd = try SeqPacketSocket.connect(path: socketPath)
        guard case .hello? = rawRequest(fd.raw, .hello(policy: nil, backend: .auto)) else {
            throw TetherError(.deviceError, "hello failed")
        }
        return fd
    }
}

/// Forks a child that runs `body` and ends with `_exit(code)` (never `exit`: see DESIGN.md).
/// Returns the child's pid.
func forkChild(_ body: () -> Int32) -> pid_t {
    let pid = fork()
    precondition(pid >= 0, "fork failed")
    if pid == 0 { tether_exit_now(body()) }
    return pid
}

/// Waits (bounded) for a child and returns its exit status, or nil on timeout/signal.
func waitChild(_ pid: pid_t, timeoutSeconds: Double = 30) -> Int32? {
    let deadline = monotonicNanos() + UInt64(timeoutSeconds * 1e9)
    guard let fd = try? Pidfd.open(pid) else { return nil }
    _ = try? waitReadable(fd.raw, timeoutMillis: Int32(timeoutSeconds * 1000))
    var status: Int32 = 0
    while monotonicNanos() < deadline {
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            // WIFEXITED / WEXITSTATUS
            return (status & 0x7f) == 0 ? (status >> 8) & 0xff : nil
        }
        _ = try? waitReadable(fd.raw, timeoutMillis: 100)
    }
    kill(pid, SIGKILL)
    _ = waitpid(pid, &status, 0)
    return nil
}

/// A pipe for one-line handshakes between a test and its children.
struct Handshake {
    var read: Int32
    var write: Int32
    init() {
        var fds: [Int32] = [0, 0]
        precondition(pipe(&fds) == 0)
        read = fds[0]
        write = fds[1]
    }
    func send(_ s: String) {
        var b = Array((s + "\n").utf8)
        _ = Glibc.write(write, &b, b.count)
    }
    /// One line, bounded by a timeout.
    func receive(timeoutSeconds: Double = 30) -> String? {
        var line = [UInt8]()
        let deadline = monotonicNanos() + UInt64(timeoutSeconds * 1e9)
        while !line.contains(10) && monotonicNanos() < deadline {
            guard (try? waitReadable(read, timeoutMillis: 200)) == true else { continue }
            var b: UInt8 = 0
            if Glibc.read(read, &b, 1) != 1 { return nil }
            line.append(b)
        }
        return line.contains(10) ? String(decoding: line.dropLast(), as: UTF8.self) : nil
    }
    func close() {
        Glibc.close(read)
        Glibc.close(write)
    }
}

/// Sends a raw request on a connection fd and reads the reply (for tests that must bypass the
/// library: a forked child on its parent's fd, a process the fd was passed to).
func rawRequest(_ fd: Int32, _ request: Request, id: UInt64 = 99, fds: [Int32] = []) -> Reply? {
    do {
        try SeqPacketSocket.send(fd, MessageCodec.encode(request, id: id), fds: fds)
        return rawReply(fd)
    } catch { return nil }
}

func rawReply(_ fd: Int32, timeoutSeconds: Double = 10) -> Reply? {
    guard (try? waitReadable(fd, timeoutMillis: Int32(timeoutSeconds * 1000))) == true else { return nil }
    guard case .message(let m) = try? SeqPacketSocket.receive(fd, capacity: Wire.maxMessageBytes) else { return nil }
    return (try? MessageCodec.decodeReply(m.bytes))?.1
}

/// An attacker's report of "run,ping run,ping …" (ns) as the two lists, each sorted; pairs that do
/// not parse are dropped.
func runPingPairs(_ report: String) -> (runs: [UInt64], pings: [UInt64]) {
    let pairs = report.split(separator: " ").map { $0.split(separator: ",").compactMap { UInt64($0) } }.filter { $0.count == 2 }
    return (pairs.map { $0[0] }.sorted(), pairs.map { $0[1] }.sorted())
}

func errorCode(_ reply: Reply?) -> TetherError.Code? {
    if case .error(let e)? = reply { return e.code }
    return nil
}

/// Runs the `tether` binary and kills it if it has not ended within `timeoutSeconds` (for runs
/// that must fail at once, and would otherwise block a test forever if they did not).
func runTetherBounded(_ args: [String], environment extra: [String: String] = [:], timeoutSeconds: Double = 20) throws -> TetherRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: tetherBinary())
    process.arguments = args
    process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
    let err = Pipe()
    process.standardOutput = FileHandle.nullDevice
    process.standardError = err
    try process.run()
    let pidfd = try Pidfd.open(process.processIdentifier)
    if (try? waitReadable(pidfd.raw, timeoutMillis: Int32(timeoutSeconds * 1000))) != true {
        kill(process.processIdentifier, SIGKILL)
    }
    let e = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return TetherRun(status: process.terminationStatus, stdout: "", stderr: String(decoding: e, as: UTF8.self))
}

/// `Shmem` of /proc/meminfo, in KiB: shared memory (memfd pages) on the whole machine.
func shmemKiB() -> Int {
    let text = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") where line.hasPrefix("Shmem:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }
    return -1
}

/// Whether process `pid` maps or holds an fd of a memfd named `name`.
func holdsMemfd(_ pid: pid_t, named name: String) -> (mapped: Bool, fd: Bool) {
    let maps = (try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)) ?? ""
    let dir = "/proc/\(pid)/fd"
    let fds = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap {
        try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0)
    }
    return (maps.contains("/memfd:\(name)"), fds.contains { $0.contains("/memfd:\(name)") })
}
