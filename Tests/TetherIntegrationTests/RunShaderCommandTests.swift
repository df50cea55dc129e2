import Foundation
import Glibc
import TetherCore
import TetherTestSupport
import Testing

/// `tether run --spirv` as a user meets it: a GLSL or SPIR-V file, buffers from files, outputs
/// written back, one JSON object, and one clear line for every mistake.
@Suite(.serialized) final class RunShaderCommandTests {
    let dir: String

    /// A directory of its own for each test's instance (Swift Testing makes one per test, and the
    /// previous one's `deinit` may run after the next `init`: a shared path was removed under a test).
    init() throws {
        var template = Array((FileManager.default.temporaryDirectory.path + "/tether-run-spirv-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        dir = String(cString: made)
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func tether(_ args: [String]) throws -> TetherRun {
        // A private daemon on lavapipe for each run (no user daemon is ever touched).
        try runTether(["run", "--backend", "vulkan"] + args, environment: ["TETHER_SOCKET": "\(dir)/none.sock"], keepStderr: true)
    }

    func write(_ name: String, floats: [Float]) -> String {
        let path = "\(dir)/\(name)"
        #expect(FileManager.default.createFile(atPath: path, contents: floats.withUnsafeBytes { Data($0) }))
        return path
    }

    @Test("a GLSL file with buffers from files, an output written back, and the JSON fields tools read")
    func glslRunWithOutput() throws {
        let n = 1000
        let a = write("a.bin", floats: (0..<n).map(Float.init)), b = write("b.bin", floats: Array(repeating: 3, count: n))
        let c = write("c.bin", floats: Array(repeating: 1, count: n))
        let out = "\(dir)/out.bin"
        let r = try tether(["--spirv", testShaderPath("elementwise3"), "--buffer", "0.0=@\(a)", "--buffer", "0.1=@\(b)",
                            "--buffer", "0.2=@\(c)", "--groups", "8", "--output", "0.2=\(out)", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(json["state"] as? String == "finished")
        #expect(json["groups"] as? [Int] == [8, 1, 1])
        for key in ["error", "seconds", "bindings"] { #expect(json.keys.contains(key), "\(key)") }
        #expect(json["error"] is NSNull)
        #expect((json["bindings"] as? [[String: Any]])?.map { $0["kind"] as? String } == ["storage", "storage", "storage"])
        let data = try Data(contentsOf: URL(fileURLWithPath: out))
        let values = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(values == (0..<n).map { Float($0) * 3 + 1 })
    }

    @Test("SPIR-V with a spec constant and push constants from a file")
    func spirvWithSpecAndPush() throws {
        let words = try compileTestShader("image2d")
        let spv = "\(dir)/image2d.spv"
        try #require(FileManager.default.createFile(atPath: spv, contents: words.withUnsafeBytes { Data($0) }))
        let push = "\(dir)/push.bin"
        try #require(FileManager.default.createFile(atPath: push, contents: [UInt32(20), UInt32(10)].withUnsafeBytes { Data($0) }))
        let out = "\(dir)/img.bin"
        let r = try tether(["--spirv", spv, "--buffer", "0.0=zeros:800", "--push", "@\(push)", "--groups", "3,2", "--output", "0.0=\(out)"])
        #expect(r.status == 0, "\(r.stderr)")
        let pixels = try Data(contentsOf: URL(fileURLWithPath: out)).withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
        #expect(pixels[10 * 20 - 1] == (19 * 7) ^ (9 * 13))

        let spec = try tether(["--spirv", testShaderPath("prefix_spec"), "--buffer", "0.0=zeros:256", "--spec", "0=3", "--groups", "1",
                               "--output", "0.0=\(out)"])
        #expect(spec.status == 0, "\(spec.stderr)")
        let sums = try Data(contentsOf: URL(fileURLWithPath: out)).withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
        #expect(sums.prefix(3) == [3, 6, 9])
    }

    @Test("every mistake is one clear line and a non-zero exit")
    func mistakes() throws {
        let shader = testShaderPath("prefix_spec")
        let cases: [([String], String)] = [
            (["--spirv", "\(dir)/missing.spv", "--groups", "1"], "cannot read"),
            (["--spirv", shader, "--groups", "1"], "--buffer 0.0="),
            (["--spirv", shader, "--buffer", "3.1=zeros:64", "--buffer", "0.0=zeros:64"], "binding 3.1 is not in the module"),
            (["--spirv", shader, "--buffer", "0.0=zeros:64", "--spec", "5=1"], "no specialization constant 5"),
            (["--spirv", shader, "--buffer", "0.0=zeros:64", "--spec", "0=minus"], "not a uint"),
            (["--spirv", shader, "--buffer", "0.0=zeros:64", "--groups", "0"], "--groups"),
            (["--spirv", shader, "--buffer", "0.0=@\(dir)/nothing"], "cannot read"),
            (["--spirv", shader, "--buffer", "0.0=zeros:64", "--output", "1.0=x"], "no --buffer 1.0"),
            (["--spirv", shader, "--buffer", "0.0=zeros:64", "--push", "@\(dir)/a.bin"], "no push constants"),
            (["--spirv", testShaderPath("raw_pointer"), "--groups", "1"], "raw pointers"),
        ]
        _ = write("a.bin", floats: [1])
        for (args, expected) in cases {
            let r = try tether(args)
            #expect(r.status != 0, "\(args)")
            #expect(r.stderr.hasPrefix("tether: ") && r.stderr.contains(expected), "\(args): \(r.stderr)")
        }
    }
}
