import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import Testing

/// The BPF exit notifier with real processes: it notices an owner's SIGKILL, exit or exec before
/// the kernel makes the owner's pidfd readable, and never mistakes another process for an owner.
/// Skipped, with the reason printed, where this process may not load BPF.
@Suite(.serialized) struct BPFNotifierTests {
    static let unavailable: String? = {
        do throws(TetherError) {
            _ = try BPFExitHooks.open()
            return nil
        } catch {
            print("BPFNotifierTests: skipped, BPF is unavailable here: \(error.message)")
            return error.message
        }
    }()
    static var available: Bool { unavailable == nil }

    /// A child that allocates and touches `privateMiB` of its own memory (its exit cost), opens the
    /// device, mirrors `mirrorMiB`, starts a spin thread, optionally forks a holder child that keeps
    /// the fd, says "ready <holder>", then runs `then`.
    static func owner(_ daemon: TestDaemon, _ h: Handshake, privateMiB: Int = 0, mirrorMiB: Int = 4, forkHolder: Bool = false,
                      then: @escaping () -> Int32 = { pause(); return 0 }) -> pid_t {
        forkChild {
            if privateMiB > 0, let p = mmap(nil, privateMiB << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
               p != MAP_FAILED {
                memset(p, 1, privateMiB << 20)
            }
            do {
                let device = try Device(daemon.options(closeOnFork: !forkHolder))
                let m = try device.mirror(bytes: mirrorMiB << 20)
                memset(m.base, 1, m.size)
                _ = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
                var holder: pid_t = 0
                if forkHolder {
                    holder = forkChild {
                        // Keeps every fd it inherited, the device connection included, until killed.
                        pause()
                        return 0
                    }
                }
                h.send("ready \(holder)")
                let code = then()
                withExtendedLifetime(device) {}
                return code
            } catch {
                h.send("error \(error)")
                return 1
            }
        }
    }

    /// Kills a grandchild (not ours to reap) and waits, bounded, until it has exited.
    static func end(_ pid: pid_t) {
        guard let fd = try? Pidfd.open(pid) else { return }
        _ = try? Pidfd.sendSignal(fd.raw, SIGKILL)
        _ = try? waitReadable(fd.raw, timeoutMillis: 10_000)
    }

    static func holder(_ line: String?) -> pid_t? {
        guard let line, line.hasPrefix("ready ") else { return nil }
        return pid_t(line.dropFirst(6))
    }

    @Test("a SIGKILLed owner with a large address space is torn down before its pidfd becomes readable",
          .enabled(if: available))
    func sigkillBeforePidfd() throws {
        let daemon = try TestDaemon(extra: ["--notifier", "bpf"])
        let h = Handshake()
        defer { h.close() }
        let pid = Self.owner(daemon, h, privateMiB: 512, mirrorMiB: 64)
        #expect(h.receive(timeoutSeconds: 60)?.hasPrefix("ready") == true)
        let pidfd = try Pidfd.open(pid)
        let control = try daemon.control()
        kill(pid, SIGKILL)
        // The kernel frees the victim's half GiB before its pidfd is readable; the daemon's timeline of
        // the same death must be complete before that moment.
        #expect(try waitReadable(pidfd.raw, timeoutMillis: 30_000))
        let pidfdReadable = monotonicNanos()
        let t = try #require(try control.awaitTeardown(pid: pid, timeoutSeconds: 10).last)
        #expect(t.reason == "bpf-sigkill" || t.reason == "bpf-exit")
        #expect(t.threadsKilled == 1 && t.regionsFreed == 1)
        #expect(t.quiescedNanos < pidfdReadable, "device work quiesced \(Double(Int64(t.quiescedNanos) - Int64(pidfdReadable)) / 1e3) µs after the pidfd became readable")
        #expect(t.releasedNanos < pidfdReadable)
        _ = waitChild(pid)
    }

    @Test("a SIGKILL to an owner whose fd a child holds tears the owner's work down; the child lives on",
          .enabled(if: available))
    func sigkillWithChildHoldingFd() throws {
        let daemon = try TestDaemon(extra: ["--notifier", "bpf"])
        let h = Handshake()
        defer { h.close() }
        let pid = Self.owner(daemon, h, forkHolder: true)
        let holder = try #require(Self.holder(h.receive()))
        defer { Self.end(holder) }
        let control = try daemon.control()
        kill(pid, SIGKILL)
        let t = try #require(try control.awaitTeardown(pid: pid, timeoutSeconds: 10).last)
        #expect(t.reason == "bpf-sigkill")
        #expect(t.threadsKilled == 1 && t.regionsFreed == 1)
        #expect(kill(holder, 0) == 0, "the holder keeps running with its copy of the fd")
        #expect(try control.ps().spaces.allSatisfy { $0.pid != pid })
        _ = waitChild(pid)
    }

    @Test("exec of an owner whose fd another process holds tears down the old image's work (rule 4)",
          .enabled(if: available))
    func execWithFdHeldElsewhere() throws {
        let daemon = try TestDaemon(extra: ["--notifier", "bpf"])
        let h = Handshake()
        defer { h.close() }
        let pid = Self.owner(daemon, h, forkHolder: true) {
            let args = ["/bin/sleep", "30"]
            var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
            execv("/bin/sleep", &argv)
            return 9
        }
        let holder = try #require(Self.holder(h.receive()))
        defer { Self.end(holder) }
        // The connection stays open in the holder, so no hang-up reports the exec; only BPF can.
        let t = try #require(try daemon.control().awaitTeardown(pid: pid, timeoutSeconds: 10).last)
        #expect(t.reason == "bpf-exec")
        #expect(t.threadsKilled == 1)
        #expect(kill(pid, 0) == 0, "the process itself lives on as /bin/sleep")
        #expect(kill(holder, 0) == 0)
        kill(pid, SIGKILL)
        _ = waitChild(pid)
    }

    @Test("an entry whose start time is another process's is never reported; a replaced entry keeps its new cookie",
          .enabled(if: available))
    func recycledPidIsNeverReported() throws {
        let hooks = try BPFExitHooks.open()
        let epoll = try Epoll()
        try epoll.add(hooks.ringFD, token: 1)
        let impostor = forkChild { pause(); return 0 }
        let owner = forkChild { pause(); return 0 }
        defer { for p in [impostor, owner] { kill(p, SIGKILL); _ = waitChild(p) } }
        let impostorStart = try #require(ProcessStart.ticks(of: impostor))
        let ownerStart = try #require(ProcessStart.ticks(of: owner))
        // The impostor holds a pid registered for a process that started at another time: what a
        // dead owner's entry looks like to a process that reused its pid.
        try hooks.watch(tgid: impostor, startTicks: impostorStart &- 1, cookie: 1)
        // The owner's entry is replaced by a newer registration; forgetting the older one keeps it.
        try hooks.watch(tgid: owner, startTicks: ownerStart, cookie: 2)
        try hooks.watch(tgid: owner, startTicks: ownerStart, cookie: 3)
        #expect(!hooks.forget(tgid: owner, cookie: 2))
        kill(impostor, SIGKILL)
        _ = waitChild(impostor)
        kill(owner, SIGKILL)
        var events: [BPFExitHooks.Event] = []
        let deadline = monotonicNanos() + 10_000_000_000
        while !events.contains(where: { $0.tgid == owner }) && monotonicNanos() < deadline {
            _ = epoll.wait(timeoutMillis: 100)
            events += hooks.consume()
        }
        // The ring is in order: the impostor's death, first, would be before the owner's event.
        #expect(events.map(\.cookie) == [3])
        #expect(events.first?.kind == .sigkill)
        #expect(!hooks.forget(tgid: owner, cookie: 3), "the event removed the entry")
    }

    @Test("a group exit is reported once, as bpf-exit, and only for registered thread groups", .enabled(if: available))
    func exitIsReportedOnce() throws {
        let hooks = try BPFExitHooks.open()
        let epoll = try Epoll()
        try epoll.add(hooks.ringFD, token: 1)
        let h = Handshake()
        defer { h.close() }
        let stranger = forkChild { _ = h.receive(); return 0 }
        let owner = forkChild { _ = h.receive(); return 0 }
        try hooks.watch(tgid: owner, startTicks: try #require(ProcessStart.ticks(of: owner)), cookie: 7)
        h.send("go")
        h.send("go")
        #expect(waitChild(stranger) == 0 && waitChild(owner) == 0)
        var events: [BPFExitHooks.Event] = []
        let deadline = monotonicNanos() + 10_000_000_000
        while events.isEmpty && monotonicNanos() < deadline {
            _ = epoll.wait(timeoutMillis: 100)
            events += hooks.consume()
        }
        events += hooks.consume()
        #expect(events.map(\.cookie) == [7])
        #expect(events.first?.kind == .exit)
        #expect(events.first?.tgid == owner)
    }

    @Test("without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN the daemon says so in one line and notices deaths by pidfd")
    func fallsBackWithoutPrivileges() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else {
            print("BPFNotifierTests: skipped the fallback test, /usr/bin/setpriv (util-linux) is missing")
            return
        }
        // Dropped from the bounding set, the capabilities are gone after exec even for root.
        let daemon = try TestDaemon(extra: ["--log-level", "notice"],
                                    launcher: ["/usr/bin/setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin", "--"])
        let log = daemon.stderr(upTo: "listening")
        let line = try #require(log.split(separator: "\n").first { $0.contains("listening") })
        #expect(line.contains("notifier=pidfd (BPF unavailable:"), "\(line)")
        if Self.available { #expect(line.contains("CAP_BPF"), "\(line)") }
        let h = Handshake()
        defer { h.close() }
        let pid = Self.owner(daemon, h)
        #expect(h.receive()?.hasPrefix("ready") == true)
        kill(pid, SIGKILL)
        let t = try #require(try daemon.control().awaitTeardown(pid: pid, timeoutSeconds: 10).last)
        #expect(t.reason == "pidfd" || t.reason == "release")
        _ = waitChild(pid)
        // And a daemon told to use BPF refuses to start without it, with the reason.
        let refused = try runTether(["daemon", "--socket", daemon.socketPath + ".b", "--notifier", "bpf", "--backend", "software"],
                                    keepStderr: true, launcher: ["/usr/bin/setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin", "--"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("--notifier bpf"), "\(refused.stderr)")
    }
}
