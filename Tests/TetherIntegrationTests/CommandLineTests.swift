import CTetherLinux
import Foundation
import Glibc
import Testing
import Tether
import TetherCore
import TetherSys

/// The `tether` binary as a user meets it: fallback without Vulkan, clear errors, clean stops.
@Suite(.serialized) struct CommandLineTests {
    func tether(_ args: [String], environment extra: [String: String] = [:]) throws -> TetherRun {
        // Never a user's daemon.
        let socket = ["TETHER_SOCKET": "/tmp/tether-cli-tests-\(getpid()).sock"]
        return try runTether(args, environment: socket.merging(extra) { $1 }, keepStderr: true)
    }

    static let noVulkan = ["VK_ICD_FILENAMES": "/nonexistent.json", "VK_DRIVER_FILES": "/nonexistent.json"]

    @Test("without a Vulkan driver, devices lists none and auto picks the software device")
    func devicesWithoutVulkan() throws {
        let r = try tether(["devices", "--json"], environment: Self.noVulkan)
        #expect(r.status == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect((json["vulkanDevices"] as? [Any])?.isEmpty == true)
        #expect((json["autoPick"] as? [String: Any])?["backend"] as? String == "software")
    }

    @Test("the software device has one thread per CPU the process may use: one under taskset -c 0",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/taskset"), "taskset (util-linux) is not installed; skipped"))
    func softwareThreadsFollowAffinity() throws {
        let socket = ["TETHER_SOCKET": "/tmp/tether-cli-tests-\(getpid()).sock"]
        let r = try runTether(["devices"], environment: socket.merging(Self.noVulkan) { $1 }, keepStderr: true,
                              launcher: ["/usr/bin/taskset", "-c", "\(max(0, tether_current_cpu()))"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("Tether software device (1 thread)"), "\(r.stdout)")
    }

    @Test("without a Vulkan driver, run falls back to software and says so in one line")
    func runFallsBack() throws {
        let r = try tether(["run", "saxpy", "--local", "--size", "10000", "--json"], environment: Self.noVulkan)
        #expect(r.status == 0)
        #expect(r.stderr.split(separator: "\n").filter { $0.contains("using the software backend") }.count == 1)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(json["backend"] as? String == "software")
        #expect(json["verified"] as? Bool == true)
        let asked = try tether(["run", "saxpy", "--local", "--backend", "vulkan"], environment: Self.noVulkan)
        #expect(asked.status != 0)
        #expect(asked.stderr.hasPrefix("tether: "))
    }

    @Test("run through a private daemon prints the fields tools read", arguments: ["software", "vulkan"])
    func runJSON(backend: String) throws {
        let r = try tether(["run", "listwalk", "--backend", backend, "--size", "5000", "--json"])
        #expect(r.status == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        for key in ["workload", "backend", "device", "size", "verified", "seconds"] { #expect(json[key] != nil, "\(key)") }
        #expect(json["verified"] as? Bool == true)
        #expect(json["backend"] as? String == backend)
        #expect(json["gbps"] != nil || json["gflops"] != nil)
    }

    @Test("bad input on the command line: one clear line and a non-zero exit")
    func badInput() throws {
        for args in [["run", "nosuch"], ["run", "saxpy", "--size", "0"], ["run", "matmul", "--size", "17"],
                     ["run", "saxpy", "--backend", "cuda"], ["kill"], ["ps"]] {
            let r = try tether(args)
            #expect(r.status != 0, "\(args)")
            #expect(!r.stderr.isEmpty, "\(args)")
        }
        let r = try tether(["run", "nosuch"])
        #expect(r.stderr.contains("saxpy"), "the error lists the valid workloads")
    }

    @Test("SIGTERM stops a daemon with running device work cleanly and removes its socket")
    func sigtermStopsCleanly() throws {
        let daemon = try TestDaemon()
        let device = try Tether.Device(daemon.options())
        _ = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        let pidfd = try Pidfd.open(daemon.pid)
        kill(daemon.pid, SIGTERM)
        #expect(try waitReadable(pidfd.raw, timeoutMillis: 10_000), "the daemon stopped within 10 s")
        daemon.process.waitUntilExit()
        #expect(daemon.process.terminationStatus == 0)
        #expect(access(daemon.socketPath, F_OK) != 0)
    }
}
