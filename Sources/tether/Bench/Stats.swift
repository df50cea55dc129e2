import Glibc
import Histogram

/// Min/p50/p90/p99/max of samples in microseconds, through an HdrHistogram (3 significant digits,
/// recorded in nanoseconds), plus the raw samples for JSON and plots.
struct LatencySummary: Codable {
    var count: Int
    var minMicros: Double
    var p50Micros: Double
    var p90Micros: Double
    var p99Micros: Double
    var maxMicros: Double
    var meanMicros: Double

    init(nanos: [UInt64]) {
        var h = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
        // Clamped to an hour: a sample past that is a measurement gone wrong (a wrapped difference),
        // and it must not take the histogram's arithmetic with it.
        for v in nanos { _ = h.record(min(max(v, 1), 3_600_000_000_000)) }
        let us = { (v: UInt64) in Double(v) / 1000 }
        count = nanos.count
        minMicros = nanos.isEmpty ? 0 : us(nanos.min()!)
        p50Micros = nanos.isEmpty ? 0 : us(h.valueAtPercentile(50))
        p90Micros = nanos.isEmpty ? 0 : us(h.valueAtPercentile(90))
        p99Micros = nanos.isEmpty ? 0 : us(h.valueAtPercentile(99))
        maxMicros = nanos.isEmpty ? 0 : us(nanos.max()!)
        meanMicros = nanos.isEmpty ? 0 : h.mean / 1000
    }

    var row: [String] {
        [formatDouble(minMicros, 1), formatDouble(p50Micros, 1), formatDouble(p90Micros, 1), formatDouble(p99Micros, 1), formatDouble(maxMicros, 1)]
    }
    static let header = ["min µs", "p50 µs", "p90 µs", "p99 µs", "max µs"]
}

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let s = values.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Jain's fairness index: 1 when all equal, 1/n when one takes everything.
func jain(_ x: [Double]) -> Double {
    let sum = x.reduce(0, +)
    let squares = x.reduce(0) { $0 + $1 * $1 }
    return squares == 0 ? 0 : sum * sum / (Double(x.count) * squares)
}

/// A one-line progress bar on a terminal (nothing when standard error is not one).
struct Progress {
    let total: Int
    let label: String
    let enabled = isatty(2) != 0
    func update(_ done: Int) {
        guard enabled else { return }
        let width = 30
        let filled = total == 0 ? width : width * done / total
        printErrorRaw("\r\(label) [\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] \(done)/\(total)")
        if done >= total { printErrorRaw("\n") }
    }
}

func printErrorRaw(_ s: String) {
    var b = Array(s.utf8)
    _ = write(2, &b, b.count)
}
