import ArgumentParser
import Foundation
import Glibc
import TetherCore
import TetherDevice
import TetherSys

struct BenchAll: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "all",
        abstract: "A quick version of every benchmark on every backend here; writes a Markdown report and a CDF picture.",
        discussion: "Each benchmark runs in its own process (a process that loaded Vulkan must not fork victims).")

    @Option(help: "The Markdown report.") var report = "bench-report.md"
    @Option(help: "The teardown CDF picture.") var svg = "bench-teardown.svg"
    @Option(parsing: .upToNextOption, help: "Backends to measure (default: vulkan where usable, and software).") var backends: [String] = []
    @Option(help: "Victims of the teardown benchmark.") var victims = 64
    @Option(name: .customLong("victim-mib"), help: "Touched private memory of each teardown victim.") var victimMiB = 16
    @Option(name: .customLong("memory-budget-mib"), help: "Cap on the early-notice victims' memory at once.") var memoryBudgetMiB = 8192

    func run() throws {
        let started = monotonicNanos()
        let available = backends.isEmpty ? defaultBackends() : backends
        var md = ["# Tether benchmark report", "",
                  "Made by `tether bench all` on \(machine()). Every ratio compares numbers measured in the same run.", ""]
        for backend in available {
            md.append("## Backend: \(backend)")
            md.append("")
            let teardown: TeardownReport = try child(["bench", "teardown", "--backend", backend, "--policy", "both", "--victims", "\(victims)",
                                                      "--threads", "2", "--victim-mib", "\(victimMiB)", "--runs", "2", "--json-stdout"]
                                                     + (backend == available.first ? ["--svg", svg] : []))
            md.append("### Teardown (\(teardown.victims) victims × \(teardown.threads) spin threads, \(victimMiB) MiB each, all SIGKILLed at once; µs from the kill)")
            md.append("")
            md.append("| policy | notifier | component | n | min | p50 | p90 | p99 | max |")
            md.append("|---|---|---|---|---|---|---|---|---|")
            for c in teardown.cells {
                let summaries = teardown.summaries(of: c)
                for (key, label) in [("bareNotice", "bare pidfd notice"), ("notice", "notice"), ("quiesced", "quiesced"),
                                     ("released", "released (end to end)"), ("daemonSide", "released − notice (daemon side)")] {
                    guard let s = summaries[key] else { continue }
                    md.append("| \(c.policy) | \(c.notifier) | \(label) | \(s.count) | " + s.row.joined(separator: " | ") + " |")
                }
            }
            if let r = teardown.endToEndOverBareNotice, let d = teardown.daemonSideP99Micros {
                md.append("")
                md.append("exit policy: daemon side p99 **\(formatDouble(d, 1)) µs** (target ≤ 1000); end-to-end p50 / bare notice p50 = **\(formatDouble(r, 3))** (target ≤ 1.2).")
            }
            // Early notice: the BPF notifier against the pidfd at sizes where the kernel's own exit is slow.
            let early: TeardownReport = try child(["bench", "teardown", "--backend", backend, "--policy", "exit", "--notifier", "both",
                                                   "--victims", "\(victims)", "--threads", "2", "--victim-mib", "256", "1024",
                                                   "--memory-budget-mib", "\(memoryBudgetMiB)", "--runs", "1", "--json-stdout"])
            md += ["", "### Early notice: BPF vs pidfd notifier (victims per size capped by \(memoryBudgetMiB) MiB at once; µs from the kill, p50 / p99)", "",
                   teardownComparison(early, markdown: true)]
            if let q = early.bpfQuiescedP99Micros, let r = early.bpfReleasedOverBareNotice {
                md += ["", "BPF notifier: quiesced p99 **\(formatDouble(q, 1)) µs** (target ≤ 1000); released p50 / bare notice p50 at \(early.bpfLargestMiB ?? 0) MiB = **\(formatDouble(r, 3))** (target ≤ 0.1)."]
            }
            let dispatch: DispatchReport = try child(["bench", "dispatch", "--backend", backend, "--runs", "300", "--json"])
            let kill: KillReport = try child(["bench", "kill", "--backend", backend, "--runs", "30", "--json"])
            let fairness: FairnessReport = try child(["bench", "fairness", "--backend", backend, "--seconds", "2", "--json"])
            // lavapipe is ~50× slower than the software backend: smaller problems keep this quick.
            let fast = backend == "software"
            let slicing: SlicingReport = try child(["bench", "slicing", "--backend", backend, "--json"])
            let throughput: ThroughputReport = try child(["bench", "throughput", "--backend", backend, "--runs", "3",
                                                          "--scale", fast ? "1" : "0.25", "--json"])
            md += ["", "### Latency and sharing", "",
                   "| measurement | result | target |", "|---|---|---|",
                   "| dispatch round trip, daemon (run = spawn+join) p50 / p99 | \(formatDouble(dispatch.daemon.p50Micros, 1)) / \(formatDouble(dispatch.daemon.p99Micros, 1)) µs | |",
                   "| dispatch, direct in-process p50 / p99 | \(formatDouble(dispatch.direct.p50Micros, 1)) / \(formatDouble(dispatch.direct.p99Micros, 1)) µs | |",
                   "| dispatch ratio daemon/direct (p50) | \(formatDouble(dispatch.ratio, 2)) | ≤ 1.1 |",
                   "| kill of a running 10 s spin, p50 / p99 (\(kill.runs) runs) | \(formatDouble(kill.p50Micros, 1)) / \(formatDouble(kill.p99Micros, 1)) µs | p99 ≤ 1000 µs |",
                   "| fairness 1 vs 8 threads: shares | " + fairness.shares.map { "\($0.threads) thr: \(formatDouble($0.share * 100, 1)) %" }.joined(separator: ", ") + " | ±10 % |",
                   "| Jain's index | \(formatDouble(fairness.jain, 4)) | ≥ 0.95 |",
                   "| slicing: sliced/unsliced throughput (saxpy \(slicing.size >> 20) Mi, \(formatDouble(slicing.slices, 0)) slices, \(slicing.slicesInFlight) in flight; median of \(slicing.runs) pairs) | \(formatDouble(slicing.throughputRatio, 3)) | ≥ 0.95 |"]
            md += ["", "### Throughput (\(fast ? "default" : "quarter") sizes, median of 3)", "",
                   "| workload | size | unit | daemon | direct | daemon/direct | verified |", "|---|---|---|---|---|---|---|"]
            for r in throughput.rows {
                md.append("| \(r.workload) | \(r.size) | \(r.unit) | \(formatDouble(r.daemonRate)) | \(formatDouble(r.directRate)) | \(formatDouble(r.ratio, 3)) | \(r.verified ? "yes" : "NO") |")
            }
            md.append("")
            md.append("STREAM-triad bandwidth measured in the same run: \(formatDouble(throughput.triadGBps)) GB/s"
                + (throughput.saxpyOverTriad.map { "; software saxpy / triad = **\(formatDouble($0, 3))** (target ≥ 0.8)" } ?? "") + ".")
            md.append("")
        }
        md.append("Total time: \(formatDouble(Double(monotonicNanos() - started) / 1e9, 1)) s. Rerun: `tether bench all`.")
        try md.joined(separator: "\n").appending("\n").write(toFile: report, atomically: true, encoding: .utf8)
        print(md.joined(separator: "\n"))
        print("\nwrote \(report) and \(svg)")
    }

    func defaultBackends() -> [String] {
        // In a child: listing Vulkan devices loads the driver, and this process forks victims.
        let usable = (try? child(["devices", "--json"]) as DeviceInventory)?.vulkanDevices.contains(where: \.usable) ?? false
        return usable ? ["vulkan", "software"] : ["software"]
    }

    /// Runs `tether ARGS` and decodes its JSON output.
    func child<T: Decodable>(_ args: [String]) throws -> T {
        printError("tether \(args.joined(separator: " "))")
        return try runSelfJSON(args)
    }

    func machine() -> String {
        var u = utsname()
        uname(&u)
        let kernel = withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let cpu = ((try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "").split(separator: "\n")
            .first { $0.hasPrefix("model name") }.map { String($0.split(separator: ":").last ?? "").trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        return "\(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores (\(cpu)), Linux \(kernel)"
    }
}
