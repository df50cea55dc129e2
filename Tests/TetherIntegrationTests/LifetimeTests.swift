import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import Testing

/// The lifetime rules of DESIGN.md with real processes, a real daemon, real fork, SIGKILL and pidfds.
@Suite(.serialized) struct LifetimeTests {
    /// A child that opens the device, mirrors `mib` MiB, starts a long spin thread, says "ready",
    /// then waits on the handshake's read end (EOF) or exits as told.
    static func victim(_ daemon: TestDaemon, _ h: Handshake, mib: Int = 4, closeOnFork: Bool = true,
                       then: (Device) -> Int32 = { _ in pause(); return 0 }) -> pid_t {
        forkChild {
            do {
                let device = try Device(daemon.options(closeOnFork: closeOnFork))
                let m = try device.mirror(bytes: mib << 20)
                memset(m.base, 1, m.size)
                _ = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
                h.send("ready")
                return then(device)
            } catch {
                h.send("error \(error)")
                return 1
            }
        }
    }

    @Test("SIGKILL of the owner tears its address space down at once under the exit policy")
    func sigkillTearsDown() throws {
        let daemon = try TestDaemon()
        let h = Handshake()
        defer { h.close() }
        let pid = Self.victim(daemon, h)
        #expect(h.receive() == "ready")
        let control = try daemon.control()
        #expect(try control.ps().spaces.contains { $0.pid == pid && $0.threads.count == 1 && $0.regions == 1 })
        kill(pid, SIGKILL)
        let timelines = try control.awaitTeardown(pid: pid, timeoutSeconds: 10)
        let t = try #require(timelines.last)
        #expect(["pidfd", "release", "bpf-sigkill", "bpf-exit"].contains(t.reason))
        #expect(t.threadsKilled == 1 && t.regionsFreed == 1)
        #expect(t.noticeNanos <= t.quiescedNanos && t.quiescedNanos <= t.releasedNanos)
        #expect(try control.ps().spaces.allSatisfy { $0.pid != pid })
        _ = waitChild(pid)
    }

    @Test("a normal exit releases everything too")
    func normalExit() throws {
        let daemon = try TestDaemon()
        let h = Handshake()
        defer { h.close() }
        let pid = Self.victim(daemon, h) { _ in 0 }
        #expect(h.receive() == "ready")
        let t = try #require(try daemon.control().awaitTeardown(pid: pid, timeoutSeconds: 10).last)
        #expect(t.regionsFreed == 1)
        #expect(waitChild(pid) == 0)
        #expect(try daemon.control().ps().spaces.isEmpty)
    }

    @Test("fork-exit: under exit the owner's work dies although its child holds the fd; under release it lives",
          arguments: [LifetimePolicy.exit, .release])
    func forkExit(policy: LifetimePolicy) throws {
        let run = try runTether(["scenario", "fork-exit", "--policy", policy.description, "--backend", "software",
                                 "--mib", "8", "--child-seconds", "0.5", "--json"])
        #expect(run.status == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(json["childAlive"] as? Bool == true)
        if policy == .exit {
            #expect(json["ownerThreadsAfter"] as? Int == 0)
            #expect(json["ownerRegionsAfter"] as? Int == 0)
            #expect(json["releasedMicros"] as? Double != nil)
        } else {
            #expect(json["ownerThreadsAfter"] as? Int == 1)
            #expect(json["ownerRegionsAfter"] as? Int == 1)
            #expect(json["releasedMicros"] == nil)
            #expect((json["livedOnMicros"] as? Double ?? 0) > 400_000)
        }
    }

    @Test("after its owner's teardown, a connection still held elsewhere answers ownerExited to everything")
    func orphanedConnectionAnswersOwnerExited() throws {
        let daemon = try TestDaemon(policy: .exit)
        let h = Handshake()
        defer { h.close() }
        // A binds a connection and forks B, which keeps it; A exits; B asks on the orphan.
        let a = forkChild {
            guard let fd = try? daemon.rawConnection() else { return 1 }
            let owner = getpid()
            let b = fork()
            if b == 0 {
                guard let control = try? daemon.control(),
                      (try? control.awaitTeardown(pid: owner, timeoutSeconds: 10))?.isEmpty == false else { tether_exit_now(2) }
                let status = errorCode(rawRequest(fd.raw, .status(ThreadID(rawValue: 1))))
                let spawn = errorCode(rawRequest(fd.raw, .spawn(SpawnRequest(program: .builtin(.spin), args: [1], groups: 1))))
                h.send(status == .ownerExited && spawn == .ownerExited ? "ok" : "got \(String(describing: status)) \(String(describing: spawn))")
                tether_exit_now(0)
            }
            return 0
        }
        #expect(waitChild(a) == 0)
        #expect(h.receive() == "ok")
    }

    @Test("a forked child using its parent's connection is refused with notOwner; the owner resumes its space on a new one")
    func childOnParentConnectionIsRefused() throws {
        let daemon = try TestDaemon()
        let fd = try daemon.rawConnection()
        guard case .hello(let first)? = rawRequest(fd.raw, .hello(policy: nil, backend: .auto)) else {
            Issue.record("hello failed")
            return
        }
        let child = forkChild {
            errorCode(rawRequest(fd.raw, .status(ThreadID(rawValue: 1)))) == .notOwner ? 0 : 1
        }
        #expect(waitChild(child) == 0)
        // The shared connection was severed for every holder ...
        #expect(rawRequest(fd.raw, .status(ThreadID(rawValue: 1))) == nil)
        // ... and the owner, still alive, finds its address space again on a new one.
        let again = try daemon.rawConnection()
        guard case .hello(let second)? = rawRequest(again.raw, .hello(policy: nil, backend: .auto)) else {
            Issue.record("hello on the new connection failed")
            return
        }
        #expect(second.space == first.space)
        #expect(errorCode(rawRequest(again.raw, .status(ThreadID(rawValue: 1)))) == .noSuchThread)
    }

    @Test("the library notices the fork and opens a connection of its own in the child",
          arguments: [true, false])
    func childGetsItsOwnConnection(closeOnFork: Bool) throws {
        let daemon = try TestDaemon()
        let device = try Device(daemon.options(closeOnFork: closeOnFork))
        let memory = try device.mirror(bytes: 4096)
        let parentSpace = device.hello.space
        let child = forkChild {
            do {
                // The parent's memory is not the child's: not mapped here, not a region of its own.
                guard msync(memory.base, memory.size, MS_ASYNC) != 0, errno == ENOMEM else { return 4 }
                guard (try? device.unmirror(memory)) == nil else { return 5 }
                // Memory of its own works: saxpy in the child's own space.
                let mine = try device.mirror(bytes: 4096)
                let x = mine.base.bindMemory(to: Float.self, capacity: 512)
                for i in 0..<256 { x[i] = Float(i); x[256 + i] = 1 }
                let a: Float = 2
                let t = try device.spawn(.saxpy, args: [256, UInt64(a.bitPattern), mine.address, mine.address + 1024], groups: 1)
                let r = try device.wait(t, timeoutSeconds: 10)
                guard r.state == .finished, x[256 + 3] == 7 else { return 2 }
                return device.hello.space != parentSpace ? 0 : 3
            } catch {
                return 1
            }
        }
        #expect(waitChild(child) == 0)
        // The parent's connection still works after the child came and went.
        _ = try device.spawn(.spin, args: [10], groups: 1)
        device.close()
    }

    @Test("a connection fd passed with SCM_RIGHTS is refused in the receiving process")
    func passedFdIsRefused() throws {
        let daemon = try TestDaemon()
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        // The receiver forks before the connection exists: it can only get the fd by passing.
        let receiver = forkChild {
            guard case .message(var m) = try? SeqPacketSocket.receive(pair[1], capacity: 64) else { return 1 }
            let fds = m.takeFds()
            guard fds.count == 1 else { return 2 }
            return errorCode(rawRequest(fds[0], .status(ThreadID(rawValue: 1)))) == .notOwner ? 0 : 3
        }
        let fd = try daemon.rawConnection()
        try SeqPacketSocket.send(pair[0], [1], fds: [fd.raw])
        #expect(waitChild(receiver) == 0)
    }

    @Test("exec of the owner closes its connection (CLOEXEC) and tears the old image's work down")
    func execTearsDown() throws {
        let daemon = try TestDaemon()
        let h = Handshake()
        defer { h.close() }
        let pid = Self.victim(daemon, h) { _ in
            let args = ["/bin/sleep", "30"]
            var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
            execv("/bin/sleep", &argv)
            return 9
        }
        #expect(h.receive() == "ready")
        let t = try #require(try daemon.control().awaitTeardown(pid: pid, timeoutSeconds: 10).last)
        #expect(t.reason == "release" || t.reason == "bpf-exec")
        #expect(t.threadsKilled == 1)
        #expect(kill(pid, 0) == 0, "the process itself lives on as /bin/sleep")
        kill(pid, SIGKILL)
        _ = waitChild(pid)
    }

    @Test("after teardown the daemon holds no mapping or fd of the dead process, and its device work stops")
    func nothingLeaks() throws {
        let daemon = try TestDaemon()
        let control = try daemon.control()
        _ = try control.ps()  // the control connection itself is open from here on
        let before = daemon.resources()
        let h = Handshake()
        defer { h.close() }
        let pid = Self.victim(daemon, h, mib: 16)
        #expect(h.receive() == "ready")
        let during = daemon.resources()
        #expect(during.memfdMappings == before.memfdMappings + 1)
        kill(pid, SIGKILL)
        _ = try #require(try control.awaitTeardown(pid: pid, timeoutSeconds: 10).last)
        _ = waitChild(pid)
        let after = daemon.resources()
        #expect(after.memfdMappings == before.memfdMappings)
        #expect(after.fds == before.fds, "daemon fds: \(daemon.fdTargets())")
        // Spinning on the software backend burns both cores; a stopped device burns nothing.
        let t0 = daemon.cpuTicks()
        var ts = timespec(tv_sec: 0, tv_nsec: 300_000_000)
        nanosleep(&ts, nil)  // a measurement window, not synchronisation
        let ticks = daemon.cpuTicks() - t0
        #expect(ticks < 10, "daemon used \(ticks) ticks of CPU in 300 ms after teardown")
    }

    @Test("a client waiting on a join gets deviceLost, not its timeout, when the daemon is killed")
    func daemonKilledUnderWaitingClient() async throws {
        let daemon = try TestDaemon()
        let device = try Device(daemon.options())
        let t = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        let daemonPid = daemon.pid
        let killer = startJoinableThread {
            usleep(200_000)  // the join is waiting by then (a kill before it is answered the same way)
            kill(daemonPid, SIGKILL)
        }
        defer { pthread_join(killer, nil) }
        let start = monotonicNanos()
        do {
            _ = try await device.join(t, timeoutSeconds: 60)
            Issue.record("join returned although the daemon died")
        } catch {
            #expect(error.code == .deviceLost)
        }
        // Alone this takes ~0.3 s. How long it takes beside the other suites is the cooperative
        // pool's (two threads on two cores), which their blocking calls share: the join resumes
        // only once one is free, 5–6 s and once 26 s in fresh-clone CI runs. So the bound is only
        // below the join's own 60 s timeout; `RingTests.daemonDeathUnderRingWaiter` bounds the
        // blocking `wait` at 5 s.
        #expect(monotonicNanos() - start < 50_000_000_000)
        #expect(throws: TetherError.self) { try device.status(t) }
    }

    @Test("policy override per connection: a release client on an exit daemon keeps its work while a child holds the fd")
    func policyOverride() throws {
        let daemon = try TestDaemon(policy: .exit)
        let h = Handshake()
        defer { h.close() }
        let pid = forkChild {
            do {
                let device = try Device(daemon.options(closeOnFork: false, policy: .release))
                _ = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
                let holder = fork()
                if holder == 0 { pause(); tether_exit_now(0) }
                h.send("ready \(holder)")
                pause()
                return 0
            } catch {
                h.send("error \(error)")
                return 1
            }
        }
        let line = try #require(h.receive())
        let holder = try #require(pid_t(line.dropFirst(6)))
        kill(pid, SIGKILL)
        _ = waitChild(pid)
        let control = try daemon.control()
        #expect(try control.awaitTeardown(pid: pid, timeoutSeconds: 0.3).isEmpty, "release: no teardown while the holder lives")
        #expect(try control.ps().spaces.first { $0.pid == pid }?.policy == .release)
        kill(holder, SIGKILL)
        #expect(try control.awaitTeardown(pid: pid, timeoutSeconds: 10).last?.reason == "release")
    }
}
