import CTetherLinux
import Glibc
import Tether
import TetherCore
import TetherSys

/// What a victim process does before it waits to be killed.
struct VictimSpec {
    var socketPath: String
    /// Private anonymous memory the victim allocates and touches (its size for the kernel's exit).
    var privateMiB: Int
    /// Device threads (`spin`, persistent) it runs; 0 with `deviceWork` false = a bare victim.
    var threads: Int
    var deviceWork: Bool
    /// Mirrored memory (touched) besides the private memory; a bare victim maps as much shared
    /// memfd memory of its own, so that both kinds have the same exit cost.
    var mirroredMiB: Int = 0
    /// Fork a child that keeps the inherited device fd and waits (the seed's scenario).
    var forkHolder = false
    var closeOnFork = true
    var persistentSeconds: Double = 3600
}

/// A victim: a child process forked from this command (which never loads Vulkan), running device
/// work through the `Tether` library, and waiting to be killed or told to exit.
///
/// Handshake by pipes: the victim writes `ready <holder pid>` when its device threads run; the
/// harness writes `x` to make it exit normally, or closes its end to release the holder child.
final class Victim {
    let pid: pid_t
    let pidfd: OwnedDescriptor
    private(set) var holderPid: pid_t = 0
    private var statusRead: Int32
    private var commandWrite: Int32
    /// CLOCK_MONOTONIC right before the kill or the exit command.
    private(set) var exitNanos: UInt64 = 0

    static func launch(_ spec: VictimSpec) throws(TetherError) -> Victim {
        var status: [Int32] = [0, 0]
        var command: [Int32] = [0, 0]
        guard pipe(&status) == 0, pipe(&command) == 0 else {
            throw TetherError(.resourceExhausted, "pipe: \(SystemError("pipe2"))")
        }
        let pid = fork()
        if pid < 0 { throw TetherError(.resourceExhausted, "\(SystemError("fork"))") }
        if pid == 0 {
            var keep = [status[1], command[0]]
            _ = tether_keep_only_fds(&keep, 2)
            victimMain(spec, statusWrite: keep[0], commandRead: keep[1])
        }
        close(status[1])
        close(command[0])
        let pidfd: OwnedDescriptor
        do { pidfd = try Pidfd.open(pid) } catch { throw TetherError(.resourceExhausted, "\(error)") }
        return Victim(pid: pid, pidfd: pidfd, statusRead: status[0], commandWrite: command[1])
    }

    private init(pid: pid_t, pidfd: consuming OwnedDescriptor, statusRead: Int32, commandWrite: Int32) {
        self.pid = pid
        self.pidfd = pidfd
        self.statusRead = statusRead
        self.commandWrite = commandWrite
    }

    deinit {
        if !Pidfd.hasExited(pidfd.raw) { _ = try? Pidfd.sendSignal(pidfd.raw, SIGKILL) }
        releaseHolder()
        if statusRead >= 0 { close(statusRead) }
        var st: Int32 = 0
        _ = waitpid(pid, &st, 0)
        if holderPid > 0 {
            kill(holderPid, SIGKILL)
            _ = waitpid(holderPid, &st, 0)
        }
    }

    /// Waits for `ready`; fails with the victim's own sentence if it reported an error.
    func waitReady(timeoutSeconds: Double = 30) throws(TetherError) {
        let text: String
        switch readLine(statusRead, until: monotonicNanos() + UInt64(timeoutSeconds * 1e9)) {
        case .success(let line): text = line
        case .failure(.timedOut): throw TetherError(.deviceLost, "victim \(pid) was not ready within \(timeoutSeconds) s")
        case .failure(.closed): throw TetherError(.deviceLost, "victim \(pid) died before it was ready")
        }
        guard text.hasPrefix("ready ") else { throw TetherError(.deviceError, "victim \(pid): \(text)") }
        holderPid = pid_t(text.dropFirst(6)) ?? 0
    }

    /// SIGKILL through the pidfd; the time is taken right before the signal.
    func killNow() {
        exitNanos = monotonicNanos()
        _ = try? Pidfd.sendSignal(pidfd.raw, SIGKILL)
    }

    /// Tells the victim to exit normally (`_exit(0)`).
    func exitNow() {
        var x: UInt8 = UInt8(ascii: "x")
        exitNanos = monotonicNanos()
        _ = write(commandWrite, &x, 1)
    }

    /// Lets the holder child (fork-held) exit: it waits for the command pipe's end of file.
    func releaseHolder() {
        if commandWrite >= 0 { close(commandWrite) }
        commandWrite = -1
    }

    var holderAlive: Bool { holderPid > 0 && kill(holderPid, 0) == 0 && !isZombie(holderPid) }
}

func isZombie(_ pid: pid_t) -> Bool {
    guard let f = fopen("/proc/\(pid)/stat", "r") else { return true }
    defer { fclose(f) }
    var buf = [CChar](repeating: 0, count: 512)
    guard fgets(&buf, 512, f) != nil else { return true }
    let s = String(cBuffer: buf)
    guard let close = s.lastIndex(of: ")") else { return true }
    return s[s.index(close, offsetBy: 2)] == "Z"
}

/// The victim's side; never returns (ends with `_exit`, see DESIGN.md on fork).
private func victimMain(_ spec: VictimSpec, statusWrite: Int32, commandRead: Int32) -> Never {
    func say(_ s: String) {
        var b = Array((s + "\n").utf8)
        _ = write(statusWrite, &b, b.count)
    }
    if spec.privateMiB > 0 {
        let bytes = spec.privateMiB << 20
        if let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED {
            memset(p, 1, bytes)
        }
    }
    var device: Device?
    if !spec.deviceWork && spec.mirroredMiB > 0 {
        // A bare twin of a device victim: the same shared memfd pages, touched, but no daemon.
        let bytes = spec.mirroredMiB << 20
        if let fd = try? Memfd.create(name: "tether-bare", size: bytes),
           let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.raw, 0), p != MAP_FAILED {
            memset(p, 2, bytes)
        }
    }
    if spec.deviceWork {
        do {
            var options = DeviceOptions()
            options.socketPath = spec.socketPath
            options.closeOnFork = spec.closeOnFork
            let d = try Device(options)
            device = d
            if spec.mirroredMiB > 0 {
                let m = try d.mirror(bytes: spec.mirroredMiB << 20)
                memset(m.base, 2, m.size)
            }
            for _ in 0..<spec.threads {
                _ = try d.spawn(.spin, args: [BuiltinKernel.maxSpinIterations], groups: 64,
                                persistentSeconds: spec.persistentSeconds)
            }
        } catch {
            say("error \(error.message)")
            tether_exit_now(1)
        }
    }
    var holder: pid_t = 0
    if spec.forkHolder {
        holder = fork()
        if holder == 0 {
            // B: keeps whatever fds it inherited (the device fd too when closeOnFork is off) and
            // waits until the harness closes the command pipe.
            var b: UInt8 = 0
            while read(commandRead, &b, 1) > 0 {}
            tether_exit_now(0)
        }
    }
    say("ready \(holder)")
    var b: UInt8 = 0
    _ = read(commandRead, &b, 1)
    withExtendedLifetime(device) {}
    tether_exit_now(0)
}
