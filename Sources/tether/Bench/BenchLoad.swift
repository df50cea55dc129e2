import ArgumentParser
import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys

/// What `tether bench load --json` prints: the well-behaved client alone, then beside each flood.
struct LoadReport: Codable {
    struct Cell: Codable {
        var flood: String
        /// The tiny runs beside the flood, every round's together.
        var dispatch: LatencySummary
        var saxpyMillis: Double
        /// The same client alone, measured right before this cell's flood started (the median over
        /// the rounds).
        var aloneDispatchP50Micros: Double
        var aloneSaxpyMillis: Double
        /// Against the client alone right before: the median over the rounds of each round's ratio.
        var dispatchRatio: Double
        var saxpyRatio: Double
        /// Each round's ratios, in order (`--rounds`).
        var dispatchRatios: [Double]
        var saxpyRatios: [Double]
        /// Requests of the flooder the daemon did (answered without an error) per second while
        /// the cell was timed: how hard it pressed.
        var floodPerSecond: Double
        /// What the flooder was told (its last error), if anything.
        var flooderSaw: String
        /// Seconds from the flood's start until none of its device threads was queued or running
        /// (the median over the rounds; 0 with `--no-settle`, nil where that did not happen
        /// within `--settle-timeout`).
        var settleSeconds: Double?
    }
    var backend: String
    var rounds: Int
    var cells: [Cell]
}

/// A well-behaved client's dispatch latency (a tiny `run`) and a saxpy's time, alone and while a
/// hostile client floods the daemon: spawns without joining (over the socket, or through the
/// library's submission ring), connections, teardown waiters, cheap requests (pings) it reads the
/// replies of, or requests it never reads the replies of. One private daemon, one run; each
/// cell's ratios are against the client alone, measured right before that flood started, and
/// with `--rounds N` the cell alternates the two N times and reports the median of the rounds'
/// ratios (this VM's timings swing between runs, and a single pair can land in different modes).
/// The flooders are forked children of this process (it never loads Vulkan), each killed after
/// its round.
///
/// A spawn flood first gets device threads admitted up to its limit: work it may run, which the
/// scheduler shares fairly with the client (the client then gets about half of the device, as
/// beside any busy neighbour). So, after `--warmup`, the measurement waits until none of the
/// flooder's threads is queued or running — the flood goes on: each further spawn is refused at
/// the limit, or read at the shared rate and done at once — and measures what the flood itself
/// costs (`settleSeconds` says how long its backlog took). `--no-settle` measures at the end of
/// the warm-up instead, beside whatever is left of it.
struct BenchLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "A well-behaved client's latency alone and beside floods (spawns, ring spawns, connections, waiters, cheap requests, a paused reader).")

    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Tiny runs timed per measurement, the client alone and beside a flood (200 runs on lavapipe last ~10 ms, and one stall of a busy machine moves their median).") var runs = 2000
    @Option(help: "Elements of the timed saxpy.") var saxpyElements = 1 << 20
    @Option(help: "Saxpys timed per measurement (the median is reported).") var saxpys = 200
    @Option(help: "Seconds each flood runs before the measurement starts (at least).") var warmup: Double = 0.5
    @Flag(inversion: .prefixedNo, help: "After the warm-up, wait until none of the flooder's device threads is queued or running (its admitted backlog, which it shares the device with fairly, is done).")
    var settle = true
    @Option(help: "The longest to wait for that, in seconds (then it measures anyway).") var settleTimeout: Double = 60
    @Option(help: "Rounds per flood: the client alone, then beside the flood, this many times; each ratio reported is the median of the rounds' ratios.")
    var rounds = 3
    @Option(parsing: .upToNextOption, help: "The floods to run beside the baseline, any of: \(Self.allFloods.joined(separator: ", ")).")
    var floods: [String] = allFloods
    @OptionGroup var daemonArgOptions: DaemonArgOptions
    @Flag(help: "Print one JSON object.") var json = false

    static let allFloods = ["spawns", "ring-spawns", "connections", "waiters", "requests", "paused-reader", "cpu"]

    func validate() throws {
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be 1 to 100") }
        guard runs >= 1, saxpys >= 1, saxpyElements >= 1 else { throw ValidationError("--runs, --saxpys and --saxpy-elements must be at least 1") }
        guard warmup >= 0, settleTimeout >= 0 else { throw ValidationError("--warmup and --settle-timeout must not be negative") }
        for f in floods where !Self.allFloods.contains(f) {
            throw ValidationError("unknown flood '\(f)'; the floods are \(Self.allFloods.joined(separator: ", "))")
        }
    }

    func run() throws {
        // Limits low enough that a flood reaches them within the warm-up.
        let d = try PrivateDaemon(backend: backendOptions.backend, policy: .exit,
                                  extra: ["--max-threads-per-space", "20000", "--max-waiters-per-connection", "1000"] + daemonArgOptions.daemonArgs)
        defer { d.stop() }
        let device = try Device(DeviceOptions(socketPath: d.socketPath))
        let bytes = saxpyElements * 8 + 4096
        let memory = try device.mirror(bytes: bytes)
        let x = memory.address, y = memory.address + UInt64(saxpyElements * 4)
        let two = UInt64(Float(2).bitPattern)
        let backend = try DaemonControl(socketPath: d.socketPath).ps().backend.rawValue

        /// The tiny runs' round trips (ns) and the saxpys' median (ms).
        func measure() throws -> ([UInt64], Double) {
            var samples: [UInt64] = []
            for _ in 0..<runs {
                let t0 = monotonicNanos()
                _ = try device.run(.saxpy, args: [64, two, x, y], groups: 1, timeoutSeconds: 30)
                samples.append(monotonicNanos() - t0)
            }
            var saxpy: [Double] = []
            for _ in 0..<saxpys {
                let t0 = monotonicNanos()
                _ = try device.run(.saxpy, args: [UInt64(saxpyElements), two, x, y],
                                   groups: UInt32((saxpyElements + 255) / 256), timeoutSeconds: 60)
                saxpy.append(Double(monotonicNanos() - t0) / 1e6)
            }
            return (samples, median(saxpy))
        }

        var cells: [LoadReport.Cell] = []
        let (aloneSamples, aloneSaxpy) = try measure()
        let aloneDispatch = LatencySummary(nanos: aloneSamples)
        cells.append(.init(flood: "none", dispatch: aloneDispatch, saxpyMillis: aloneSaxpy,
                           aloneDispatchP50Micros: aloneDispatch.p50Micros, aloneSaxpyMillis: aloneSaxpy,
                           dispatchRatio: 1, saxpyRatio: 1, dispatchRatios: [1], saxpyRatios: [1], floodPerSecond: 0, flooderSaw: "",
                           settleSeconds: 0))
        if !json { printError("none: dispatch p50 \(formatDouble(aloneDispatch.p50Micros, 1)) µs, saxpy \(formatDouble(aloneSaxpy, 2)) ms") }
        for flood in floods {
            var alone: [([UInt64], Double)] = [], beside: [([UInt64], Double)] = []
            var rates: [Double] = [], settles: [Double?] = [], saw = ""
            for _ in 0..<rounds {
                // The client alone again right before each flood: the ratio compares measurements
                // seconds apart, not the first cell's (a VM's speed drifts over a run).
                alone.append(try measure())
                let report = FloodReport()
                let started = monotonicNanos()
                let child = startFlood(flood, socket: d.socketPath, report: report)
                usleep(useconds_t(warmup * 1e6))
                if settle {
                    let settled = awaitNoBacklog(of: child, socket: d.socketPath, deadline: started + UInt64(settleTimeout * 1e9))
                    settles.append(settled ? Double(monotonicNanos() - started) / 1e9 : nil)
                    if !settled { printError("\(flood): the flooder's device threads still ran after \(formatDouble(settleTimeout, 0)) s; measuring beside them") }
                } else {
                    settles.append(0)
                }
                let (served0, t0) = (report.served, monotonicNanos())
                beside.append(try measure())
                rates.append(Double(report.served &- served0) * 1e9 / Double(monotonicNanos() - t0))
                kill(child, SIGKILL)
                var status: Int32 = 0
                waitpid(child, &status, 0)
                saw = report.drain()
                // Its address space goes before the next round starts.
                _ = try? DaemonControl(socketPath: d.socketPath).awaitTeardown(pid: child, timeoutSeconds: 30)
                report.close()
            }
            let besideP50 = beside.map { LatencySummary(nanos: $0.0).p50Micros }, aloneP50 = alone.map { LatencySummary(nanos: $0.0).p50Micros }
            let dispatchRatios = zip(besideP50, aloneP50).map { $0 / $1 }
            let saxpyRatios = zip(beside, alone).map { $0.1 / $1.1 }
            cells.append(.init(flood: flood, dispatch: LatencySummary(nanos: beside.flatMap { $0.0 }), saxpyMillis: median(beside.map { $0.1 }),
                               aloneDispatchP50Micros: median(aloneP50), aloneSaxpyMillis: median(alone.map { $0.1 }),
                               dispatchRatio: median(dispatchRatios), saxpyRatio: median(saxpyRatios),
                               dispatchRatios: dispatchRatios, saxpyRatios: saxpyRatios, floodPerSecond: median(rates), flooderSaw: saw,
                               settleSeconds: settles.contains(nil) ? nil : median(settles.compactMap { $0 })))
            if !json { printError("\(flood): dispatch × \(dispatchRatios.map { formatDouble($0, 2) }.joined(separator: " ")), saxpy × \(saxpyRatios.map { formatDouble($0, 2) }.joined(separator: " "))") }
        }
        let result = LoadReport(backend: backend, rounds: rounds, cells: cells)
        if json { return try printJSON(result) }
        printLine("A well-behaved client beside a hostile one (\(backend) backend; \(runs) tiny runs and \(saxpys) saxpys of \(saxpyElements) per measurement; \(rounds) round\(rounds == 1 ? "" : "s") alone / beside per flood, ratios are their medians; \(settle ? "measured once the flooder's admitted device threads were done (\"settled after\")" : "measured \(formatDouble(warmup, 1)) s into each flood"); served/s: the flooder's requests done without an error, 0 once every one is refused at its limit; a noisy 2-core machine)")
        print(table(["flood", "dispatch p50 µs", "p99 µs", "alone p50 µs", "× alone", "saxpy ms", "alone ms", "× alone",
                     "flood served/s", "settled after s", "the flooder was told"],
                   cells.map { [$0.flood, formatDouble($0.dispatch.p50Micros, 1), formatDouble($0.dispatch.p99Micros, 1),
                                formatDouble($0.aloneDispatchP50Micros, 1), formatDouble($0.dispatchRatio, 2),
                                formatDouble($0.saxpyMillis, 2), formatDouble($0.aloneSaxpyMillis, 2), formatDouble($0.saxpyRatio, 2),
                                formatDouble($0.floodPerSecond, 0), $0.settleSeconds.map { formatDouble($0, 2) } ?? "timed out",
                                String($0.flooderSaw.prefix(100))] }))
    }

    /// Waits until none of `pid`'s device threads is queued or running (`tether ps`, every 50 ms),
    /// or until `deadline` (monotonic ns). Returns whether it happened.
    private func awaitNoBacklog(of pid: pid_t, socket: String, deadline: UInt64) -> Bool {
        while true {
            let busy = (try? DaemonControl(socketPath: socket).ps())?.spaces.contains { space in
                space.pid == pid && space.threads.contains { $0.state == .queued || $0.state == .running }
            }
            if busy == false { return true }
            if monotonicNanos() >= deadline { return false }
            usleep(50_000)
        }
    }

    /// Forks the flooder; it writes the last error it got to `report` before it is killed.
    private func startFlood(_ kind: String, socket: String, report: FloodReport) -> pid_t {
        let pid = fork()
        if pid != 0 { return pid }
        var last = ""
        func note(_ reply: Reply?) {
            guard let reply else { return }
            guard case .error(let e) = reply else { return report.countServed() }
            if e.message != last { last = e.message; report.send(e.message) }
        }
        func raw() -> Int32? {
            guard let fd = try? SeqPacketSocket.connect(path: socket, timeoutSeconds: 5).release() else { return nil }
            return fd
        }
        func send(_ fd: Int32, _ r: Request, _ id: UInt64) { _ = try? SeqPacketSocket.send(fd, MessageCodec.encode(r, id: id)) }
        func reply(_ fd: Int32) -> Reply? {
            guard (try? waitReadable(fd, timeoutMillis: 5000)) == true,
                  case .message(let m) = try? SeqPacketSocket.receive(fd, capacity: Wire.maxMessageBytes) else { return nil }
            return (try? MessageCodec.decodeReply(m.bytes))?.1
        }
        // Request ids start at 1: id 0 is the daemon's for errors about the connection itself.
        var id: UInt64 = 1
        switch kind {
        case "spawns":
            // Spawns without ever joining, pipelined 64 deep, for as long as it lives.
            guard let fd = raw() else { tether_exit_now(1) }
            send(fd, .hello(policy: nil, backend: .auto), id)
            id += 1
            _ = reply(fd)
            let spawn = SpawnRequest(program: .builtin(.spin), args: [1], groups: 1)
            while true {
                for _ in 0..<64 { send(fd, .spawn(spawn), id); id += 1 }
                for _ in 0..<64 { note(reply(fd)) }
            }
        case "ring-spawns":
            // The library's own path (the submission ring), spawning without joining.
            guard let device = try? Device(DeviceOptions(socketPath: socket)) else { tether_exit_now(1) }
            while true {
                do {
                    _ = try device.spawn(.spin, args: [1], groups: 1)
                    report.countServed()
                } catch {
                    if "\(error)" != last { last = "\(error)"; report.send(last) }
                }
            }
        case "cpu":
            // The control: a process that only spins on one CPU and never talks to the daemon.
            // What it costs the client is what any busy neighbour on the machine would.
            var x: UInt64 = 1
            while true { x = x &* 6364136223846793005 &+ 1442695040888963407 }
        case "connections":
            while true {
                guard let fd = raw() else { continue }
                send(fd, .ping, 1)
                note(reply(fd))
                close(fd)
            }
        case "waiters":
            // Waiters on itself (alive: never answered) until the cap, then more of them. The
            // hello gives its pid an address space: without one, each wait is answered at once.
            guard let fd = raw() else { tether_exit_now(1) }
            send(fd, .hello(policy: nil, backend: .auto), id)
            id += 1
            _ = reply(fd)
            while true {
                for _ in 0..<64 { send(fd, .awaitTeardown(pid: getpid(), timeoutMillis: 600_000), id); id += 1 }
                send(fd, .ping, id)
                id += 1
                while let r = reply(fd) {
                    if case .pong = r { break }
                    note(r)
                }
            }
        case "requests":
            // Cheap requests the daemon answers at once (ping), pipelined 64 deep and read: as
            // many as its request budget lets through.
            guard let fd = raw() else { tether_exit_now(1) }
            while true {
                for _ in 0..<64 { send(fd, .ping, id); id += 1 }
                for _ in 0..<64 { note(reply(fd)) }
            }
        default:  // paused-reader: requests whose replies it never reads
            guard let fd = raw() else { tether_exit_now(1) }
            while true {
                send(fd, .ping, id)
                id += 1
            }
        }
    }
}

/// A pipe on which a flooder writes what the daemon told it (one line per new sentence), and a
/// shared counter of the requests the daemon did for it.
struct FloodReport {
    var read: Int32
    var write: Int32
    private let counter: UnsafeMutablePointer<UInt32>
    init() {
        var fds: [Int32] = [0, 0]
        precondition(pipe(&fds) == 0)
        read = fds[0]
        write = fds[1]
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        let page = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        precondition(page != MAP_FAILED)
        counter = page!.bindMemory(to: UInt32.self, capacity: 1)
    }
    /// Requests of the flooder answered without an error so far (written by the flooder only).
    var served: UInt32 { tether_atomic_load_u32(counter) }
    func countServed() { tether_atomic_store_u32(counter, served &+ 1) }
    func send(_ s: String) {
        var b = Array((s + "\n").utf8)
        _ = Glibc.write(write, &b, b.count)
    }
    /// The last line written so far.
    func drain() -> String {
        var text = ""
        while true {
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = Glibc.read(read, &buf, buf.count)
            if n <= 0 { break }
            text += String(decoding: buf[0..<n], as: UTF8.self)
        }
        return text.split(separator: "\n").last.map(String.init) ?? ""
    }
    func close() {
        Glibc.close(read)
        Glibc.close(write)
        munmap(counter, 4096)
    }
}
