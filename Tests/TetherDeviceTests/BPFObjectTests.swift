import CTetherBPF
import Foundation
import Testing

/// The committed `Sources/CTetherBPF/exit_notifier_object.c` must match `bpf/exit_notifier.bpf.c`:
/// the digest check runs everywhere, the byte-for-byte check where clang has the BPF target.
@Suite("BPFObject")
struct BPFObjectTests {
    @Test func sourceDigestMatchesTheProgram() throws {
        let source = ShaderModuleTests.root.appendingPathComponent("bpf/exit_notifier.bpf.c")
        let digest = String(cString: tether_exit_notifier_source_digest_pointer())
        #expect(SHA256.hex(try [UInt8](Data(contentsOf: source))) == digest,
                "bpf/exit_notifier.bpf.c changed since exit_notifier_object.c was written: run tools/build-bpf")
    }

    @Test func theObjectIsABPFELFFile() {
        let bytes = UnsafeBufferPointer(start: tether_exit_notifier_object_pointer(), count: Int(tether_exit_notifier_object_size))
        #expect(Array(bytes.prefix(4)) == [0x7f, 0x45, 0x4c, 0x46], "ELF magic")
        #expect(bytes[18] == 247, "e_machine EM_BPF")
    }

    @Test(.enabled(if: BPFObjectTests.clangHasBPF, "clang with the bpf target is not on PATH; skipped the regeneration check"))
    func generatedObjectIsUpToDate() throws {
        let (status, text) = try ShaderModuleTests.check("tools/build-bpf")
        #expect(status == 0, "tools/build-bpf --check: \(text)")
        if !text.contains("up to date") { print("BPFObjectTests: \(text)") }
    }

    static var clangHasBPF: Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["clang", "-print-targets"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let found = process.terminationStatus == 0 && text.contains(" bpf ")
        if !found { print("BPFObjectTests: clang with the bpf target not found, skipping tools/build-bpf --check") }
        return found
    }
}
