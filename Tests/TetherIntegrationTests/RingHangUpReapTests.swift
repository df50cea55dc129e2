import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import TetherTestSupport
import Testing

/// A reaping reply (`joined`) that meets a holder's `shutdown()` of the owner's connection: the
/// owner gets each thread's own report exactly once, and every thread it joined is reaped — none
/// stays behind counting against its limits (ownership.md, rule 2; RingServer's `complete`).
@Suite(.serialized) struct RingHangUpReapTests {
    /// Threads in the caller's space, as `ps` shows them.
    static func threadsOfThisProcess(_ control: DaemonControl) throws -> [ThreadReport] {
        try control.ps().spaces.filter { $0.pid == getpid() }.flatMap(\.threads)
    }

    @Test("a child shuts the inherited connection down while its parent's joins complete through the rings, 60 times: every join returns its own thread's report and no joined thread stays unreaped")
    func joinsAcrossAChildsShutdown() throws {
        let daemon = try TestDaemon(extra: ["--max-threads-per-space", "64"])
        let control = try daemon.control()
        let device = try Device(daemon.options(closeOnFork: false))
        let space = device.hello.space
        for round in 0..<60 {
            let go = Handshake()
            let fd = device.connectionFD
            let w = forkChild {
                var b: UInt8 = 0
                guard Glibc.read(go.read, &b, 1) == 1, fcntl(fd, F_GETFD) >= 0 else { return 2 }
                return Glibc.shutdown(fd, Int32(SHUT_RDWR)) == 0 ? 0 : 1
            }
            // Spins of staggered lengths (tens of ms in all here), spawned once the child is
            // ready, so that their completions spread over the moment it shuts the connection
            // down.
            let threads = try (0..<6).map { i in
                try device.spawn(.spin, args: [UInt64(1_000 + 2_000 * i + 250 * (round % 8))], groups: 4)
            }
            go.send("go")
            for t in threads {
                // From the ring, or asked again on the resumed connection (then from the space's
                // recent reaps): never `noSuchThread`.
                let report = try device.wait(t, timeoutSeconds: 20)
                #expect(report.thread == t.id && report.state == .finished, "round \(round): \(report)")
            }
            #expect(waitChild(w) == 0)
            go.close()
            #expect(device.hello.space == space)
            // Reaped as each reply is posted; `ps` is asked until then, bounded (the reap has no
            // event a client can wait on).
            let deadline = monotonicNanos() + 5_000_000_000
            var left = try Self.threadsOfThisProcess(control)
            while !left.isEmpty && monotonicNanos() < deadline {
                usleep(2_000)
                left = try Self.threadsOfThisProcess(control)
            }
            #expect(left.isEmpty, "round \(round): joined but never reaped: \(left.map { "\($0.thread) \($0.state)" })")
            if !left.isEmpty { break }
        }
        // The limit has room for 64 again: nothing joined counts against it.
        let all = try (0..<64).map { _ in try device.spawn(.spin, args: [1], groups: 1) }
        for t in all { #expect(try device.wait(t, timeoutSeconds: 20).state == .finished) }
        device.close()
    }
}
