import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys

/// A daemon this command starts for itself (a separate process: this one must stay free of
/// Vulkan so that it can fork victims) and stops when done.
final class PrivateDaemon {
    let socketPath: String
    let process: Process
    let logPath: String

    /// Starts `tether daemon` on a fresh socket and waits until it answers (10 s at most).
    init(backend: BackendChoice?, policy: LifetimePolicy, extra: [String] = []) throws {
        let dir = "/tmp/tether-\(getuid())"
        try? SocketPath.prepareDirectory(for: dir + "/x")
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        socketPath = "\(dir)/private-\(tag).sock"
        logPath = "\(dir)/private-\(tag).log"
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var args = ["daemon", "--socket", socketPath, "--policy", policy.description]
        if let backend { args += ["--backend", backend.rawValue] }
        process.arguments = args + extra
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        let ready = Pipe()
        process.standardOutput = ready
        try process.run()
        // The daemon prints one line on standard output once it listens.
        let line = readLine(ready.fileHandleForReading.fileDescriptor, until: monotonicNanos() + 20_000_000_000)
        guard case .success(let text) = line, text.hasPrefix("ready") else {
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            stop()
            throw TetherError(.deviceLost, "the private daemon did not start: \(log.split(separator: "\n").last.map(String.init) ?? "no output")")
        }
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 10 s.
    func stop() {
        guard process.isRunning, let pidfd = try? Pidfd.open(process.processIdentifier) else { return }
        kill(process.processIdentifier, SIGTERM)
        if (try? waitReadable(pidfd.raw, timeoutMillis: 10_000)) != true { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        unlink(logPath)
    }

    deinit { stop() }
}
