import ArgumentParser
import Glibc
import Logging
import TetherCore
import TetherDaemon
import TetherDevice
import TetherSys

extension ExitNotifierChoice: ExpressibleByArgument {}

/// `--policy`, by the names people type: `LifetimePolicy`'s raw values are its wire numbers, which
/// ArgumentParser would show as the default and offer as the values.
enum PolicyName: String, CaseIterable, ExpressibleByArgument {
    case exit, release
    var policy: LifetimePolicy { self == .exit ? .exit : .release }
    /// What each one means (listed under the option in `--help`).
    var defaultValueDescription: String {
        switch self {
        case .exit: "tear down at the owner's exit or the last release, whichever is first"
        case .release: "tear down only at the last release (a classic device file)"
        }
    }
}

struct SocketOption: ParsableArguments {
    @Option(help: "Daemon socket. Default: $TETHER_SOCKET, else $XDG_RUNTIME_DIR/tether/tether.sock, else /tmp/tether-$UID/tether.sock.")
    var socket: String?

    var path: String { SocketPath.resolve(socket) }
}

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the device emulator in the foreground until SIGTERM or SIGINT.",
        discussion: """
            SIGHUP and SIGPIPE are ignored (nothing to reload; logs go to standard error). The daemon \
            sets its oom_score_adj to \(ServiceProcess.oomScoreAdjust) where it may, raises its fd soft limit \
            to the hard limit, and removes a socket at --socket only when it is provably stale.
            """)

    @OptionGroup var socket: SocketOption
    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Lifetime policy.")
    var policy: PolicyName = .exit
    @Flag(help: "Refuse clients that ask for the other policy.") var noPolicyOverride = false
    @Option(name: .customLong("quantum-us"), help: "Target length of one device slice in microseconds.")
    var quantumMicros: UInt64 = 2000
    @Option(help: "Slices on the device at once, 1 or 2 (default: 1 on a Vulkan CPU driver, else 2).")
    var slicesInFlight: Int?
    @Option(help: "Early exit notices: auto (BPF where this daemon may load it, else the pidfd), bpf (or refuse to start), pidfd.")
    var notifier: ExitNotifierChoice = .auto
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel: String = "notice"
    @OptionGroup(title: "Limits (a client that reaches a cap gets a resourceExhausted error naming it; past a budget or the queued-threads limit its requests wait instead)")
    var limits: LimitOptions
    @Flag(help: "Let clients of this daemon's own uid run kernels with raw device pointers (the pointer-ABI SPIR-V path, modules with PhysicalStorageBufferAddresses). Such kernels can reach any memory the device reaches; other uids are always refused.")
    var allowRawPointers = false
    @Option(name: .customLong("ring-poll-us"), help: "How long the event loop polls clients' submission rings after activity before it sleeps (microseconds; 0: always sleep, clients ring the doorbell).")
    var ringPollMicros: UInt64 = 20
    @Flag(inversion: .prefixedNo, help: "Let the scheduler's worker run a one-group slice itself when someone waits for its thread and the device is otherwise idle (software backend; saves two thread wake-ups per tiny device thread).")
    var smallSlicesOnWorker = true
    @Option(name: .customLong("ring-idle-poll-us"), help: "How long the event loop polls the submission rings after activity while no device thread has work (a tiny run just ended on the scheduler's worker), so the client's next submission needs no doorbell (microseconds; --ring-poll-us applies if larger; 0: --ring-poll-us always).")
    var ringIdlePollMicros: UInt64 = 100
    @Option(name: .customLong("submitter-wait-us"), help: "How long the event loop waits for the fence of a tiny run it submitted itself before the scheduler's worker finishes the run (Vulkan; microseconds; default: the backend's, 2000).")
    var submitterWaitMicros: UInt64?

    func validate() throws {
        guard (10...1_000_000).contains(quantumMicros) else { throw ValidationError("--quantum-us must be 10…1000000") }
        if let n = slicesInFlight, !(1...2).contains(n) { throw ValidationError("--slices-in-flight must be 1 or 2") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard ringPollMicros <= 1_000_000 else { throw ValidationError("--ring-poll-us must be 0…1000000") }
        guard ringIdlePollMicros <= 1_000_000 else { throw ValidationError("--ring-idle-poll-us must be 0…1000000") }
        if let w = submitterWaitMicros, !(1...1_000_000).contains(w) { throw ValidationError("--submitter-wait-us must be 1…1000000") }
    }

    func run() throws {
        // Signals are taken by one thread with sigwait; every other thread (created after this)
        // inherits the blocked mask, so SIGTERM never interrupts device work half-way.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        // The control plane (this thread and every thread it starts, bar device work) runs above
        // device work and, where allowed, above ordinary processes — dying ones included.
        enterControlPlane()
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let daemon = try makeDaemon(logger: Logger(label: "tether.daemon"))
        startThread(name: "tether-signals") {
            var signals = sigset_t()
            sigemptyset(&signals)
            sigaddset(&signals, SIGTERM)
            sigaddset(&signals, SIGINT)
            var signal: Int32 = 0
            sigwait(&signals, &signal)
            daemon.requestStop()
        }
        daemon.run {
            // Tools that start a private daemon wait for this line.
            printLine("ready \(socket.path)")
        }
    }

    func makeDaemon(logger: Logger) throws -> Daemon {
        do {
            var configuration = DaemonConfiguration(
                socketPath: socket.path, backend: try BackendFactory.resolve(backendOptions.backend), policy: policy.policy,
                allowPolicyOverride: !noPolicyOverride, quantumNanos: quantumMicros * 1000,
                slicesInFlight: slicesInFlight, allowRawPointers: allowRawPointers)
            configuration.notifier = notifier
            configuration.limits = limits.daemonLimits
            configuration.ringPollNanos = ringPollMicros * 1000
            configuration.smallSlicesOnWorker = smallSlicesOnWorker
            configuration.ringIdlePollNanos = ringIdlePollMicros * 1000
            configuration.submitterWaitNanos = submitterWaitMicros.map { $0 * 1000 }
            return try Daemon(configuration, logger: logger)
        } catch {
            throw fail(error.message)
        }
    }
}
