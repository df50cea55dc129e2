import ArgumentParser
import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherDaemon
import TetherSys

enum TeardownMode: String, ExpressibleByArgument, Codable, CaseIterable {
    /// SIGKILL of every victim.
    case kill
    /// Every victim exits normally (`_exit(0)`).
    case exit
    /// Every victim forks a child that keeps the device fd (closeOnFork off), then is SIGKILLed.
    case forkHeld = "fork-held"
}

enum PolicyChoice: String, ExpressibleByArgument {
    case exit, release, both
    var policies: [LifetimePolicy] {
        switch self {
        case .exit: [.exit]
        case .release: [.release]
        case .both: [.exit, .release]
        }
    }
}

enum NotifierBenchChoice: String, ExpressibleByArgument {
    case bpf, pidfd, both
}

/// Samples of one (policy, notifier, victim size) cell, in nanoseconds from each victim's kill.
struct TeardownCell: Codable {
    var policy: String
    /// The daemon's early notice source: `bpf` or `pidfd` (`external` for a daemon given by --socket).
    var notifier: String
    var mode: String
    var victimMiB: Int
    var victims: Int
    var threads: Int
    var bareNotice: [UInt64] = []
    var notice: [UInt64] = []
    var quiesced: [UInt64] = []
    var released: [UInt64] = []
    /// released − notice: what the daemon adds after it learns of the death.
    var daemonSide: [UInt64] = []
    /// fork-held under release: how long the dead owner's work and memory lived on.
    var livedOn: [UInt64] = []
    /// Victims whose teardown was not seen within the timeout.
    var missing = 0

    var summaries: [String: LatencySummary] {
        var s: [String: LatencySummary] = [:]
        for (name, v) in [("bareNotice", bareNotice), ("notice", notice), ("quiesced", quiesced), ("released", released),
                          ("daemonSide", daemonSide), ("livedOn", livedOn)] where !v.isEmpty {
            s[name] = LatencySummary(nanos: v)
        }
        return s
    }
}

struct TeardownReport: Codable {
    var backend: String
    var device: String
    var mode: String
    var victims: Int
    var threads: Int
    var mirroredMiB: Int
    var runs: Int
    var cells: [TeardownCell]
    /// Each cell's summaries by `key(cell)`, computed once when the report is made.
    var summaries: [String: [String: LatencySummary]]
    /// For the `exit` policy (first victim size): the targets' numbers.
    var daemonSideP99Micros: Double?
    var endToEndP50Micros: Double?
    var bareNoticeP50Micros: Double?
    /// endToEnd p50 / bare notice p50 (target ≤ 1.2).
    var endToEndOverBareNotice: Double?
    /// With the BPF notifier (exit policy): the largest quiesced p99 over the sizes (target ≤ 1 ms
    /// up to 2 GiB), and released p50 / bare notice p50 at the largest size (target ≤ 0.1 at 1 GiB).
    var bpfQuiescedP99Micros: Double?
    var bpfReleasedOverBareNotice: Double?
    var bpfLargestMiB: Int?

    static func key(_ c: TeardownCell) -> String { "\(c.policy)/\(c.notifier)/\(c.victimMiB)MiB" }
    func summaries(of c: TeardownCell) -> [String: LatencySummary] { summaries[Self.key(c)] ?? [:] }
}

struct BenchTeardown: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "teardown",
        abstract: "Kill victims running long device threads and time notice, quiesce and release; compare with bare pidfd notice.",
        discussion: """
        Each run launches N victims (M spin threads each, S MiB of touched private memory), kills them all at once and \
        reads the daemon's timeline of each; in the same run, N identical victims with no device work measure the bare \
        pidfd notice latency (the kernel's own exit cost). Times are from the kill, CLOCK_MONOTONIC.
        """)

    @Option(help: "exit, release or both.") var policy: PolicyChoice = .exit
    @Option(help: "The daemon's early notice source: bpf, pidfd or both (both: pidfd alone where BPF is unavailable, saying why; the release policy uses no early notice, so it runs pidfd only).")
    var notifier: NotifierBenchChoice = .both
    @Option(name: .customLong("memory-budget-mib"),
            help: "Cap on the victims' memory at once: at a size S, min(--victims, budget / S) victims are killed together.")
    var memoryBudgetMiB = 8192
    @OptionGroup var backendOptions: BackendOptions
    @Option(help: "Victim processes killed at once.") var victims = 16
    @Option(help: "Device threads per victim.") var threads = 2
    @Option(name: .customLong("victim-mib"), parsing: .upToNextOption,
            help: "Touched private memory per victim in MiB; several values (or a comma list) make a size sweep.")
    var victimMiB: [String] = ["64"]
    @Flag(help: "Sweep victim sizes 0, 64, 256, 1024, 2048 MiB.") var sweep = false
    @Option(help: "kill (SIGKILL), exit (normal exit) or fork-held (a forked child keeps the fd).") var mode: TeardownMode = .kill
    @Option(name: .customLong("mirror-mib"),
            help: "Mirrored (device-shared) memory per victim in MiB, touched; freeing it is part of the daemon's release.")
    var mirrorMiB = 0
    @Option(help: "Rounds of N victims.") var runs = 3
    @Option(name: .customLong("hold-ms"), help: "fork-held: how long the child holds the fd before it exits.") var holdMillis = 300
    @Option(help: "Use this daemon (its policy) instead of private ones.") var socket: String?
    @Option(help: "Write all samples and summaries as JSON to this file.") var json: String?
    @Option(help: "Draw latency CDFs to this SVG file.") var svg: String?
    @Flag(help: "Print the JSON report on standard output instead of the tables.") var jsonStdout = false

    var sizes: [Int] {
        if sweep { return [0, 64, 256, 1024, 2048] }
        return victimMiB.flatMap { $0.split(separator: ",") }.compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    }

    func validate() throws {
        guard (1...512).contains(victims) else { throw ValidationError("--victims must be 1…512") }
        guard (0...64).contains(threads) else { throw ValidationError("--threads must be 0…64") }
        guard !sizes.isEmpty, sizes.allSatisfy({ (0...16384).contains($0) }) else { throw ValidationError("--victim-mib must be 0…16384") }
        guard runs >= 1 else { throw ValidationError("--runs must be ≥ 1") }
        guard (0...16384).contains(mirrorMiB) else { throw ValidationError("--mirror-mib must be 0…16384") }
        guard memoryBudgetMiB >= 1 else { throw ValidationError("--memory-budget-mib must be ≥ 1") }
    }

    /// Victims killed together at `mib` MiB each (bounded by the memory budget, at least one).
    func victims(atMiB mib: Int) -> Int { min(victims, max(1, memoryBudgetMiB / max(1, mib + mirrorMiB))) }

    /// The notifiers to measure for `policy`: BPF only where the daemon can load it.
    func notifiers(for policy: LifetimePolicy, bpfNote: String) throws -> [String] {
        if socket != nil { return ["external"] }
        let bpfUsable = bpfNote.hasPrefix("bpf")
        switch notifier {
        case .pidfd: return ["pidfd"]
        case .bpf:
            guard bpfUsable else { throw fail("--notifier bpf: \(bpfNote)") }
            return policy == .exit ? ["bpf"] : ["pidfd"]
        case .both:
            return policy == .exit && bpfUsable ? ["pidfd", "bpf"] : ["pidfd"]
        }
    }

    func run() throws {
        _ = tether_set_child_subreaper()
        var cells: [TeardownCell] = []
        var backendName = "", deviceName = ""
        let policies = socket == nil ? policy.policies : [try DaemonControl(socketPath: SocketPath.resolve(socket)).ps().policy]
        let bpfNote = socket == nil && notifier != .pidfd ? ExitNotifierChoice.probe() : "pidfd"
        if notifier == .both && socket == nil && !bpfNote.hasPrefix("bpf") { printError("teardown: measuring pidfd only: \(bpfNote)") }
        for p in policies {
            for n in try notifiers(for: p, bpfNote: bpfNote) {
                let daemon = try BenchDaemon(socket: socket, backend: backendOptions.backend, policy: p,
                                             notifier: socket == nil ? n : nil)
                defer { daemon.stop() }
                let control = try DaemonControl(socketPath: daemon.path)
                let table = try control.ps()
                backendName = table.backend.rawValue
                deviceName = table.deviceName
                for mib in sizes {
                    let count = victims(atMiB: mib)
                    var cell = TeardownCell(policy: p.description, notifier: n, mode: mode.rawValue, victimMiB: mib, victims: count,
                                            threads: threads)
                    let progress = Progress(total: runs, label: "teardown \(p) \(n) \(mib) MiB × \(count)")
                    for r in 0..<runs {
                        try bareRound(mib: mib, count: count, into: &cell)
                        try deviceRound(path: daemon.path, control: control, mib: mib, count: count, into: &cell)
                        progress.update(r + 1)
                    }
                    cells.append(cell)
                }
            }
        }
        var report = TeardownReport(backend: backendName, device: deviceName, mode: mode.rawValue, victims: victims, threads: threads,
                                    mirroredMiB: mirrorMiB, runs: runs, cells: cells, summaries: [:])
        for c in cells { report.summaries[TeardownReport.key(c)] = c.summaries }
        if let c = cells.first(where: { $0.policy == "exit" }) {
            let s = report.summaries(of: c)
            report.daemonSideP99Micros = s["daemonSide"]?.p99Micros
            report.endToEndP50Micros = s["released"]?.p50Micros
            report.bareNoticeP50Micros = s["bareNotice"]?.p50Micros
            if let e = report.endToEndP50Micros, let b = report.bareNoticeP50Micros, b > 0 { report.endToEndOverBareNotice = e / b }
        }
        let bpfCells = cells.filter { $0.policy == "exit" && $0.notifier == "bpf" }
        if let largest = bpfCells.max(by: { $0.victimMiB < $1.victimMiB }) {
            report.bpfQuiescedP99Micros = bpfCells.compactMap { report.summaries(of: $0)["quiesced"]?.p99Micros }.max()
            let s = report.summaries(of: largest)
            if let e = s["released"]?.p50Micros, let b = s["bareNotice"]?.p50Micros, b > 0 { report.bpfReleasedOverBareNotice = e / b }
            report.bpfLargestMiB = largest.victimMiB
        }
        if let json { try jsonData(report).write(to: URL(fileURLWithPath: json)) }
        if let svg { try teardownSVG(report).write(toFile: svg, atomically: true, encoding: .utf8) }
        if jsonStdout { return try printJSON(report) }
        print(describeTeardown(report))
    }

    /// N victims with no device work: the kernel's own exit, as a pidfd shows it.
    func bareRound(mib: Int, count: Int, into cell: inout TeardownCell) throws {
        var list: [Victim] = []
        for _ in 0..<count {
            list.append(try Victim.launch(VictimSpec(socketPath: "", privateMiB: mib, threads: 0, deviceWork: false,
                                                     mirroredMiB: mirrorMiB)))
        }
        for v in list { try v.waitReady() }
        for v in list { v.killNow() }
        for (v, noticed) in zip(list, waitAll(list)) {
            if let noticed { cell.bareNotice.append(noticed - v.exitNanos) }
        }
    }

    /// Records when each victim's pidfd becomes readable (one epoll over all of them).
    func waitAll(_ list: [Victim], timeoutSeconds: Double = 30) -> [UInt64?] {
        var times = [UInt64?](repeating: nil, count: list.count)
        guard let epoll = try? Epoll() else { return times }
        for (i, v) in list.enumerated() { try? epoll.add(v.pidfd.raw, token: UInt64(i)) }
        var left = list.count
        let deadline = monotonicNanos() + UInt64(timeoutSeconds * 1e9)
        while left > 0 && monotonicNanos() < deadline {
            for (token, _) in epoll.wait(timeoutMillis: 100) where times[Int(token)] == nil {
                times[Int(token)] = monotonicNanos()
                epoll.remove(list[Int(token)].pidfd.raw)
                left -= 1
            }
        }
        return times
    }

    func deviceRound(path: String, control: DaemonControl, mib: Int, count: Int, into cell: inout TeardownCell) throws {
        var list: [Victim] = []
        for _ in 0..<count {
            list.append(try Victim.launch(VictimSpec(socketPath: path, privateMiB: mib, threads: threads, deviceWork: true,
                                                     mirroredMiB: mirrorMiB, forkHolder: mode == .forkHeld,
                                                     closeOnFork: mode != .forkHeld)))
        }
        for v in list { try v.waitReady() }
        for v in list {
            if mode == .exit { v.exitNow() } else { v.killNow() }
        }
        let heldUnderRelease = mode == .forkHeld && cell.policy == "release"
        if heldUnderRelease {
            usleep(UInt32(holdMillis * 1000))  // the holders' lifetime: what release makes the dead owner's work live
            for v in list { v.releaseHolder() }
        }
        for v in list {
            // A timeline from before this kill belongs to an earlier process with a recycled pid.
            guard let t = try control.awaitTeardown(pid: v.pid, timeoutSeconds: 30).last(where: { $0.releasedNanos >= v.exitNanos }) else {
                cell.missing += 1
                continue
            }
            if heldUnderRelease {
                cell.livedOn.append(t.releasedNanos &- v.exitNanos)
                continue
            }
            cell.notice.append(t.noticeNanos &- v.exitNanos)
            cell.quiesced.append(t.quiescedNanos &- v.exitNanos)
            cell.released.append(t.releasedNanos &- v.exitNanos)
            cell.daemonSide.append(t.releasedNanos &- t.noticeNanos)
        }
        list.forEach { $0.releaseHolder() }
    }

    func describeTeardown(_ r: TeardownReport) -> String {
        var out = ["teardown latency on \(r.device) (\(r.backend)): up to \(r.victims) victims × \(r.threads) spin threads, \(r.mirroredMiB) MiB mirrored each (--mirror-mib; each cell below gives its private MiB, --victim-mib), mode \(r.mode), \(r.runs) runs; µs from the kill"]
        let names: [(String, String)] = [("bareNotice", "bare pidfd notice (no device work)"), ("notice", "t_notice"),
                                         ("quiesced", "t_quiesced"), ("released", "t_released (end to end)"),
                                         ("daemonSide", "released − notice (daemon side)"),
                                         ("livedOn", "device work lived on after the kill")]
        for c in r.cells {
            out.append("")
            out.append("policy \(c.policy), notifier \(c.notifier), \(c.victims) victims of \(c.victimMiB) MiB\(c.missing > 0 ? " — \(c.missing) teardowns not seen in 30 s" : ""):")
            let s = r.summaries(of: c)
            var rows: [[String]] = []
            for (key, label) in names { if let v = s[key] { rows.append([label, "\(v.count)"] + v.row) } }
            out.append(table(["component", "n"] + LatencySummary.header, rows))
            if let e = s["released"]?.p50Micros, let b = s["bareNotice"]?.p50Micros, b > 0 {
                out.append("end-to-end p50 / bare notice p50 = \(formatDouble(e / b, 3))")
            }
        }
        if sizesSwept(r) || Set(r.cells.map(\.notifier)).count > 1 {
            out.append("")
            out.append("comparison (µs from the kill, p50 / p99): what the kernel's exit costs vs when the daemon noticed, stopped and freed")
            out.append(teardownComparison(r))
        }
        return out.joined(separator: "\n")
    }

    func sizesSwept(_ r: TeardownReport) -> Bool { Set(r.cells.map(\.victimMiB)).count > 1 }
}

/// One row per cell: bare notice, notice, quiesced and released (p50 / p99), and released over the
/// bare notice (p50), for the text output, `bench all` and the README.
func teardownComparison(_ r: TeardownReport, markdown: Bool = false) -> String {
    func pair(_ s: LatencySummary?) -> String { s.map { "\(formatDouble($0.p50Micros, 0)) / \(formatDouble($0.p99Micros, 0))" } ?? "-" }
    let header = ["policy", "notifier", "MiB", "victims", "bare notice", "notice", "quiesced", "released", "released / bare (p50)"]
    let rows = r.cells.map { c -> [String] in
        let s = r.summaries(of: c)
        let ratio = s["released"].flatMap { e in s["bareNotice"].map { b in b.p50Micros > 0 ? formatDouble(e.p50Micros / b.p50Micros, 3) : "-" } } ?? "-"
        return [c.policy, c.notifier, "\(c.victimMiB)", "\(c.victims)", pair(s["bareNotice"]), pair(s["notice"]), pair(s["quiesced"]),
                pair(s["released"]), ratio]
    }
    guard markdown else { return table(header, rows) }
    return (["| " + header.joined(separator: " | ") + " |", "|" + String(repeating: "---|", count: header.count)]
        + rows.map { "| " + $0.joined(separator: " | ") + " |" }).joined(separator: "\n")
}
