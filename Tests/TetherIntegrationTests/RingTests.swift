import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import Testing

/// User-mode submission queues: spawn, run, join, kill and status over rings in shared memory,
/// with real daemons and real processes. Every client is hostile to the daemon: what it writes
/// into its rings must cost it an error, never harm the daemon or another client.
@Suite(.serialized) struct RingTests {
    /// A raw client: a bound connection with rings attached that the test writes by hand.
    final class RawRings {
        let fd: OwnedDescriptor
        let memory: RingMemory
        /// The completion doorbell the daemon signals (nobody reads it: the test polls).
        let doorbellFD: OwnedDescriptor

        init(_ daemon: TestDaemon, entries: UInt32 = 4) throws {
            fd = try daemon.rawConnection()
            let layout = try RingLayout(sqEntries: entries, cqEntries: entries)
            let size = Memfd.pageRounded(layout.bytes)
            let memfd = try Memfd.create(name: "ring-test", size: size)
            memory = try RingMemory(mapping: memfd.raw, layout: layout)
            memory.initialise()
            doorbellFD = OwnedDescriptor(adopting: eventfd(0, Int32(EFD_CLOEXEC)))
            let reply = rawRequest(fd.raw, .attachRings(sqEntries: entries, cqEntries: entries), fds: [memfd.raw, doorbellFD.raw])
            guard case .done? = reply else { throw TetherError(.deviceError, "attachRings: \(String(describing: reply))") }
        }

        /// Queues one packet at the ring's current tail and rings the doorbell.
        func submit(_ bytes: [UInt8]) throws {
            let tail = memory.load(RingLayout.sqTailOffset)
            RingSlot.write(bytes, to: memory.slot(memory.layout.sqSlot(tail)))
            memory.store(RingLayout.sqTailOffset, tail &+ 1)
            try doorbell()
        }

        func doorbell() throws { try SeqPacketSocket.send(fd.raw, MessageCodec.encode(.ringDoorbell, id: 0)) }

        /// The next completion, polled for up to `seconds`.
        func completion(seconds: Double = 10) -> (UInt64, Reply)? {
            let deadline = monotonicNanos() + UInt64(seconds * 1e9)
            let head = memory.load(RingLayout.cqHeadOffset)
            while monotonicNanos() < deadline {
                if memory.load(RingLayout.cqTailOffset) != head {
                    let bytes = try? RingSlot.read(from: memory.slot(memory.layout.cqSlot(head)))
                    memory.store(RingLayout.cqHeadOffset, head &+ 1)
                    return bytes.flatMap { try? MessageCodec.decodeReply($0) }
                }
                usleep(100)
            }
            return nil
        }
    }

    @Test("calls travel over the rings by default; a 2-entry ring wraps around thousands of times under 4 threads, nothing lost",
          arguments: ["software", "vulkan"])
    func wrapAroundAndBackPressure(backend: String) throws {
        let daemon = try TestDaemon(backend: backend)
        var options = daemon.options()
        options.ringEntries = 2
        let device = try Device(options)
        #expect(device.usesRings)
        let perThread = backend == "software" ? 400 : 60
        let failures = Locked(0)
        let done = Locked(0)
        var threads: [pthread_t] = []
        for _ in 0..<4 {
            threads.append(startJoinableThread {
                for i in 0..<perThread {
                    do throws(TetherError) {
                        if i % 2 == 0 {
                            let r = try device.run(.spin, args: [1], groups: 1, timeoutSeconds: 30)
                            if r.state != .finished { failures.withLock { $0 += 1 } }
                        } else {
                            let t = try device.spawn(.spin, args: [1], groups: 1)
                            _ = try device.status(t)
                            if try device.wait(t, timeoutSeconds: 30).state != .finished { failures.withLock { $0 += 1 } }
                        }
                        done.withLock { $0 += 1 }
                    } catch {
                        failures.withLock { $0 += 1 }
                    }
                }
            })
        }
        for t in threads { pthread_join(t, nil) }
        #expect(failures.withLock { $0 } == 0)
        #expect(done.withLock { $0 } == 4 * perThread)
        // A kill over the rings too.
        let long = try device.spawn(.spin, args: [BuiltinKernel.maxSpinIterations], groups: 64, persistentSeconds: 60)
        #expect(try device.kill(long))
        #expect(try device.wait(long, timeoutSeconds: 10).state == .killed)
    }

    @Test("the socket path stays available: rings off, every call still works")
    func socketPathWhenRingsOff() throws {
        let daemon = try TestDaemon()
        var options = daemon.options()
        options.rings = false
        let device = try Device(options)
        #expect(!device.usesRings)
        #expect(try device.run(.spin, args: [1], groups: 1).state == .finished)
    }

    @Test("garbage indices in a submission ring: a clear error and the connection closed; the daemon and another client carry on")
    func garbageIndices() throws {
        let daemon = try TestDaemon()
        let bystander = try Device(daemon.options())
        #expect(bystander.usesRings)
        let raw = try RawRings(daemon)
        // A tail far beyond what the ring can hold.
        raw.memory.store(RingLayout.sqTailOffset, 1_000_000)
        try raw.doorbell()
        guard case .error(let e)? = rawReply(raw.fd.raw) else {
            Issue.record("no error for a corrupt ring")
            return
        }
        #expect(e.code == .malformedMessage)
        #expect(e.message.contains("submission ring"))
        // Then the connection is closed.
        #expect(rawReply(raw.fd.raw, timeoutSeconds: 5) == nil)
        #expect(try bystander.run(.spin, args: [1], groups: 1).state == .finished)
        try daemon.control().ping()
    }

    @Test("garbage packets in a ring (a bad length, random bytes, a socket-only request, no ring bit) get error replies; the ring goes on")
    func garbagePackets() throws {
        let daemon = try TestDaemon()
        let raw = try RawRings(daemon, entries: 4)
        // A slot that claims more bytes than a slot holds: an error with id 0, over the socket.
        let tail = raw.memory.load(RingLayout.sqTailOffset)
        raw.memory.slot(raw.memory.layout.sqSlot(tail)).storeBytes(of: UInt32(99_999), as: UInt32.self)
        raw.memory.store(RingLayout.sqTailOffset, tail &+ 1)
        try raw.doorbell()
        #expect(errorCode(rawReply(raw.fd.raw)) == .malformedMessage)
        // Random bytes: not a message.
        var rng = SplitMix64(seed: 14)
        try raw.submit((0..<100).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
        #expect(errorCode(rawReply(raw.fd.raw)) == .malformedMessage)
        // A request that never travels over the rings, with a ring id: its error comes to the completion ring.
        try raw.submit(MessageCodec.encode(.ps, id: RingRequestID.bit | 5))
        let refused = raw.completion()
        #expect(refused?.0 == RingRequestID.bit | 5)
        if case .error(let e)? = refused?.1 { #expect(e.code == .invalidArgument) } else { Issue.record("no error for ps over a ring") }
        // A ring request without the ring bit: refused with its id, in the completion ring (every
        // reply to the owner goes there once the connection has rings).
        try raw.submit(MessageCodec.encode(.status(ThreadID(rawValue: 1)), id: 7))
        let unmarked = raw.completion()
        #expect(unmarked?.0 == 7)
        if case .error(let e)? = unmarked?.1 { #expect(e.code == .malformedMessage) } else { Issue.record("no error for a packet without the ring bit") }
        // After all that, a good packet works: 4 entries, 5 packets, so the ring wrapped too.
        try raw.submit(MessageCodec.encode(.run(SpawnRequest(program: .builtin(.spin), args: [1], groups: 1)), id: RingRequestID.bit | 9))
        let ran = raw.completion()
        #expect(ran?.0 == RingRequestID.bit | 9)
        if case .joined(let r)? = ran?.1 { #expect(r.state == .finished) } else { Issue.record("run over the raw ring: \(String(describing: ran))") }
    }

    @Test("a forked child inherits no rings (MADV_DONTFORK) and gets its own with its own connection")
    func forkedChildHasNoRings() throws {
        let daemon = try TestDaemon()
        let device = try Device(daemon.options())
        #expect(device.usesRings)
        #expect(try device.run(.spin, args: [1], groups: 1).state == .finished)
        // Tests running beside this one have rings of their own: at least ours.
        #expect(ringMappings() >= 1)
        let pid = forkChild {
            // The child has none of them (every library mapping is MADV_DONTFORK), so it counts exactly.
            // Before any call: the parent's rings are not mapped here.
            if ringMappings() != 0 { return 2 }
            guard (try? device.run(.spin, args: [1], groups: 1).state) == .finished else { return 3 }
            guard device.usesRings, ringMappings() == 1 else { return 4 }
            return 0
        }
        #expect(waitChild(pid) == 0)
        #expect(try device.run(.spin, args: [1], groups: 1).state == .finished)
    }

    @Test("a client SIGKILLed in the middle of submitting leaves the daemon unharmed and its space released")
    func killedMidSubmission() throws {
        let daemon = try TestDaemon()
        let ready = Handshake()
        let pid = forkChild {
            guard let device = try? Device(daemon.options()) else { return 2 }
            ready.send("go")
            while true { _ = try? device.spawn(.spin, args: [1], groups: 1) }
        }
        #expect(ready.receive() == "go")
        usleep(50_000)
        kill(pid, SIGKILL)
        _ = waitChild(pid)
        let control = try daemon.control()
        let timelines = try control.awaitTeardown(pid: pid, timeoutSeconds: 10)
        #expect(!timelines.isEmpty)
        let other = try Device(daemon.options())
        #expect(try other.run(.spin, args: [1], groups: 1).state == .finished)
        ready.close()
    }

    @Test("the daemon killed while a client sleeps on a ring completion: deviceLost within 5 s")
    func daemonDeathUnderRingWaiter() throws {
        let daemon = try TestDaemon()
        let device = try Device(daemon.options())
        #expect(device.usesRings)
        let t = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        let daemonPid = daemon.pid
        let killer = startJoinableThread {
            usleep(200_000)  // the waiter is past its polling and asleep by then
            kill(daemonPid, SIGKILL)
        }
        let start = monotonicNanos()
        #expect(throws: TetherError.self) { _ = try device.wait(t, timeoutSeconds: 60) }
        do { _ = try device.wait(t, timeoutSeconds: 60) } catch { #expect(error.code == .deviceLost) }
        #expect(monotonicNanos() - start < 5_000_000_000)
        pthread_join(killer, nil)
    }

    @Test("replies a full completion ring cannot take are held, not sent over the socket: 200 joins through a 2-entry ring all arrive",
          arguments: ["software", "vulkan"])
    func fullCompletionRingHoldsReplies(backend: String) async throws {
        let daemon = try TestDaemon(backend: backend)
        var options = daemon.options()
        options.ringEntries = 2
        options.ringSpinMicroseconds = 0  // every caller sleeps: the eventfd and the held replies do all the work
        let device = try Device(options)
        #expect(device.usesRings)
        let threads = try (0..<200).map { _ throws(TetherError) in try device.spawn(.spin, args: [1], groups: 1) }
        let states = try await withThrowingTaskGroup(of: ThreadState.self) { group in
            for t in threads { group.addTask { try await device.join(t, timeoutSeconds: 30).state } }
            return try await group.reduce(into: [ThreadState]()) { $0.append($1) }
        }
        #expect(states.count == 200 && states.allSatisfy { $0 == .finished })
        // A socket reply larger than the ring (a long error sentence) still arrives.
        #expect(throws: TetherError.self) { try device.status(DeviceThreadHandle(id: ThreadID(rawValue: 0xdead))) }
        device.close()
    }

    /// Default flags; the worker's small slices and the idle window off; a 100 ms idle window
    /// (polling after a run that ended on the worker must still stop).
    static let pollingFlags: [[String]] = [[], ["--no-small-slices-on-worker", "--ring-idle-poll-us", "0"],
                                           ["--ring-idle-poll-us", "100000"]]

    @Test("a client waiting on the event loop's own CPU is not held off it by the event loop's polling",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/taskset"), "taskset (util-linux) is not installed; skipped"))
    func clientOnTheEventLoopsCPU() throws {
        // The daemon and the client on one CPU, and a 2 ms polling window: an event loop that
        // polled there, in its real-time class, would keep the client off the CPU for the whole
        // window after every reply, so each round trip would take at least 2 ms.
        let pin = ["/usr/bin/taskset", "-c", "\(max(0, tether_current_cpu()))"]
        let daemon = try TestDaemon(extra: ["--ring-poll-us", "2000"], launcher: pin)
        let run = try runTether(["bench", "dispatch", "--socket", daemon.socketPath, "--runs", "200", "--samples"], launcher: pin)
        #expect(run.status == 0, "\(run.stderr)")
        let samples = run.stdout.split(separator: "\n").compactMap { UInt64($0) }.sorted()
        #expect(samples.count == 200)
        let median = samples.isEmpty ? .max : samples[samples.count / 2]
        #expect(median < 1_000_000, "round trip median \(median) ns: the client waited out the event loop's polling")
    }

    @Test("an idle daemon with a client's rings attached uses no CPU once its polling window is over", arguments: pollingFlags)
    func idleDaemonUsesNoCPU(flags: [String]) throws {
        let daemon = try TestDaemon(extra: flags)
        let device = try Device(daemon.options())
        for _ in 0..<100 { #expect(try device.run(.spin, args: [1], groups: 1).state == .finished) }
        usleep(300_000)  // past the polling window
        let before = daemon.cpuTicks()
        usleep(1_000_000)
        let after = daemon.cpuTicks()
        // One clock tick is 10 ms: polling would show as ~100 ticks in this second.
        #expect(after - before <= 2, "the daemon used \(after - before) ticks while idle")
        withExtendedLifetime(device) {}
    }
}

/// How many mappings of the library's shared memfds (rings and mirrors) this process has.
func ringMappings() -> Int {
    let fd = open("/proc/self/maps", O_RDONLY)
    guard fd >= 0 else { return -1 }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").filter { $0.contains("memfd:tether-mirror") }.count
}
