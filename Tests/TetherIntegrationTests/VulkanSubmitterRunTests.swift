import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import Testing

/// On Vulkan the daemon's event loop records, submits and waits for the fence of a known-tiny
/// awaited `run` itself (`Scheduler.submit(_:runHere:)`). These tests kill the run's owner while
/// the event loop may be asleep on that fence: its teardown runs on another thread and waits for
/// the slice the event loop started.
@Suite(.serialized) struct VulkanSubmitterRunTests {
    /// A victim whose tiny runs go through the event loop, SIGKILLed at a random moment of its
    /// stream of runs, while a forked child of it holds its connection (exit policy: the owner's
    /// death is what counts). Returns the victim's pid.
    static func startVictim(_ daemon: TestDaemon, _ ready: Handshake) -> pid_t {
        forkChild {
            guard let device = try? Device(daemon.options(closeOnFork: false)) else {
                ready.send("failed: connect")
                return 2
            }
            // The holder keeps the inherited connection fd until the victim is gone: it reads a
            // pipe whose only writer is the victim.
            var ends: [Int32] = [0, 0]
            guard pipe(&ends) == 0 else { return 3 }
            let holder = forkChild {
                close(ends[1])
                var byte: UInt8 = 0
                _ = read(ends[0], &byte, 1)
                return 0
            }
            guard holder > 0 else { return 4 }
            close(ends[0])
            var runs = 0
            while true {
                // ~20–60 µs of spin on lavapipe: measured once on the worker, then the event
                // loop's own work.
                guard let r = try? device.run(.spin, args: [64], groups: 1, timeoutSeconds: 10), r.state == .finished else {
                    ready.send("failed: run \(runs)")
                    return 5
                }
                runs += 1
                if runs == 50 { ready.send("running") }
            }
        }
    }

    @Test("a Vulkan client SIGKILLed while the event loop runs its tiny runs: torn down every time, the daemon keeps answering a neighbour, nothing leaked, zero validation messages")
    func killedDuringEventLoopFenceWait() throws {
        let daemon = try TestDaemon(backend: "vulkan")
        let neighbour = try Device(daemon.options())
        let control = try daemon.control()
        defer { control.close() }
        let before = daemon.resources()
        let victims = 24
        var neighbourWorst: UInt64 = 0
        for i in 0..<victims {
            let ready = Handshake()
            defer { ready.close() }
            let victim = Self.startVictim(daemon, ready)
            let said = ready.receive(timeoutSeconds: 60)
            #expect(said == "running", "victim \(i) said \(said ?? "nothing")")
            // Randomised kill timing within the victim's stream of ~40–200 µs runs (not a wait
            // for anything): the kill lands in the event loop's fence wait, between runs, or in
            // the reply.
            usleep(UInt32.random(in: 0...2_000))
            kill(victim, SIGKILL)
            _ = waitChild(victim)  // nil: it died by the signal
            let timelines = try control.awaitTeardown(pid: victim, timeoutSeconds: 10)
            #expect(!timelines.isEmpty, "victim \(i) (pid \(victim)) was not torn down within 10 s")
            let t0 = monotonicNanos()
            let r = try neighbour.run(.spin, args: [1], groups: 1, timeoutSeconds: 10)
            neighbourWorst = max(neighbourWorst, monotonicNanos() - t0)
            #expect(r.state == .finished)
        }
        // Every victim's mirrored pages and fds are gone (the holders have exited too, so nothing
        // keeps a connection open).
        var after = daemon.resources()
        let deadline = monotonicNanos() + 10_000_000_000
        while after.fds > before.fds && monotonicNanos() < deadline {
            usleep(20_000)  // a bounded poll of /proc: no event tells when another process closed an fd
            after = daemon.resources()
        }
        print("\(victims) victims SIGKILLed mid-stream; the neighbour's run after each teardown: worst \(neighbourWorst / 1000) µs; daemon fds \(before.fds) → \(after.fds), memfd mappings \(before.memfdMappings) → \(after.memfdMappings)")
        #expect(after.fds <= before.fds && after.memfdMappings <= before.memfdMappings, "the daemon kept a victim's fds or mappings: \(before) → \(after)")
        neighbour.close()
        daemon.stop()
        let text = String(decoding: daemon.stderrPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let messages = text.split(separator: "\n").filter { $0.contains("Vulkan validation") }
        #expect(messages.isEmpty, "validation messages: \(messages.prefix(5))")
    }

    /// The attacker's run is one matmul group (a 16 × 16 tile over n pages of B) that its space
    /// measured warm; before every run it gives its pages back (`MADV_REMOVE`), so the tile's
    /// first touches fault in lavapipe's threads while the event loop sleeps on the fence. A
    /// ping on a connection bound to nothing, sent right after each run, waits for whatever the
    /// event loop does meanwhile. Returns (run times, ping times), ns, sorted.
    static func coldTileAttack(_ extra: [String], n: UInt64, rounds: Int) throws -> (runs: [UInt64], pings: [UInt64]) {
        let daemon = try TestDaemon(backend: "vulkan", extra: extra)
        let h = Handshake()
        defer { h.close() }
        let attacker = forkChild {
            guard let device = try? Device(daemon.options()), let memory = try? device.mirror(bytes: Int(n * n * 4)),
                  let raw = try? daemon.rawConnection(), let other = try? SeqPacketSocket.connect(path: daemon.socketPath) else {
                h.send("failed: setup")
                return 2
            }
            memset(memory.base, 0, Int(n * n * 4))
            let args = [n, memory.address, memory.address, memory.address]
            for _ in 0..<8 { _ = try? device.run(.matmul, args: args, groups: 1) }  // learn it warm
            var lines: [String] = []
            for round in 0..<rounds {
                guard madvise(memory.base, Int(n * n * 4), MADV_REMOVE) == 0 else { return 5 }
                let t0 = monotonicNanos()
                let run = SpawnRequest(program: .builtin(.matmul), args: args, groups: 1)
                guard (try? SeqPacketSocket.send(raw.raw, MessageCodec.encode(.run(run), id: UInt64(round + 1)))) != nil else { return 4 }
                let p0 = monotonicNanos()
                guard rawRequest(other.raw, .ping, id: UInt64(round + 1)) == .pong else { return 6 }
                let ping = monotonicNanos() - p0
                guard case .joined(let report)? = rawReply(raw.raw), report.state == .finished else { return 7 }
                lines.append("\(monotonicNanos() - t0),\(ping)")
            }
            h.send(lines.joined(separator: " "))
            return 0
        }
        defer { kill(attacker, SIGKILL); _ = waitChild(attacker) }
        let report = h.receive(timeoutSeconds: 120) ?? ""
        return runPingPairs(report)
    }

    @Test("a Vulkan client whose one-group runs fault on pages it gave back delays a ping by at most 1 ms in 9 rounds of 10")
    func coldTileStallIsBounded() throws {
        // 128: warm, the tile is tiny enough for the event loop (at 256 it never is); cold, it
        // takes ~0.7 ms in a debug daemon with validation on.
        let n = UInt64(ProcessInfo.processInfo.environment["TETHER_TEST_MATMUL_N"] ?? "") ?? 128
        let rounds = 40
        let control = try Self.coldTileAttack(["--no-small-slices-on-worker"], n: n, rounds: rounds)
        let hostile = try Self.coldTileAttack([], n: n, rounds: rounds)
        func pct(_ s: [UInt64], _ p: Double) -> UInt64 { s.isEmpty ? 0 : s[min(s.count - 1, Int(Double(s.count) * p))] / 1000 }
        for (name, r) in [("worker only", control), ("default", hostile)] {
            print("matmul n=\(n) cold one-group runs, \(name): run p50 \(pct(r.runs, 0.5)) µs; ping right after p50 / p90 / max \(pct(r.pings, 0.5)) / \(pct(r.pings, 0.9)) / \(pct(r.pings, 1)) µs")
        }
        try #require(hostile.runs.count == rounds && control.runs.count == rounds, "the attacker's runs failed")
        // The p90 ping: a stall in most rounds shows there, a noisy neighbour process in a few.
        // The overrun bound (500 µs on Vulkan) sends its runs to the worker for a second once one
        // takes longer; at 10× (2.5 ms) a review measured p90 174 µs against 65 µs worker-only.
        #expect(pct(hostile.pings, 0.9) <= max(1_000, 2 * pct(control.pings, 0.9)), "pings waited for the attacker's cold tiles on the event loop")
    }
}
