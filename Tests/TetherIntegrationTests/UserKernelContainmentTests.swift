import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import TetherTestSupport
import Testing

/// Untrusted kernels stay inside their owner: raw pointers are refused, robust buffer access keeps
/// every access inside its binding, and no module a client can send stops the daemon.
@Suite(.serialized) struct UserKernelContainmentTests {
    @Test("a module with raw pointers is refused with a sentence saying why, and so is the pointer-ABI path")
    func rawPointersRefused() throws {
        let rig = try UserKernelRig()
        let words = try compileTestShader("raw_pointer")
        do {
            _ = try rig.device.loadModule(spirv: words)
            Issue.record("a buffer-reference module was accepted")
        } catch {
            #expect(error.code == .permissionDenied)
            #expect(error.message.contains("PhysicalStorageBufferAddresses") && error.message.contains("raw pointers"))
        }
        do {
            _ = try rig.device.spawn(spirv: words, invocationsPerGroup: 1, args: [], groups: 1)
            Issue.record("the pointer-ABI path was accepted without --allow-raw-pointers")
        } catch {
            #expect(error.code == .permissionDenied)
        }
        #expect(rig.finish().isEmpty)

        // Behind --allow-raw-pointers the daemon's own uid may load it (it is not run here).
        let trusted = try UserKernelRig(extra: ["--allow-raw-pointers"])
        #expect(throws: Never.self) { _ = try trusted.device.loadModule(spirv: words) }
        #expect(trusted.finish().isEmpty)
    }

    @Test("out-of-range indexes read zero and drop writes: the owner's other bytes and another process's memory are untouched")
    func outOfRangeIsContained() throws {
        let rig = try UserKernelRig()
        // Another client, a real process, with a known pattern in its mirrored memory.
        let h = Handshake(), back = Handshake()
        let other = forkChild {
            guard let device = try? Device(rig.daemon.options()), let memory = try? device.mirror(bytes: 1 << 16) else { return 2 }
            let words = memory.uints(1 << 14)
            for i in words.indices { words[i] = 0x5A5A_5A5A }
            h.send("ready")
            guard back.receive() == "check" else { return 3 }
            return words.allSatisfy { $0 == 0x5A5A_5A5A } ? 0 : 1
        }
        #expect(h.receive() == "ready")

        let module = try rig.load("out_of_range")
        let memory = try rig.device.mirror(bytes: 1 << 16)
        let all = memory.uints(1 << 14)
        for i in all.indices { all[i] = 0xA5A5_A5A5 }
        let n = 64  // one workgroup; each binding holds exactly its 64 words
        let input = memory.uints(at: 4096, n)
        for i in 0..<n { input[i] = 7 }
        let bindings = [BufferBinding(set: 0, binding: 0, memory: memory, offset: 4096, bytes: n * 4),
                        BufferBinding(set: 0, binding: 1, memory: memory, offset: 8192, bytes: n * 4)]
        for reach: UInt32 in [64, 1000, 1 << 20, 1 << 28, 0x3FFF_FFFF] {
            let report = try rig.device.run(module, bindings: bindings, pushConstants: pushConstantBytes(of: reach), grid: Grid(1))
            #expect(report.state == .finished)
            let out = memory.uints(at: 8192, n)
            if UInt64(reach + 63) * 4 < 1 << 32 {
                #expect(out.allSatisfy { $0 == 1 }, "reads past the binding returned non-zero (reach \(reach)): \(Array(out.prefix(4)))")
            }
            // lavapipe computes the byte offset in 32 bits: an index whose offset passes 4 GiB wraps
            // around *inside* the binding (it reads the input's 7s). Contained all the same — the
            // check of every word outside the bindings below is what matters.
        }
        // Every word outside the output binding is as it was (the input's 7s aside).
        let outside = (0..<(1 << 14)).filter { !(2048..<2048 + n).contains($0) && !(1024..<1024 + n).contains($0) }
        #expect(outside.allSatisfy { all[$0] == 0xA5A5_A5A5 }, "a write escaped its binding")
        back.send("check")
        #expect(waitChild(other) == 0, "the other process's memory changed")
        #expect(rig.finish().isEmpty)
    }

    @Test("an owner killed while its user kernel runs: the work dies with it")
    func ownerDeathKillsUserKernel() throws {
        let rig = try UserKernelRig()
        let words = try compileTestShader("increment")
        let h = Handshake()
        let child = forkChild {
            guard let device = try? Device(rig.daemon.options()), let module = try? device.loadModule(spirv: words),
                  let memory = try? device.mirror(bytes: 64 * 60_000 * 4) else { return 2 }
            guard (try? device.spawn(module, bindings: [BufferBinding(set: 0, binding: 0, memory: memory)], grid: Grid(60_000))) != nil
            else { return 3 }
            h.send("spawned")
            pause()
            return 0
        }
        #expect(h.receive() == "spawned")
        kill(child, SIGKILL)
        var status: Int32 = 0
        waitpid(child, &status, 0)
        let timelines = try rig.daemon.control().awaitTeardown(pid: child, timeoutSeconds: 10)
        #expect(timelines.first?.threadsKilled == 1)
        #expect(try rig.daemon.control().ps().spaces.allSatisfy { $0.pid != child })
        #expect(rig.finish().isEmpty)
    }

    @Test("what a spawn runs is checked after specialization: a WorkgroupSize expression, and shared memory sized by a spec constant")
    func checkedAfterSpecialization() throws {
        let rig = try UserKernelRig()
        // x = 4 × spec 0: reflection alone cannot know it; the specialized module runs 4 × 64.
        let expr = try rig.device.loadModule(spirv: try assembleTestShader("workgroup_size_expr"))
        #expect(expr.description.localSize == [0, 1, 1])
        let memory = try rig.device.mirror(bytes: 2 * 256 * 4)
        let report = try rig.device.run(expr, bindings: [BufferBinding(set: 0, binding: 0, memory: memory)],
                                        specialization: [.uint(0, 64)], grid: Grid(2))
        #expect(report.state == .finished)
        let local = memory.uints(512)
        #expect(Array(local) == (0..<512).map { UInt32($0 % 256) })
        func refusal(_ module: KernelModule, _ spec: [SpecValue]) -> String {
            do {
                _ = try rig.device.run(module, bindings: [BufferBinding(set: 0, binding: 0, memory: memory)], specialization: spec,
                                       grid: Grid(1))
                return "accepted"
            } catch { return error.message }
        }
        // 4 × 512 = 2,048 invocations: over lavapipe's 1,024 although spec 0 itself is small.
        #expect(refusal(expr, [.uint(0, 512)]).contains("local size x = 2048"))

        let shared = try rig.load("shared_spec")
        #expect(refusal(shared, [.uint(0, 8)]) == "accepted")
        // 2 × 0x10000001 uvec4s: 8 GiB + 32 bytes, which wraps to 32 bytes in 32 bits.
        #expect(refusal(shared, [.uint(0, 0x1000_0001)]).contains("workgroup (shared) memory"))
        // Without wrapping: 2 × 4,096 uvec4s = 128 KiB, over lavapipe's 32 KiB.
        #expect(refusal(shared, [.uint(0, 4096)]).contains("workgroup (shared) memory"))
        #expect(rig.daemon.process.isRunning)
        #expect(rig.finish().isEmpty)
    }

    @Test("malformed launches are refused naming what is wrong")
    func badLaunches() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("uniform_push")
        let memory = try rig.device.mirror(bytes: 1 << 16)
        let good = [BufferBinding(set: 0, binding: 0, memory: memory, offset: 0, bytes: 16),
                    BufferBinding(set: 0, binding: 1, memory: memory, offset: 256, bytes: 256),
                    BufferBinding(set: 0, binding: 2, memory: memory, offset: 512, bytes: 256)]
        let push = pushConstantBytes(of: Float(1))
        func refusal(_ bindings: [BufferBinding], push: [UInt8], spec: [SpecValue] = [], grid: Grid = Grid(1)) -> String {
            do {
                _ = try rig.device.run(module, bindings: bindings, pushConstants: push, specialization: spec, grid: grid)
                return "accepted"
            } catch { return error.message }
        }
        #expect(refusal(Array(good.prefix(2)), push: push).contains("binding 0.2"))
        #expect(refusal(good + [BufferBinding(set: 3, binding: 0, address: memory.address, bytes: 4)], push: push).contains("binding 3.0 is not in the module"))
        #expect(refusal([good[0], good[1], BufferBinding(set: 0, binding: 2, address: 0x1000, bytes: 256)], push: push).contains("not inside one mirrored region"))
        #expect(refusal([BufferBinding(set: 0, binding: 0, memory: memory, offset: 0, bytes: 8), good[1], good[2]], push: push).contains("at least 12 bytes"))
        #expect(refusal(good, push: []).contains("push-constant block is 4 bytes"))
        #expect(refusal(good, push: push, spec: [.uint(9, 1)]).contains("no specialization constant 9"))
        #expect(refusal(good, push: push, grid: Grid(1, 1, 0)).contains("grid z"))
        #expect(refusal([BufferBinding(set: 0, binding: 0, memory: memory, offset: 4, bytes: 16), good[1], good[2]], push: push).contains("multiple of"))
        #expect(refusal(good, push: push) == "accepted")
        #expect(rig.finish().isEmpty)
    }

    /// Byte-level mutations of real modules, sent to one daemon: every one is answered (refused
    /// with a sentence, or loaded and run), and the daemon is the same live process at the end.
    @Test("10,000 mutated modules against one daemon: every submission answered, the daemon alive and serving")
    func fuzzMutatedModules() throws {
        let rig = try UserKernelRig()
        let seeds = try ["prefix_spec", "elementwise3", "image2d", "uniform_push", "shared_reduce", "subgroup_sum",
                         "histogram_atomic", "two_sets", "num_workgroups"].map { try compileTestShader($0) }
        let memory = try rig.device.mirror(bytes: 1 << 20)
        var rng = SplitMix64(seed: 0x7E7)
        var counts = (sent: 0, refused: 0, loaded: 0, ran: 0, runRefused: 0, timedOut: 0)
        var unanswered = 0
        let start = monotonicNanos()
        for _ in 0..<10_000 {
            var words = seeds[Int(rng.next() % UInt64(seeds.count))]
            for _ in 0..<(1 + rng.next() % 4) {
                let i = Int(rng.next() % UInt64(words.count))
                switch rng.next() % 3 {
                case 0: words[i] ^= 1 << UInt32(rng.next() % 32)          // a bit flip
                case 1: words[i] = UInt32(truncatingIfNeeded: rng.next())  // a random word
                default: words[i] = UInt32(rng.next() % 64)                // a small value: ids, counts, opcodes
                }
            }
            counts.sent += 1
            let module: KernelModule
            if let dump = ProcessInfo.processInfo.environment["TETHER_FUZZ_DUMP"] {
                _ = FileManager.default.createFile(atPath: dump, contents: words.withUnsafeBytes { Data($0) })
            }
            do { module = try rig.device.loadModule(spirv: words) } catch {
                if error.code == .deviceLost { unanswered += 1; break }
                counts.refused += 1
                continue
            }
            counts.loaded += 1
            let bindings = module.description.bindings.enumerated().map { i, b in
                BufferBinding(set: b.set, binding: b.binding, memory: memory, offset: i * 16_384,
                              bytes: Int(min(max(b.minBytes, 256), 16_384)))
            }
            let push = [UInt8](repeating: 0, count: Int(module.description.pushConstantBytes))
            let thread: DeviceThreadHandle
            do { thread = try rig.device.spawn(module, bindings: bindings, pushConstants: push, grid: Grid(2)) } catch {
                if error.code == .deviceLost { unanswered += 1; break }
                counts.runRefused += 1
                continue
            }
            if (try? rig.device.wait(thread, timeoutSeconds: 10)) != nil {
                counts.ran += 1
            } else {
                counts.timedOut += 1
                _ = try? rig.device.kill(thread)
            }
            try? rig.device.unloadModule(module)
        }
        let seconds = Double(monotonicNanos() - start) / 1e9
        print("fuzz: \(counts.sent) mutated modules sent, \(counts.refused) refused at load, \(counts.loaded) loaded "
              + "(\(counts.ran) ran, \(counts.runRefused) refused at spawn, \(counts.timedOut) timed out), "
              + "daemon restarts 0, \(String(format: "%.1f", seconds)) s")
        #expect(unanswered == 0)
        #expect(rig.daemon.process.isRunning)
        // Still serving: a well-formed module runs correctly on the same daemon.
        let module = try rig.load("increment")
        let fresh = try rig.device.mirror(bytes: 256)
        let report = try rig.device.run(module, bindings: [BufferBinding(set: 0, binding: 0, memory: fresh, bytes: 256)], grid: Grid(1))
        #expect(report.state == .finished && fresh.uints(64)[63] == 64)
        // lavapipe reports the modules its own SPIR-V parser rejects (after SPIRV-Tools accepted
        // them) through the debug messenger; those are the driver's refusals, not misuse of Vulkan.
        let driverRefusals = ["SPIR-V ERROR", "SPIR-V parsing FAILED", "spirv_to_nir failed", "VK_ERROR_OUT_OF_HOST_MEMORY"]
        let messages = rig.finish()
        #expect(messages.filter { m in !driverRefusals.contains { m.contains($0) } }.isEmpty)
        print("fuzz: \(messages.count) driver messages for modules lavapipe refused")
    }
}
