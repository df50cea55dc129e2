import Foundation
import Glibc
import Testing

/// The repository root (this file is Tests/TetherIntegrationTests/CInterfaceTests.swift).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// How a shell command ended: status (nil when killed by its time limit or a signal) and output.
struct ShellRun {
    var status: Int32?
    var output: String
}

/// Runs `command` with `sh -c` in the repository root, standard error folded into the output,
/// killed after `timeoutSeconds`. `environment` replaces the whole environment when given.
func shell(_ command: String, environment: [String: String]? = nil, timeoutSeconds: Int = 120) throws -> ShellRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
    process.arguments = ["-s", "KILL", "\(timeoutSeconds)", "/bin/sh", "-c", command]
    process.currentDirectoryURL = URL(fileURLWithPath: repositoryRoot)
    if let environment { process.environment = environment }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let exited = process.terminationReason == .exit && process.terminationStatus != 137
    return ShellRun(status: exited ? process.terminationStatus : nil, output: String(decoding: data, as: UTF8.self))
}

/// One `tools/install` of the debug build this test process belongs to, into a private prefix,
/// shared by the tests below (installed once; prefixes of test processes that are gone are removed).
enum InstalledPrefix {
    static let path: Result<String, InstallFailed> = {
        let dir = "/tmp/tether-tests-\(getuid())"
        mkdir(dir, 0o700)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix("prefix-") {
            if let pid = Int32(name.dropFirst("prefix-".count)), kill(pid, 0) != 0 && errno == ESRCH {
                try? FileManager.default.removeItem(atPath: "\(dir)/\(name)")
            }
        }
        let prefix = "\(dir)/prefix-\(getpid())"
        guard let run = try? shell("tools/install --prefix \(prefix) --configuration debug --no-build --no-man"), run.status == 0 else {
            return .failure(InstallFailed())
        }
        return .success(prefix)
    }()

    struct InstallFailed: Error, CustomStringConvertible {
        var description: String { "tools/install --configuration debug --no-build failed (is .build/debug/libTetherC.so built?)" }
    }

    static func get() throws -> String { try path.get() }

    /// The environment a C user has: only the system's paths, pkg-config pointed at the prefix,
    /// no Swift toolchain and no LD_LIBRARY_PATH.
    static func cEnvironment(_ prefix: String, socket: String? = nil) -> [String: String] {
        var env = ["PATH": "/usr/bin:/bin", "PKG_CONFIG_PATH": "\(prefix)/lib/pkgconfig", "HOME": "/tmp"]
        if let socket { env["TETHER_SOCKET"] = socket }
        return env
    }
}

@Suite struct CInterfaceTests {
    @Test("tether.h compiles as strict C99 with every warning an error")
    func headerIsStrictC99() throws {
        let prefix = try InstalledPrefix.get()
        let run = try shell("""
            printf '#include <tether.h>\\nint main(void) { tether_device_options o; tether_device_options_init(&o); return (int)o.struct_size == 0; }\\n' \
              | cc -std=c99 -Wall -Wextra -Werror -pedantic -x c -fsyntax-only $(pkg-config --cflags tether) -
            """, environment: InstalledPrefix.cEnvironment(prefix))
        #expect(run.status == 0, "\(run.output)")
    }

    @Test("libtether.so needs no Swift runtime where it runs and exports only tether_* symbols")
    func libraryIsSelfContained() throws {
        let prefix = try InstalledPrefix.get()
        let needed = try shell("readelf -d \(prefix)/lib/libtether.so | grep NEEDED")
        #expect(needed.status == 0)
        #expect(!needed.output.contains("swift") && !needed.output.contains("dispatch") && !needed.output.contains("Foundation"),
                "\(needed.output)")
        #expect(needed.output.contains("libc.so"))
        let exported = try shell("nm -D --defined-only \(prefix)/lib/libtether.so | awk '$2 ~ /^[A-Z]$/ { print $3 }'")
        let names = exported.output.split(separator: "\n")
        #expect(names.contains("tether_open") && names.contains("tether_last_error"))
        #expect(names.allSatisfy { $0.hasPrefix("tether_") }, "\(names.filter { !$0.hasPrefix("tether_") }.prefix(5))")
    }

    @Test("a C program passing NULL, zero sizes, bad values and closed handles gets status codes and sentences, never a crash")
    func badArguments() throws {
        let prefix = try InstalledPrefix.get()
        let daemon = try TestDaemon(policy: .exit, backend: "software")
        let exe = "\(prefix)/bad_arguments"
        let build = try shell("cc -std=c99 -Wall -Wextra -Werror -pedantic Tests/C/bad_arguments.c $(pkg-config --cflags --libs tether) -lm -o \(exe)",
                              environment: InstalledPrefix.cEnvironment(prefix))
        try #require(build.status == 0, "\(build.output)")
        let run = try shell(exe, environment: InstalledPrefix.cEnvironment(prefix, socket: daemon.socketPath))
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("checks passed") && !run.output.contains("FAIL"), "\(run.output)")
    }

    @Test("examples/fork_exit.c builds from the installed prefix with pkg-config alone, and A's work dies while B holds the fd")
    func forkExitExample() throws {
        let prefix = try InstalledPrefix.get()
        let daemon = try TestDaemon(policy: .exit, backend: "software")
        let exe = "\(prefix)/fork_exit"
        let build = try shell("cc examples/fork_exit.c $(pkg-config --cflags --libs tether) -o \(exe)",
                              environment: InstalledPrefix.cEnvironment(prefix))
        try #require(build.status == 0, "\(build.output)")
        let run = try shell(exe, environment: InstalledPrefix.cEnvironment(prefix, socket: daemon.socketPath))
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("B is alive and still holds the fd"), "\(run.output)")
        // The pidfd's notice, or the BPF notifier's earlier one where the daemon may load BPF.
        #expect(run.output.contains("reason ownerExit") || run.output.contains("reason bpf-"), "\(run.output)")
        #expect(run.output.contains("1 device thread(s) killed, 1 region(s) freed, 67108864 bytes"), "\(run.output)")
    }
}
