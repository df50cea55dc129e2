import CTetherLinux
import Foundation
import Glibc
import Synchronization
import Tether
import TetherCore
import TetherSys
import Testing

/// Issue 11: hostile load with real processes and a real daemon — no reply lost, limits that
/// answer with the flag to change, linear teardown, no spin at EMFILE, paged tools, waiters that
/// go with their connection, memory charged to the client.
@Suite(.serialized) struct HostileLoadTests {
    /// `n` spin threads spawned on a raw connection, pipelined 200 at a time; returns their ids.
    static func spawnMany(_ fd: Int32, _ n: Int, persistentSeconds: Double = 600) -> [ThreadID]? {
        var ids: [ThreadID] = []
        var next: UInt64 = 1000
        while ids.count < n {
            let batch = min(200, n - ids.count)
            let spawn = SpawnRequest(program: .builtin(.spin), args: [1], groups: 1,
                                     persistentNanos: UInt64(persistentSeconds * 1e9), priority: .low)
            for _ in 0..<batch {
                next += 1
                guard (try? SeqPacketSocket.send(fd, MessageCodec.encode(.spawn(spawn), id: next))) != nil else { return nil }
            }
            for _ in 0..<batch {
                guard case .spawned(let id)? = rawReply(fd) else { return nil }
                ids.append(id)
            }
        }
        return ids
    }

    /// Blocks until `condition` holds, checking every 20 ms, at most `seconds` (a daemon state
    /// that no event announces to an outsider).
    static func eventually(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = monotonicNanos() + UInt64(seconds * 1e9)
        while monotonicNanos() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    @Test("a connection is read at its request budget: past the burst, requests wait in its socket and none is lost")
    func requestBudget() throws {
        let daemon = try TestDaemon(extra: ["--max-requests-per-second", "1000", "--max-request-burst", "10"])
        let fd = try SeqPacketSocket.connect(path: daemon.socketPath)
        let start = monotonicNanos()
        for i in 0..<310 {
            #expect(rawRequest(fd.raw, .ping, id: UInt64(i + 1)) == .pong, "ping \(i)")
        }
        // 10 at once, then 1,000 a second: 300 more take at least 0.3 s however fast the machine.
        #expect(monotonicNanos() - start >= 290_000_000)
        // Another connection has a budget of its own.
        let other = try SeqPacketSocket.connect(path: daemon.socketPath)
        #expect(rawRequest(other.raw, .ping) == .pong)
    }

    @Test("fair admission: while another space makes requests, a connection is read at --max-shared-requests-per-second; alone, at its full budget")
    func sharedBudget() throws {
        let daemon = try TestDaemon(extra: ["--max-shared-requests-per-second", "1000", "--max-request-burst", "10"])
        // 210 pings in a row, on a fresh connection (a full burst of 10).
        func pings() throws -> UInt64 {
            let fd = try SeqPacketSocket.connect(path: daemon.socketPath)
            let start = monotonicNanos()
            for i in 0..<210 { #expect(rawRequest(fd.raw, .ping, id: UInt64(i + 1)) == .pong, "ping \(i)") }
            return monotonicNanos() - start
        }
        // Alone: 20,000 a second, ~10 ms of budget for 200.
        let alone = try pings()
        #expect(alone < 150_000_000, "alone, 210 pings took \(alone / 1_000_000) ms")
        // Beside a client making tiny runs over its ring without a pause: 1,000 a second, so 200
        // take at least 0.2 s however fast the machine.
        let device = try Device(daemon.options())
        let runs = Atomic<Int>(0), stop = Atomic<Bool>(false)
        let neighbour = startJoinableThread(name: "test-neighbour") {
            while !stop.load(ordering: .relaxed) {
                if (try? device.run(.spin, args: [1], groups: 1, timeoutSeconds: 10)) != nil { runs.add(1, ordering: .relaxed) }
            }
        }
        #expect(Self.eventually(10) { runs.load(ordering: .relaxed) > 0 })
        let shared = try pings()
        stop.store(true, ordering: .relaxed)
        pthread_join(neighbour, nil)
        #expect(shared >= 190_000_000, "beside another space, 210 pings took \(shared / 1_000_000) ms")
        withExtendedLifetime(device) {}
    }

    @Test("fair admission: while another space's long run is on the device, a connection is read at --max-shared-requests-per-second though that client asks for nothing")
    func sharedWhileAnotherSpaceRuns() throws {
        let daemon = try TestDaemon(extra: ["--max-shared-requests-per-second", "1000", "--max-request-burst", "10"])
        // A neighbour space with a thread running for 10 s, and no request after its spawn.
        let device = try Device(daemon.options())
        let long = try device.spawn(.spin, args: [BuiltinKernel.maxSpinIterations], groups: 1, persistentSeconds: 10)
        defer { _ = try? device.kill(long) }
        #expect(Self.eventually(10) { (try? device.status(long).state) == .running })
        // Past the window in which its requests count (`Daemon.sharedWindowNanos`, 10 ms).
        usleep(50_000)
        let fd = try SeqPacketSocket.connect(path: daemon.socketPath)
        let start = monotonicNanos()
        for i in 0..<210 { #expect(rawRequest(fd.raw, .ping, id: UInt64(i + 1)) == .pong, "ping \(i)") }
        let took = monotonicNanos() - start
        // 200 beyond the burst at 1,000 a second: at least 0.2 s however fast the machine (at the
        // full budget, 20,000 a second, ~10 ms).
        #expect(took >= 190_000_000, "beside another space's running thread, 210 pings took \(took / 1_000_000) ms")
    }

    @Test("fair admission: beside other requesters, the doorbells a ring client rings for its submissions cost its own rate, not the shared one (its ring pays that)")
    func doorbellsBesideNeighbours() throws {
        // No polling window: the event loop sleeps after every reply, so most tiny runs need a doorbell.
        let daemon = try TestDaemon(extra: ["--max-shared-requests-per-second", "20", "--max-request-burst", "4",
                                            "--ring-poll-us", "0", "--ring-idle-poll-us", "0"])
        // Neighbours that keep the daemon shared without taking device time: 8 connections of no
        // address space pinging, each read at 20 a second.
        let stop = Atomic<Bool>(false)
        let neighbours = try (0..<8).map { _ in
            let fd = try SeqPacketSocket.connect(path: daemon.socketPath).release()
            return startJoinableThread(name: "test-pinger") {
                while !stop.load(ordering: .relaxed), rawRequest(fd, .ping) == .pong {}
                close(fd)
            }
        }
        defer { stop.store(true, ordering: .relaxed); for t in neighbours { pthread_join(t, nil) } }
        let device = try Device(daemon.options())
        #expect(try device.run(.spin, args: [1], groups: 1).state == .finished)
        #expect(device.usesRings)
        // 100 tiny runs: 0.08–0.12 s (debug build). Doorbells charged at 20 a second cost 50 ms each
        // whenever the daemon counted as shared: 1.6–3.0 s before they were excused (measured).
        let start = monotonicNanos()
        for _ in 0..<100 { #expect(try device.run(.spin, args: [1], groups: 1, timeoutSeconds: 10).state == .finished) }
        let took = monotonicNanos() - start
        #expect(took < 1_000_000_000, "100 ring runs beside 8 pinging neighbours took \(took / 1_000_000) ms")
    }

    @Test("fair admission: a doorbell with no submission behind it costs the shared rate beside another space's thread")
    func emptyDoorbellsBesideANeighbour() throws {
        let daemon = try TestDaemon(extra: ["--max-shared-requests-per-second", "50", "--max-request-burst", "4"])
        // A neighbour space (a child process) with a thread on the device keeps the daemon shared.
        let ready = Handshake()
        let neighbour = forkChild {
            guard let device = try? Device(daemon.options()),
                  let long = try? device.spawn(.spin, args: [BuiltinKernel.maxSpinIterations], groups: 1, persistentSeconds: 60),
                  Self.eventually(10, { (try? device.status(long).state) == .running })
            else { return 2 }
            ready.send("running")
            while true { pause() }
        }
        defer { kill(neighbour, SIGKILL); _ = waitChild(neighbour); ready.close() }
        #expect(ready.receive() == "running")
        // 50 doorbells beyond the burst at 50 a second hold the ping behind them at least ~1 s
        // however fast the machine (at the connection's own 20,000 a second, ~3 ms).
        let fd = try daemon.rawConnection()
        let sent = monotonicNanos()
        for i in 0..<54 { try SeqPacketSocket.send(fd.raw, MessageCodec.encode(.ringDoorbell, id: UInt64(i + 1))) }
        #expect(rawRequest(fd.raw, .ping, id: 100) == .pong)
        let waited = monotonicNanos() - sent
        #expect(waited >= 950_000_000, "54 empty doorbells, then a ping answered after \(waited / 1_000_000) ms")
    }

    @Test("a request refused for a limit costs 64 tokens: a client that keeps asking past its quota is slowed, then served")
    func refusalsCostMore() throws {
        let daemon = try TestDaemon(extra: ["--max-requests-per-second", "100", "--max-request-burst", "4",
                                            "--max-waiters-per-connection", "1"])
        // This process owns a space (alive: a waiter on it is never answered).
        let owner = try daemon.rawConnection()
        let fd = try SeqPacketSocket.connect(path: daemon.socketPath)
        // One waiter on ourselves, then one past the cap.
        try SeqPacketSocket.send(fd.raw, MessageCodec.encode(.awaitTeardown(pid: getpid(), timeoutMillis: 600_000), id: 1))
        #expect(errorCode(rawRequest(fd.raw, .awaitTeardown(pid: getpid(), timeoutMillis: 600_000), id: 2)) == .resourceExhausted)
        let refused = monotonicNanos()
        // The refusal put the budget 63 tokens (0.63 s at 100 a second) into debt: the next request
        // waits in the socket at least that long, however fast the machine, and is then answered.
        #expect(rawRequest(fd.raw, .ping, id: 3) == .pong)
        #expect(monotonicNanos() - refused >= 600_000_000)
        // Another connection was never slowed.
        let other = try SeqPacketSocket.connect(path: daemon.socketPath)
        let t0 = monotonicNanos()
        #expect(rawRequest(other.raw, .ping) == .pong)
        #expect(monotonicNanos() - t0 < 600_000_000)
        withExtendedLifetime(owner) {}
    }

    @Test("fair admission: a request refused for a limit while the daemon is shared costs 64 tokens at the shared rate")
    func sharedRefusalCost() throws {
        let daemon = try TestDaemon(extra: ["--max-shared-requests-per-second", "100", "--max-request-burst", "4",
                                            "--max-waiters-per-connection", "1"])
        // A neighbour space making tiny runs over its ring without a pause keeps the daemon shared.
        let device = try Device(daemon.options())
        let runs = Atomic<Int>(0), stop = Atomic<Bool>(false)
        let neighbour = startJoinableThread(name: "test-neighbour") {
            while !stop.load(ordering: .relaxed) {
                if (try? device.run(.spin, args: [1], groups: 1, timeoutSeconds: 10)) != nil { runs.add(1, ordering: .relaxed) }
            }
        }
        defer { stop.store(true, ordering: .relaxed); pthread_join(neighbour, nil) }
        #expect(Self.eventually(10) { runs.load(ordering: .relaxed) > 0 })
        let fd = try SeqPacketSocket.connect(path: daemon.socketPath)
        try SeqPacketSocket.send(fd.raw, MessageCodec.encode(.awaitTeardown(pid: getpid(), timeoutMillis: 600_000), id: 1))
        // Measured from before the refused request is sent, so it bounds the debt from below
        // however late its reply comes back.
        let sent = monotonicNanos()
        #expect(errorCode(rawRequest(fd.raw, .awaitTeardown(pid: getpid(), timeoutMillis: 600_000), id: 2)) == .resourceExhausted)
        // 63 more tokens at 100 a second: 0.63 s of debt, however fast the machine (charged at the
        // connection's own 20,000 a second they were 3 ms, less than a third of one shared read).
        #expect(rawRequest(fd.raw, .ping, id: 3) == .pong)
        let waited = monotonicNanos() - sent
        #expect(waited >= 600_000_000, "the next request was read after \(waited / 1_000_000) ms")
    }

    @Test("extreme budget flags (1 a second, bursts of 2^34 and 2^40) neither crash the daemon nor stall its connections")
    func extremeBudgetFlags() throws {
        for burst in ["17179869184", "1099511627776"] {
            let daemon = try TestDaemon(extra: ["--max-requests-per-second", "1", "--max-ring-requests-per-second", "1",
                                                "--max-request-burst", burst])
            let fd = try SeqPacketSocket.connect(path: daemon.socketPath)
            #expect(rawRequest(fd.raw, .ping) == .pong, "burst \(burst): a ping on a fresh connection")
            #expect(daemon.process.isRunning, "burst \(burst): \(daemon.stderr(upTo: "\n", timeoutSeconds: 1))")
        }
    }

    @Test("a user's new connections past the burst are served at --max-new-connections-per-second, none lost")
    func newConnectionBudget() throws {
        let daemon = try TestDaemon(extra: ["--max-new-connections-per-second", "100"])
        let start = monotonicNanos()
        for i in 0..<200 {
            let fd = try SeqPacketSocket.connect(path: daemon.socketPath)
            #expect(rawRequest(fd.raw, .ping) == .pong, "connection \(i)")
        }
        // 128 at once, then 100 a second: 72 more take at least 0.7 s however fast the machine.
        #expect(monotonicNanos() - start >= 700_000_000)
    }

    @Test("a client stopped while 1,000 joins complete gets every reply after SIGCONT")
    func stoppedClientGetsEveryReply() throws {
        let daemon = try TestDaemon()
        let h = Handshake(), go = Handshake()
        defer { h.close(); go.close() }
        let n = 1000
        let child = forkChild {
            guard let fd = try? daemon.rawConnection() else { return 2 }
            // Room in its socket for every join, whatever the daemon does: with threads that
            // ended before their joins went out, the replies fill the client's socket and the
            // daemon's queue, the daemon stops reading (back-pressure), and a client blocked in
            // `send` would never get to stop reading.
            var bytes = Int32(16 << 20)
            guard setsockopt(fd.raw, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, socklen_t(MemoryLayout<Int32>.size)) == 0 else { return 5 }
            guard let ids = Self.spawnMany(fd.raw, n, persistentSeconds: 0.001) else { return 2 }
            // Every join goes out before a single reply is read; then the client stops reading.
            for (i, id) in ids.enumerated() {
                guard (try? SeqPacketSocket.send(fd.raw, MessageCodec.encode(.join(id), id: 100_000 + UInt64(i)))) != nil else { return 3 }
            }
            h.send("sent")
            guard go.receive(timeoutSeconds: 60) == "go" else { return 4 }
            var answered = Set<UInt64>()
            let deadline = monotonicNanos() + 30_000_000_000
            while answered.count < n && monotonicNanos() < deadline {
                guard (try? waitReadable(fd.raw, timeoutMillis: 1000)) == true,
                      case .message(let m) = try? SeqPacketSocket.receive(fd.raw, capacity: Wire.maxMessageBytes),
                      let (id, reply) = try? MessageCodec.decodeReply(m.bytes) else { continue }
                if case .joined = reply { answered.insert(id) }
            }
            return answered.count == n ? 0 : 10
        }
        #expect(h.receive(timeoutSeconds: 60) == "sent")
        kill(child, SIGSTOP)
        // While it is stopped every thread ends; the replies wait in the daemon (reaped only when sent).
        let control = try daemon.control()
        let allEnded = Self.eventually(60) {
            guard let table = try? control.ps() else { return false }
            return table.spaces.filter { $0.pid == child }.allSatisfy { $0.threads.allSatisfy { $0.state != .queued && $0.state != .running } }
        }
        #expect(allEnded)
        let waiting = try control.ps().spaces.first { $0.pid == child }?.threads.count ?? 0
        #expect(waiting > 0, "some replies must have been waiting in the daemon while the client was stopped")
        try control.ping()  // the daemon serves others meanwhile
        kill(child, SIGCONT)
        go.send("go")
        #expect(waitChild(child, timeoutSeconds: 60) == 0)
    }

    @Test("a spawn flood hits --max-threads-per-space with a sentence naming it, while another client's runs complete")
    func floodHitsTheLimit() throws {
        let daemon = try TestDaemon(extra: ["--max-threads-per-space", "3000"])
        let h = Handshake()
        defer { h.close() }
        let flooder = forkChild {
            guard let fd = try? daemon.rawConnection() else { return 2 }
            let spawn = SpawnRequest(program: .builtin(.spin), args: [1000], groups: 4, persistentNanos: 600_000_000_000)
            var next: UInt64 = 1
            while true {
                // Pipelined without waiting for each reply, as a flooding client would.
                for _ in 0..<64 { _ = try? SeqPacketSocket.send(fd.raw, MessageCodec.encode(.spawn(spawn), id: next)); next += 1 }
                for _ in 0..<64 {
                    switch rawReply(fd.raw) {
                    case .spawned?: continue
                    case .error(let e)?:
                        h.send(e.code == .resourceExhausted && e.message.contains("--max-threads-per-space") ? "limit" : "wrong \(e)")
                        pause()
                        return 0
                    default: return 3
                    }
                }
            }
        }
        defer { kill(flooder, SIGKILL); _ = waitChild(flooder) }
        #expect(h.receive(timeoutSeconds: 60) == "limit")
        // The flooder's 3,000 threads keep running; a well-behaved client still gets its work done.
        let device = try Device(daemon.options())
        let memory = try device.mirror(bytes: 1 << 20)
        let start = monotonicNanos()
        for _ in 0..<20 {
            let r = try device.run(.saxpy, args: [65_536, UInt64(Float(2).bitPattern), memory.address, memory.address + (512 << 10)],
                                   groups: 256, timeoutSeconds: 30)
            #expect(r.state == .finished)
        }
        let seconds = Double(monotonicNanos() - start) / 1e9
        #expect(seconds < 20, "20 small runs took \(seconds) s beside a flood")
        #expect(try daemon.control().ps().spaces.first { $0.pid == flooder }?.threads.count == 3000)
    }

    @Test("beside another space's work, a client's spawns wait (not refused) once it has --max-queued-threads-per-space not started")
    func queuedThreadsHoldBackSpawns() throws {
        let limit = 8
        let daemon = try TestDaemon(extra: ["--max-queued-threads-per-space", "\(limit)"])
        let h = Handshake()
        defer { h.close() }
        // Another address space with work on the device for the whole test.
        let neighbour = forkChild {
            guard let device = try? Device(daemon.options()),
                  (try? device.spawn(.spin, args: [1000], groups: 4, persistentSeconds: 600)) != nil else { return 2 }
            h.send("busy")
            pause()
            return 0
        }
        defer { kill(neighbour, SIGKILL); _ = waitChild(neighbour) }
        #expect(h.receive(timeoutSeconds: 30) == "busy")
        // 32 long threads as fast as the library sends them: each starts with a probe of one
        // group of the longest spin, so they start far slower than they are spawned.
        let device = try Device(daemon.options())
        var spawned: [DeviceThreadHandle] = []
        for _ in 0..<32 {
            spawned.append(try device.spawn(.spin, args: [BuiltinKernel.maxSpinIterations], groups: 4096))
        }
        // When the last spawn was read, at most `limit` were waiting to start; since then some
        // can only have started.
        let mine = try #require(try daemon.control().ps().spaces.first { $0.pid == getpid() })
        let queued = mine.threads.filter { $0.state == .queued }.count
        #expect(mine.threads.count == 32)
        #expect(queued <= limit, "\(queued) threads queued, more than --max-queued-threads-per-space \(limit)")
        for t in spawned { _ = try device.kill(t) }
    }

    @Test("a client with 100,000 threads is torn down in linear time, and ps pages through them")
    func hundredThousandThreads() throws {
        let daemon = try TestDaemon(extra: ["--max-threads-per-space", "200000"])
        let h = Handshake()
        defer { h.close() }
        let n = 100_000
        let child = forkChild {
            guard let fd = try? daemon.rawConnection(), Self.spawnMany(fd.raw, n)?.count == n else { return 2 }
            h.send("ready")
            pause()
            return 0
        }
        #expect(h.receive(timeoutSeconds: 240) == "ready")
        let control = try daemon.control()
        let mine = try #require(try control.ps().spaces.first { $0.pid == child })
        #expect(mine.threads.count == n)
        #expect(Set(mine.threads.map(\.thread)).count == n, "every thread once across pages")
        kill(child, SIGKILL)
        let t = try #require(try control.awaitTeardown(pid: child, timeoutSeconds: 120).last)
        let seconds = Double(t.releasedNanos - t.noticeNanos) / 1e9
        #expect(t.threadsKilled == UInt32(n))
        // Quadratic removal took 4.8 s at 100k on a faster machine (issue 11); linear is ~0.3 s here.
        #expect(seconds < 2.5, "teardown of \(n) threads took \(seconds) s")
        try control.ping()
        _ = waitChild(child)
    }

    @Test("a paged ps lists 20,000 threads exactly once, through the CLI too")
    func pagedPs() throws {
        let daemon = try TestDaemon()
        let fd = try daemon.rawConnection()
        let ids = try #require(Self.spawnMany(fd.raw, 20_000))
        let table = try daemon.control().ps()
        let shown = table.spaces.filter { $0.pid == getpid() }.flatMap(\.threads).map(\.thread)
        #expect(shown.count == 20_000 && Set(shown) == Set(ids))
        let run = try runTether(["ps", "--socket", daemon.socketPath, "--json"])
        #expect(run.status == 0)
        #expect(run.stdout.components(separatedBy: "\"thread\"").count - 1 >= 20_000)
    }

    @Test("a timelines read after 3,000 teardowns pages through all of them; awaitTeardown answers the newest")
    func pagedTimelines() throws {
        let daemon = try TestDaemon()
        let control = try daemon.control()
        var spaces = Set<SpaceID>()
        for round in 0..<3000 {
            // Closing the only connection releases the space (reason release). A hello the daemon
            // read before the previous connection's end of file would join that space (same live
            // owner), so each round waits for the release before the next hello. 3,000 timelines
            // would not fit one message: awaitTeardown answers the newest few.
            let fd = try SeqPacketSocket.connect(path: daemon.socketPath)
            guard case .hello(let h)? = rawRequest(fd.raw, .hello(policy: nil, backend: .auto)) else { Issue.record("hello failed"); return }
            spaces.insert(h.space)
            fd.close()
            let answer = try control.awaitTeardown(pid: getpid(), timeoutSeconds: 10)
            guard answer.last?.space == h.space, answer.count == min(round + 1, 64) else {
                Issue.record("round \(round): awaitTeardown answered \(answer.count) timelines, the last of space \(String(describing: answer.last?.space)), not \(h.space)")
                return
            }
        }
        #expect(spaces.count == 3000)
        #expect(Self.eventually(60) { ((try? control.timelines(pid: getpid())) ?? []).count == spaces.count })
    }

    @Test("teardown waiters are capped per connection and dropped with their connection")
    func waitersGoWithTheirConnection() throws {
        let daemon = try TestDaemon(extra: ["--max-waiters-per-connection", "100", "--max-waiters-per-user", "150"])
        let h = Handshake()
        defer { h.close() }
        let victim = forkChild {
            guard let fd = try? daemon.rawConnection().release() else { return 2 }
            h.send("ready")
            pause()
            close(fd)
            return 0
        }
        defer { kill(victim, SIGKILL); _ = waitChild(victim) }
        #expect(h.receive() == "ready")
        func register(_ fd: Int32, _ count: Int) -> Reply? {
            for i in 0..<count {
                try? SeqPacketSocket.send(fd, MessageCodec.encode(.awaitTeardown(pid: victim, timeoutMillis: 600_000), id: UInt64(i + 1)))
            }
            // Only a refusal is answered now; a ping behind them proves every one was handled.
            try? SeqPacketSocket.send(fd, MessageCodec.encode(.ping, id: 999_999))
            while let reply = rawReply(fd, timeoutSeconds: 10) {
                if case .pong = reply { return nil }
                return reply
            }
            return .error(TetherError(.timedOut, "no answer"))
        }
        let first = try SeqPacketSocket.connect(path: daemon.socketPath).release()
        #expect(register(first, 100) == nil)
        let refused = register(first, 1)
        guard case .error(let e)? = refused else { Issue.record("the 101st waiter was not refused: \(String(describing: refused))"); return }
        #expect(e.code == .resourceExhausted && e.message.contains("--max-waiters-per-connection"))
        close(first)  // its 100 waiters must go with it
        let second = try SeqPacketSocket.connect(path: daemon.socketPath)
        // 100 more fit under the per-user cap of 150 only if the first connection's were dropped.
        #expect(Self.eventually(10) { register(second.raw, 1) == nil })
        #expect(register(second.raw, 99) == nil)
        let third = try SeqPacketSocket.connect(path: daemon.socketPath)
        if case .error(let e)? = register(third.raw, 51) {
            #expect(e.message.contains("--max-waiters-per-user"))
        } else {
            Issue.record("the per-user cap was not applied")
        }
    }

    @Test("out of fds, the daemon turns new clients away with a sentence and does not spin; it recovers")
    func emfileDoesNotSpin() throws {
        let daemon = try TestDaemon(launcher: ["/usr/bin/prlimit", "--nofile=48:48", "--"])
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        var refusal: TetherError?
        for _ in 0..<100 {
            let fd = try SeqPacketSocket.connect(path: daemon.socketPath, timeoutSeconds: 5).release()
            // The refusal may already wait on the socket (and the send fail): read either way.
            _ = try? SeqPacketSocket.send(fd, MessageCodec.encode(.ping, id: 7))
            let reply = rawReply(fd, timeoutSeconds: 5)
            if case .pong? = reply { held.append(fd); continue }
            close(fd)
            if case .error(let e)? = reply { refusal = e }
            break
        }
        let e = try #require(refusal, "the daemon never ran out of fds")
        #expect(e.code == .resourceExhausted && e.message.contains("out of file descriptors"))
        // A library client at the limit fails within its timeout with that sentence, never hangs.
        let start = monotonicNanos()
        #expect(throws: TetherError.self) { _ = try DaemonControl(socketPath: daemon.socketPath, timeoutSeconds: 3).ps() }
        #expect(Double(monotonicNanos() - start) / 1e9 < 6)
        // No spin: over one second at the limit with a client knocking, little CPU.
        let before = daemon.cpuTicks()
        let knocker = try SeqPacketSocket.connect(path: daemon.socketPath, timeoutSeconds: 5)
        _ = rawReply(knocker.raw, timeoutSeconds: 1)
        usleep(1_000_000)
        let ticks = daemon.cpuTicks() - before
        #expect(ticks < 30, "the daemon used \(ticks) ticks in ~2 s at EMFILE")
        for fd in held { close(fd) }
        held.removeAll()
        #expect(Self.eventually(10) { (try? DaemonControl(socketPath: daemon.socketPath, timeoutSeconds: 3).ping()) != nil })
    }

    @Test("a sparse memfd is refused, so the daemon never faults a client's pages in; the library's mirror is allocated by the client")
    func sparseRegionRefused() throws {
        let daemon = try TestDaemon()
        let fd = try daemon.rawConnection()
        let size = 256 << 20
        let memfd = try Memfd.create(name: "sparse", size: size, allocate: false)
        let mapping = try SharedMapping(fd: memfd.raw, size: size)
        let before = rssShmemKiB(daemon.pid)
        let reply = rawRequest(fd.raw, .mirror(ownerBase: mapping.address, size: UInt64(size)), fds: [memfd.raw])
        guard case .error(let e)? = reply else { Issue.record("a sparse region was accepted: \(String(describing: reply))"); return }
        #expect(e.code == .invalidArgument && e.message.contains("not all allocated"))
        #expect(rssShmemKiB(daemon.pid) - before < 16 << 10)
        // The library allocates what it mirrors, in the client.
        let mine = rssShmemKiB(getpid())
        let device = try Device(daemon.options())
        let memory = try device.mirror(bytes: 64 << 20)
        #expect(rssShmemKiB(getpid()) - mine >= 60 << 10, "the mirrored pages are in the client's RSS")
        try device.unmirror(memory)
        // The daemon's own OOM score adjustment, where it may set one (as root here).
        let adj = (try? String(contentsOfFile: "/proc/\(daemon.pid)/oom_score_adj", encoding: .utf8)) ?? ""
        if hasCapability(24) {  // CAP_SYS_RESOURCE: lowering the score needs it
            #expect(adj.trimmingCharacters(in: .whitespacesAndNewlines) == "-500")
        } else {
            print("oom_score_adj not checked: this test process lacks CAP_SYS_RESOURCE, so its daemon may not lower it")
        }
    }

    @Test("SIGHUP leaves the daemon serving; a regular file at --socket is not deleted")
    func signalsAndPaths() throws {
        let daemon = try TestDaemon()
        kill(daemon.pid, SIGHUP)
        try daemon.control().ping()
        let path = "/tmp/tether-tests-\(getuid())/not-a-socket-\(getpid())"
        try #require(FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8)))
        defer { unlink(path) }
        let run = try runTetherBounded(["daemon", "--socket", path, "--backend", "software"])
        #expect(run.status != 0 && run.stderr.contains("not a socket"))
        #expect((try? String(contentsOfFile: path, encoding: .utf8)) == "keep me")
    }

    @Test("the CLI names what was wrong: --policy 0, --size -1; --policy's help names its default")
    func cliMessages() throws {
        let policy = try runTetherBounded(["daemon", "--policy", "0"])
        #expect(policy.status != 0 && policy.stderr.contains("'exit'") && !policy.stderr.contains("'1'"))
        // The help names the default and says what each policy means.
        let help = try runTether(["daemon", "--help"])
        #expect(help.stdout.contains("(default: exit)") && help.stdout.contains("whichever is first"), "\(help.stdout)")
        let size = try runTetherBounded(["run", "saxpy", "--local", "--size", "-1"])
        #expect(size.status != 0 && size.stderr.contains("--size must be a positive whole number"))
    }
}

/// `RssShmem` of /proc/PID/status in KiB: shared pages the process has mapped and touched.
func rssShmemKiB(_ pid: pid_t) -> Int {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") where line.hasPrefix("RssShmem:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }
    return -1
}

/// Whether this process's effective capability set holds capability number `bit`.
func hasCapability(_ bit: Int) -> Bool {
    let text = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
          let mask = UInt64(line.split(separator: "\t").last ?? "", radix: 16) else { return false }
    return mask & (1 << UInt64(bit)) != 0
}
