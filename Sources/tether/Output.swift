import Foundation
import TetherCore
import TetherSys


/// Pretty, key-sorted JSON.
func jsonData<T: Encodable>(_ value: T) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    return try encoder.encode(value)
}

/// Pretty, key-sorted JSON on standard output.
func printJSON<T: Encodable>(_ value: T) throws {
    print(String(decoding: try jsonData(value), as: UTF8.self))
}

/// Left-aligned text table.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    var widths = [Int](repeating: 0, count: header.count)
    for row in all { for (i, c) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    return all.map { row in
        row.enumerated().map { i, c in i == row.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16, uppercase: false) }

func formatDouble(_ v: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", v) }

/// `Workloads.make` with its error as a `TetherError`.
func makeWorkload(_ name: String, size: Int?) throws(TetherError) -> any Workload {
    do { return try Workloads.make(name, size: size) } catch { throw TetherError(.invalidArgument, error.description) }
}

/// Runs this `tether` binary with `args` as a child process and returns its standard output.
/// Benchmarks run their in-process baselines this way: a process that loaded Vulkan must not fork
/// victims, and the baseline must not share a process with the client.
func runSelf(_ args: [String]) throws -> Data {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    process.arguments = args
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw fail("`tether \(args.joined(separator: " "))` failed") }
    return data
}

/// `runSelf` for a command that prints JSON, decoded.
func runSelfJSON<T: Decodable>(_ args: [String]) throws -> T {
    try JSONDecoder().decode(T.self, from: try runSelf(args))
}

/// Why `readLine` returned no line.
enum NoLine: Error { case timedOut, closed }

/// The first line (without its newline) written to `fd` before `deadline` (monotonic ns).
func readLine(_ fd: Int32, until deadline: UInt64) -> Result<String, NoLine> {
    var line = [UInt8]()
    while !line.contains(UInt8(ascii: "\n")) {
        let now = monotonicNanos()
        guard now < deadline else { return .failure(.timedOut) }
        guard (try? waitReadable(fd, timeoutMillis: Int32(min(500, (deadline - now) / 1_000_000 + 1)))) == true else { continue }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = read(fd, &buf, 512)
        if n <= 0 { return .failure(.closed) }
        line += buf[0..<n]
    }
    return .success(String(decoding: line.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self))
}
