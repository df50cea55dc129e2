import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import TetherTestSupport
import Testing

/// The ownership rules of docs/ownership.md, one test per way across the owner boundary, with
/// real processes, real daemons and (where there is device work) both backends.
@Suite(.serialized) struct OwnershipTests {
    static let backends = ["software", "vulkan"]

    // MARK: Rule 1 — mirrored memory is never inherited

    @Test("a forked child holding the connection pins none of its dead parent's mirrored memory", arguments: backends)
    func childPinsNoMemory(backend: String) throws {
        let daemon = try TestDaemon(backend: backend)
        let control = try daemon.control()
        let h = Handshake(), block = Handshake()
        defer { h.close(); block.close() }
        let mib = 256
        let baseline = shmemKiB()
        // P mirrors 256 MiB, runs two spins, forks W (which keeps the connection fd: closeOnFork
        // off) and waits; W blocks in read() on a pipe.
        let p = forkChild {
            do {
                let device = try Device(daemon.options(closeOnFork: false))
                let m = try device.mirror(bytes: mib << 20)
                memset(m.base, 7, m.size)
                for _ in 0..<2 { _ = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600) }
                let w = fork()
                if w == 0 {
                    Glibc.close(block.write)
                    var b: UInt8 = 0
                    _ = Glibc.read(block.read, &b, 1)
                    tether_exit_now(0)
                }
                h.send("ready \(w) \(device.connectionFD)")
                pause()
                return 0
            } catch {
                h.send("error \(error)")
                return 1
            }
        }
        let line = try #require(h.receive())
        let fields = line.split(separator: " ")
        try #require(fields.first == "ready", "\(line)")
        let w = try #require(pid_t(fields[1]))
        let peak = shmemKiB()
        #expect(peak - baseline > (mib - 32) << 10, "the mirror is counted in Shmem (baseline \(baseline) KiB, peak \(peak) KiB)")
        // Honest: W really holds the connection, and none of the memory.
        #expect(FileManager.default.fileExists(atPath: "/proc/\(w)/fd/\(fields[2])"))
        let held = holdsMemfd(w, named: "tether-mirror")
        #expect(!held.mapped && !held.fd, "the child maps or holds the parent's memfd")
        kill(p, SIGKILL)
        _ = waitChild(p)
        let t = try #require(try control.awaitTeardown(pid: p, timeoutSeconds: 20).last)
        #expect(t.regionsFreed == 1 && t.threadsKilled == 2)
        // Shmem back to its baseline (other processes on this machine move it too: a margin of
        // 32 MiB, and up to 10 s for the pages to be freed).
        let deadline = monotonicNanos() + 10_000_000_000
        var now = shmemKiB()
        while now - baseline > 32 << 10 && monotonicNanos() < deadline {
            var ts = timespec(tv_sec: 0, tv_nsec: 20_000_000)
            nanosleep(&ts, nil)  // polling a counter that has no event
            now = shmemKiB()
        }
        #expect(now - baseline <= 32 << 10, "Shmem \(now) KiB, baseline \(baseline) KiB, peak \(peak) KiB")
        #expect(kill(w, 0) == 0, "the child lives on")
        // W is P's child (reparented), not ours: waited for through a pidfd, not waitpid.
        let wfd = try Pidfd.open(w)
        kill(w, SIGKILL)
        #expect(try waitReadable(wfd.raw, timeoutMillis: 10_000))
    }

    // MARK: Rule 2 — a holder's shutdown() is not the owner's release

    @Test("a child's shutdown() of the inherited connection leaves its parent working, under both policies",
          arguments: backends, [LifetimePolicy.exit, .release])
    func childShutdownDoesNotEndParent(backend: String, policy: LifetimePolicy) async throws {
        let daemon = try TestDaemon(policy: policy, backend: backend)
        let device = try Device(daemon.options(closeOnFork: false))
        let space = device.hello.space
        let spin = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        async let pending: ThreadReport = device.join(spin, timeoutSeconds: 30)
        let fd = device.connectionFD
        let w = forkChild {
            // Really the inherited connection, still open here.
            guard fcntl(fd, F_GETFD) >= 0 else { return 2 }
            return Glibc.shutdown(fd, Int32(SHUT_RDWR)) == 0 ? 0 : 1
        }
        #expect(waitChild(w) == 0)
        // The parent's later calls work, in the same address space, with its thread still running.
        #expect(try device.status(spin).state == .running || device.status(spin).state == .queued)
        #expect(device.hello.space == space)
        #expect(try device.kill(spin))
        // The pending join survived the shutdown and reports the kill.
        let report = try await pending
        #expect(report.thread == spin.id && report.state == .killed)
        let ok = try device.spawn(.spin, args: [1], groups: 1)
        #expect(try device.wait(ok, timeoutSeconds: 10).state == .finished)
        let control = try daemon.control()
        #expect(try control.timelines(pid: getpid()).isEmpty, "the parent's space was never torn down")
        #expect(try control.ps().spaces.filter { $0.pid == getpid() }.map(\.space) == [space])
        device.close()
    }

    // MARK: Rule 3 — a holder can neither answer nor steal the owner's calls

    @Test("a child's requests and reads on the inherited connection never reach or starve the parent's calls",
          arguments: backends)
    func childCannotInjectOrSteal(backend: String) async throws {
        let daemon = try TestDaemon(backend: backend)
        let device = try Device(daemon.options(closeOnFork: false))
        let spin = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        async let pending: ThreadReport = device.join(spin, timeoutSeconds: 30)
        let fd = device.connectionFD
        let h = Handshake()
        defer { h.close() }
        let w = forkChild {
            // Pings with the ids the parent's library uses, then read everything for a second.
            for id in UInt64(1)...64 { try? SeqPacketSocket.send(fd, MessageCodec.encode(.ping, id: id)) }
            var seen: [String] = []
            let deadline = monotonicNanos() + 1_000_000_000
            while monotonicNanos() < deadline {
                guard (try? waitReadable(fd, timeoutMillis: 100)) == true else { continue }
                guard case .message(let m)? = try? SeqPacketSocket.receive(fd, capacity: Wire.maxMessageBytes) else { break }
                let decoded = try? MessageCodec.decodeReply(m.bytes)
                if case (0, .error(let e))? = decoded, e.code == .notOwner { seen.append("notOwner0") } else { seen.append("other") }
            }
            h.send(seen.contains("other") ? "answered \(seen)" : "refused \(seen.count)")
            return 0
        }
        let line = try #require(h.receive())
        #expect(line.hasPrefix("refused"), "the child got replies: \(line)")
        #expect(waitChild(w) == 0)
        // Nothing the child did reached the parent's calls: they go on and end right.
        #expect(try device.status(spin).thread == spin.id)
        #expect(try device.kill(spin))
        let report = try await pending
        #expect(report.thread == spin.id && report.state == .killed)
        let ok = try device.spawn(.spin, args: [1], groups: 1)
        #expect(try device.wait(ok, timeoutSeconds: 10).state == .finished)
        device.close()
    }

    @Test("a child that only reads the inherited connection takes none of the parent's replies or wake-ups",
          arguments: backends)
    func passiveReaderStealsNothing(backend: String) async throws {
        let daemon = try TestDaemon(backend: backend)
        let device = try Device(daemon.options(closeOnFork: false))
        #expect(device.usesRings)
        let fd = device.connectionFD
        let toParent = Handshake(), toChild = Handshake()
        defer { toParent.close(); toChild.close() }
        let w = forkChild {
            // Takes every message that reaches the shared socket, until told to stop.
            var taken: [String] = []
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: toChild.read, events: Int16(POLLIN), revents: 0)]
            toParent.send("reading")
            while poll(&fds, 2, 30_000) > 0, fds[1].revents == 0 {
                guard case .message(let m)? = try? SeqPacketSocket.receive(fd, into: ReceiveBuffer(capacity: Wire.maxMessageBytes), dontWait: true) else { continue }
                taken.append((try? MessageCodec.decodeReply(m.bytes)).map { "\($0.1)".prefix(40) }.map(String.init) ?? "undecodable")
            }
            toParent.send("took \(taken.count) \(taken)")
            return 0
        }
        #expect(toParent.receive() == "reading")
        // Socket calls (mirror, loadModule, a refused status, unmirror) and ring calls (spawn,
        // wait, status, kill, an async join): every reply must reach the parent, within bounds.
        let memory = try device.mirror(bytes: 1 << 20)
        if backend == "vulkan" { _ = try device.loadModule(spirv: try compileTestShader("two_sets")) }
        for _ in 0..<5 {
            let t = try device.spawn(.spin, args: [1], groups: 1, persistentSeconds: 0.2)
            #expect(try device.wait(t, timeoutSeconds: 10).state == .finished)
        }
        let spin = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        async let pending: ThreadReport = device.join(spin, timeoutSeconds: 10)
        #expect(try device.status(spin).thread == spin.id)
        #expect(throws: TetherError.self) { try device.status(DeviceThreadHandle(id: ThreadID(rawValue: 0xdead))) }
        #expect(try device.kill(spin))
        #expect(try await pending.state == .killed)
        try device.unmirror(memory)
        toChild.send("stop")
        #expect(toParent.receive() == "took 0 []", "the child read the parent's messages off the shared socket")
        #expect(waitChild(w) == 0)
        device.close()
    }

    // MARK: Rule 4 — a recycled pid is never the owner

    @Test("a new process with a dead owner's pid and its held fd is refused", arguments: backends)
    func recycledPidIsRefused(backend: String) throws {
        guard geteuid() == 0 else {
            print("skipped: making a process with a chosen pid (clone3 set_tid) needs root")
            return
        }
        let daemon = try TestDaemon(policy: .release, backend: backend)
        let control = try daemon.control()
        let h = Handshake()
        defer { h.close() }
        // H (single-threaded) forks P; P binds a connection, mirrors a page of floats, hands the
        // fd to H (which holds it: under release the space lives on) and exits; H reaps P and
        // makes Q with P's pid, holding the fd. Q asks to copy P's floats.
        let helper = forkChild {
            var pair: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &pair) == 0 else { return 10 }
            let p = forkChild {
                guard let fd = try? daemon.rawConnection(), let memfd = try? Memfd.create(name: "owner-floats", size: 8192),
                      let mapping = try? SharedMapping(fd: memfd.raw, size: 8192) else { return 1 }
                let floats = mapping.base.bindMemory(to: Float.self, capacity: 2048)
                for i in 0..<2048 { floats[i] = 42 }
                guard case .mirrored? = rawRequest(fd.raw, .mirror(ownerBase: mapping.address, size: 8192), fds: [memfd.raw]) else { return 2 }
                h.send("owner \(getpid()) \(mapping.address)")
                return (try? SeqPacketSocket.send(pair[0], [1], fds: [fd.raw])) != nil ? 0 : 3
            }
            guard case .message(var m)? = try? SeqPacketSocket.receive(pair[1], capacity: 64) else { return 11 }
            let held = m.takeFds()
            guard held.count == 1, waitChild(p) == 0 else { return 12 }
            let q = tether_fork_with_pid(p)
            if q == 0 {
                // Q: the dead owner's pid, the owner's connection, a page of its own to copy into.
                guard getpid() == p, let mine = try? Memfd.create(name: "thief", size: 8192),
                      let page = try? SharedMapping(fd: mine.raw, size: 8192) else { tether_exit_now(20) }
                let mirror = rawRequest(held[0], .mirror(ownerBase: page.address, size: 8192), fds: [mine.raw])
                let copy = rawRequest(held[0], .spawn(SpawnRequest(program: .builtin(.saxpy), args: [2048, 0, 0, page.address], groups: 8)))
                let stolen = page.base.bindMemory(to: Float.self, capacity: 2048)[0]
                h.send("q \(getpid()) \(errorCode(mirror).map { "\($0)" } ?? "nil") \(copy == nil) \(stolen)")
                tether_exit_now(0)
            }
            if q < 0 { h.send("skip clone3 set_tid: \(String(cString: strerror(errno)))"); return 0 }
            return waitChild(q) == 0 ? 0 : 13
        }
        let owner = try #require(h.receive())
        #expect(owner.hasPrefix("owner "), "\(owner)")
        let ownerPid = pid_t(owner.split(separator: " ")[1]) ?? -1
        let q = try #require(h.receive())
        #expect(waitChild(helper) == 0)
        if q.hasPrefix("skip") {
            print("skipped: \(q)")
            return
        }
        // Q had the owner's pid, got notOwner, its connection was cut, and it read nothing.
        #expect(q == "q \(ownerPid) notOwner true 0.0", "\(q)")
        // The dead owner's space ended with the severed connection, nothing ever ran in it.
        let t = try #require(try control.awaitTeardown(pid: ownerPid, timeoutSeconds: 10).last)
        #expect(t.threadsKilled == 0 && t.regionsFreed == 1)
    }

    // MARK: Rule 5 — handles do not outlive their daemon

    @Test("a handle from before a daemon restart gets noSuchThread and touches nothing", arguments: backends)
    func staleHandleAfterRestart(backend: String) throws {
        let first = try TestDaemon(backend: backend)
        let old = try Device(first.options())
        let stale = try old.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        first.stop()
        let second = try TestDaemon(backend: backend, socketPath: first.socketPath)
        let device = try Device(second.options())
        let fresh = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        #expect(stale.id.generation != fresh.id.generation)
        #expect(stale.id != fresh.id)
        func code(_ body: () throws -> Void) -> TetherError.Code? {
            do { try body(); return nil } catch let e as TetherError { return e.code } catch { return nil }
        }
        #expect(code { _ = try device.status(stale) } == .noSuchThread)
        #expect(code { _ = try device.kill(stale) } == .noSuchThread)
        #expect(code { _ = try second.control().killThread(stale.id) } == .noSuchThread)
        // The old device does not carry on in a new, empty space of the new daemon.
        #expect(code { _ = try old.status(stale) } == .deviceLost)
        // The new daemon's thread was not touched.
        #expect(try device.status(fresh).state == .running || device.status(fresh).state == .queued)
        #expect(try device.kill(fresh))
        device.close()
        old.close()
    }

    // MARK: Rule 6 — a client talks only to its own user's daemon or root's

    @Test("a client refuses a daemon of another uid before sending it a byte")
    func clientRefusesOtherUsersDaemon() throws {
        guard geteuid() == 0 else {
            print("skipped: running a listener as another user needs root")
            return
        }
        let dir = "/tmp/tether-squat-\(getpid())"
        mkdir(dir, 0o777)
        chmod(dir, 0o777)
        defer { rmdir(dir) }
        let path = dir + "/tether.sock"
        let h = Handshake()
        defer { h.close(); unlink(path) }
        // Another user listens where this user's daemon would.
        let squatter = forkChild {
            guard setgid(65534) == 0, setuid(65534) == 0,
                  let listener = try? SeqPacketSocket.listen(path: path) else { return 1 }
            h.send("listening")
            var received = 0
            let deadline = monotonicNanos() + 5_000_000_000
            while monotonicNanos() < deadline {
                guard (try? waitReadable(listener.raw, timeoutMillis: 100)) == true,
                      let c = try? SeqPacketSocket.accept(listener.raw) else { continue }
                while monotonicNanos() < deadline, (try? waitReadable(c.raw, timeoutMillis: 100)) != false {
                    guard case .message(let m)? = try? SeqPacketSocket.receive(c.raw, capacity: Wire.maxMessageBytes) else { break }
                    received += m.bytes.count
                }
            }
            h.send("received \(received)")
            return 0
        }
        #expect(h.receive() == "listening")
        do {
            _ = try Device(DeviceOptions(socketPath: path))
            Issue.record("connected to another user's daemon")
        } catch {
            #expect(error.code == .permissionDenied)
            #expect(error.message.contains("uid 65534"))
        }
        #expect(throws: TetherError.self) { try DaemonControl(socketPath: path) }
        let run = try runTetherBounded(["run", "saxpy", "--size", "1024"], environment: ["TETHER_SOCKET": path])
        #expect(run.status != 0)
        #expect(run.stderr.contains("uid 65534"), "\(run.stderr)")
        #expect(h.receive(timeoutSeconds: 10) == "received 0")
        #expect(waitChild(squatter) == 0)
    }

    @Test("a daemon refuses a socket directory it does not own or that others can write")
    func daemonRefusesForeignDirectory() throws {
        guard geteuid() == 0 else {
            print("skipped: making a directory of another user needs root")
            return
        }
        let foreign = "/tmp/tether-foreign-\(getpid())"
        let open = "/tmp/tether-open-\(getpid())"
        let xdg = "/tmp/tether-xdg-\(getpid())"
        mkdir(foreign, 0o700)
        chown(foreign, 65534, 65534)
        mkdir(open, 0o700)
        chmod(open, 0o777)
        mkdir(xdg, 0o700)
        mkdir(xdg + "/tether", 0o700)
        chown(xdg + "/tether", 65534, 65534)
        defer { rmdir(foreign); rmdir(open); rmdir(xdg + "/tether"); rmdir(xdg) }
        for socket in [foreign + "/tether.sock", open + "/tether.sock"] {
            let r = try runTetherBounded(["daemon", "--socket", socket, "--backend", "software"])
            #expect(r.status != 0, "\(socket)")
            #expect(r.stderr.contains("socket directory"), "\(r.stderr)")
            #expect(access(socket, F_OK) != 0, "no socket was made in \(socket)")
        }
        // The default path under XDG_RUNTIME_DIR, squatted by another user.
        let r = try runTetherBounded(["daemon", "--backend", "software"],
                                     environment: ["XDG_RUNTIME_DIR": xdg, "TETHER_SOCKET": ""])
        #expect(r.status != 0)
        #expect(r.stderr.contains("\(xdg)/tether"), "\(r.stderr)")
    }

    // MARK: Rule 7 — tools show and reach only the caller's own work

    @Test("ps, timelines and kills show and reach only the caller's own work unless the caller is root")
    func toolsSeeOnlyOwnWork() throws {
        guard geteuid() == 0 else {
            print("skipped: a second user needs root")
            return
        }
        let dir = "/tmp/tether-shared-\(getpid())"
        mkdir(dir, 0o755)
        chmod(dir, 0o755)
        defer { rmdir(dir) }
        let daemon = try TestDaemon(socketPath: dir + "/tether.sock")
        defer { daemon.stop(); unlink(daemon.socketPath); unlink(dir + "/generation") }
        chmod(daemon.socketPath, 0o777)
        // Root's work: a thread, and a teardown timeline.
        let device = try Device(daemon.options())
        let rootThread = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        let gone = forkChild { (try? Device(daemon.options())) != nil ? 0 : 1 }
        #expect(waitChild(gone) == 0)
        let rootControl = try daemon.control()
        #expect(try rootControl.awaitTeardown(pid: gone, timeoutSeconds: 10).count == 1)
        let me = getpid()
        let h = Handshake()
        defer { h.close() }
        let other = forkChild {
            guard setgid(65534) == 0, setuid(65534) == 0 else { return 1 }
            do {
                let own = try Device(daemon.options())
                let mine = try own.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
                let control = try daemon.control()
                let ps = try control.ps().spaces
                let seesOnlyOwn = ps.count == 1 && ps[0].pid == getpid() && ps[0].threads.map(\.thread) == [mine.id]
                let timelines = try control.timelines().isEmpty && control.timelines(pid: gone).isEmpty
                let waited = try control.awaitTeardown(pid: me, timeoutSeconds: 0.2).isEmpty
                var killThread = "none", killProcess = "none"
                do { _ = try control.killThread(rootThread.id) } catch let e as TetherError { killThread = "\(e.code)" }
                do { _ = try control.killProcess(pid: me) } catch let e as TetherError { killProcess = "\(e.code)" }
                h.send("\(seesOnlyOwn) \(timelines) \(waited) \(killThread) \(killProcess)")
                _ = try own.kill(mine)
                return 0
            } catch {
                h.send("error \(error)")
                return 2
            }
        }
        #expect(h.receive() == "true true true noSuchThread invalidArgument")
        #expect(waitChild(other) == 0)
        // Root's thread is untouched, and root sees everyone's work.
        #expect(try device.status(rootThread).state == .running || device.status(rootThread).state == .queued)
        #expect(try rootControl.timelines(pid: gone).count == 1)
        #expect(try rootControl.awaitTeardown(pid: other, timeoutSeconds: 10).count == 1)
        #expect(try device.kill(rootThread))
        device.close()
    }
}
