import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import TetherTestSupport
import Testing

/// A daemon on lavapipe (validation on, inherited from tools/test) and a client of it.
final class UserKernelRig {
    let daemon: TestDaemon
    let device: Device

    init(extra: [String] = []) throws {
        daemon = try TestDaemon(backend: "vulkan", extra: extra)
        device = try Device(daemon.options())
    }

    func load(_ name: String) throws -> KernelModule { try device.loadModule(spirv: try compileTestShader(name)) }

    /// Closes the client, stops the daemon and returns the validation messages it printed.
    func finish() -> [String] {
        device.close()
        daemon.stop()
        let text = String(decoding: daemon.stderrPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return text.split(separator: "\n").filter { $0.contains("Vulkan validation") }.map(String.init)
    }
}

extension MirroredMemory {
    func floats(at offset: Int = 0, _ count: Int) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: (base + offset).bindMemory(to: Float.self, capacity: count), count: count)
    }
    func uints(at offset: Int = 0, _ count: Int) -> UnsafeMutableBufferPointer<UInt32> {
        UnsafeMutableBufferPointer(start: (base + offset).bindMemory(to: UInt32.self, capacity: count), count: count)
    }
}

/// Real compute shaders of the styles programs use, through the daemon and the library, against CPU
/// references — lavapipe with the Khronos validation layer on, zero messages.
@Suite(.serialized) struct UserKernelTests {
    @Test("one storage buffer and a spec constant: the prefix sums match for two lengths")
    func specConstant() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("prefix_spec")
        let n = 64 * 5
        let memory = try rig.device.mirror(bytes: n * 4)
        for length: UInt32 in [8, 100] {
            let report = try rig.device.run(module, bindings: [BufferBinding(set: 0, binding: 0, memory: memory, bytes: n * 4)],
                                            specialization: [.uint(0, length)], grid: Grid(5))
            #expect(report.state == .finished)
            let v = memory.uints(n)
            #expect((0..<n).allSatisfy { i in v[i] == (0..<length).reduce(0) { $0 + UInt32(i) + $1 } })
        }
        #expect(rig.finish().isEmpty)
    }

    @Test("three buffers element-wise, with offsets into one mirrored region")
    func elementwise() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("elementwise3")
        let n = 128 * 40, bytes = n * 4
        let memory = try rig.device.mirror(bytes: 3 * bytes)
        let f = memory.floats(3 * n)
        for i in 0..<n { f[i] = Float(i); f[n + i] = 2; f[2 * n + i] = 3 }
        let report = try rig.device.run(module, bindings: (0..<3).map {
            BufferBinding(set: 0, binding: UInt32($0), memory: memory, offset: $0 * bytes, bytes: bytes)
        }, grid: Grid(40))
        #expect(report.state == .finished, "\(report)")
        #expect((0..<n).allSatisfy { f[2 * n + $0] == Float($0) * 2 + 3 })
        #expect(rig.finish().isEmpty)
    }

    @Test("a 2-D dispatch writes an image-like buffer, sized by push constants")
    func image2D() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("image2d")
        let (w, h) = (100, 37)
        let memory = try rig.device.mirror(bytes: w * h * 4)
        let push = pushConstantBytes(of: (UInt32(w), UInt32(h)))
        let report = try rig.device.run(module, bindings: [BufferBinding(set: 0, binding: 0, memory: memory, bytes: w * h * 4)],
                                        pushConstants: push, grid: Grid(UInt32((w + 7) / 8), UInt32((h + 7) / 8)))
        #expect(report.state == .finished)
        let p = memory.uints(w * h)
        #expect((0..<h).allSatisfy { y in (0..<w).allSatisfy { x in p[y * w + x] == (UInt32(x) * 7) ^ (UInt32(y) * 13) } })
        #expect(rig.finish().isEmpty)
    }

    @Test("a uniform buffer plus push constants that the host changes between runs")
    func uniformAndPush() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("uniform_push")
        #expect(module.description.binding(set: 0, binding: 0)?.kind == .uniform)
        let n = 200
        let memory = try rig.device.mirror(bytes: 256 + 2 * n * 4)
        let params = memory.floats(3)
        params[0] = 3
        params[1] = 0.5
        memory.uints(3)[2] = UInt32(n)
        let x = memory.floats(at: 256, n)
        for i in 0..<n { x[i] = Float(i) }
        for bias: Float in [0, 10, -4] {
            let report = try rig.device.run(module, bindings: [
                BufferBinding(set: 0, binding: 0, memory: memory, offset: 0, bytes: 16),
                BufferBinding(set: 0, binding: 1, memory: memory, offset: 256, bytes: n * 4),
                BufferBinding(set: 0, binding: 2, memory: memory, offset: 256 + n * 4, bytes: n * 4),
            ], pushConstants: pushConstantBytes(of: bias), grid: Grid(UInt32((n + 63) / 64)))
            #expect(report.state == .finished)
            let y = memory.floats(at: 256 + n * 4, n)
            #expect((0..<n).allSatisfy { y[$0] == Float($0) * 3 + 0.5 + bias }, "bias \(bias)")
        }
        #expect(rig.finish().isEmpty)
    }

    @Test("shared memory with barriers, sized (with the local size) by a spec constant")
    func sharedMemory() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("shared_reduce")
        #expect(module.description.localSizeSpecIDs[0] == 0)
        for group: UInt32 in [32, 256] {
            let groups = 12, n = Int(group) * groups
            let memory = try rig.device.mirror(bytes: n * 4 + groups * 4)
            let x = memory.floats(n)
            for i in 0..<n { x[i] = Float(i % 17) }
            let report = try rig.device.run(module, bindings: [
                BufferBinding(set: 0, binding: 0, memory: memory, bytes: n * 4),
                BufferBinding(set: 0, binding: 1, memory: memory, offset: n * 4, bytes: groups * 4),
            ], specialization: [.uint(0, group)], grid: Grid(UInt32(groups)))
            #expect(report.state == .finished)
            let sums = memory.floats(at: n * 4, groups)
            #expect((0..<groups).allSatisfy { g in
                sums[g] == (0..<Int(group)).reduce(Float(0)) { $0 + Float((g * Int(group) + $1) % 17) }
            }, "group \(group)")
        }
        #expect(rig.finish().isEmpty)
    }

    @Test("subgroup arithmetic: every invocation holds its subgroup's sum")
    func subgroups() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("subgroup_sum")
        let n = 64 * 4
        let memory = try rig.device.mirror(bytes: 2 * n * 4 + 4)
        let x = memory.uints(n)
        for i in 0..<n { x[i] = UInt32(i * 3 % 11) }
        let report = try rig.device.run(module, bindings: [
            BufferBinding(set: 0, binding: 0, memory: memory, bytes: n * 4),
            BufferBinding(set: 0, binding: 1, memory: memory, offset: n * 4, bytes: n * 4),
            BufferBinding(set: 0, binding: 2, memory: memory, offset: 2 * n * 4, bytes: 4),
        ], grid: Grid(4))
        #expect(report.state == .finished)
        let size = Int(memory.uints(at: 2 * n * 4, 1)[0])
        try #require(size > 0 && 64 % size == 0, "subgroup size \(size)")
        let sums = memory.uints(at: n * 4, n)
        #expect((0..<n).allSatisfy { i in
            let first = i / size * size
            return sums[i] == (first..<first + size).reduce(0) { $0 + x[$1] }
        })
        #expect(rig.finish().isEmpty)
    }

    @Test("32-bit atomics: a histogram and a total over many workgroups")
    func atomics() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("histogram_atomic")
        let n = 128 * 50
        let memory = try rig.device.mirror(bytes: n * 4 + 17 * 4)
        let v = memory.uints(n)
        for i in 0..<n { v[i] = UInt32((i * 7919) % 1000) }
        let report = try rig.device.run(module, bindings: [
            BufferBinding(set: 0, binding: 0, memory: memory, bytes: n * 4),
            BufferBinding(set: 0, binding: 1, memory: memory, offset: n * 4, bytes: 17 * 4),
        ], grid: Grid(50))
        #expect(report.state == .finished)
        let out = memory.uints(at: n * 4, 17)
        #expect(out[0] == (0..<n).reduce(UInt32(0)) { $0 &+ v[$1] })
        #expect((0..<16).allSatisfy { b in out[1 + b] == UInt32((0..<n).filter { Int(v[$0]) % 16 == b }.count) })
        #expect(rig.finish().isEmpty)
    }

    @Test("64-bit floats in push constants where the device has shaderFloat64")
    func doublePush() throws {
        let rig = try UserKernelRig()
        let module: KernelModule
        do { module = try rig.load("push_double") } catch let error as TetherError {
            print("UserKernelTests: skipped doublePush: the device refuses Float64 (\(error.message))")
            _ = rig.finish()
            return
        }
        let n = 96
        let memory = try rig.device.mirror(bytes: n * 8)
        let report = try rig.device.run(module, bindings: [BufferBinding(set: 0, binding: 0, memory: memory, bytes: n * 8)],
                                        pushConstants: pushConstantBytes(of: (Double(1) / 3, Double(1e-9))), grid: Grid(3))
        #expect(report.state == .finished)
        let y = (memory.base).bindMemory(to: Double.self, capacity: n)
        #expect((0..<n).allSatisfy { y[$0] == Double(1) / 3 * Double($0) + 1e-9 })
        #expect(rig.finish().isEmpty)
    }

    @Test("gl_NumWorkGroups sees the whole 3-D grid (run unsliced), and sliced 3-D grids cover every group once")
    func numWorkgroupsAndGrids() throws {
        let rig = try UserKernelRig()
        let seen = try rig.load("num_workgroups")
        #expect(seen.description.usesNumWorkgroups)
        let grid = Grid(9, 5, 3)
        let total = Int(grid.total)
        let memory = try rig.device.mirror(bytes: total * 16)
        let report = try rig.device.run(seen, bindings: [BufferBinding(set: 0, binding: 0, memory: memory, bytes: total * 16)],
                                        grid: grid)
        #expect(report.state == .finished)
        let s = memory.uints(total * 4)
        let expected: [UInt32] = (0..<total).flatMap { [9, 5, 3, UInt32($0)] }
        #expect(Array(s) == expected)

        // Without gl_NumWorkGroups the grid is sliced; a grid big enough for many slices.
        let ids = try rig.load("grid3d")
        #expect(!ids.description.usesNumWorkgroups)
        let big = Grid(61, 47, 9)
        let count = Int(big.total)
        let out = try rig.device.mirror(bytes: count * 16)
        let r2 = try rig.device.run(ids, bindings: [BufferBinding(set: 0, binding: 0, memory: out, bytes: count * 16)],
                                    pushConstants: pushConstantBytes(of: (UInt32(61), UInt32(47))), grid: big)
        #expect(r2.state == .finished)
        let o = out.uints(count * 4)
        var want: [UInt32] = []
        for z in 0..<9 { for y in 0..<47 { for x in 0..<61 { want += [UInt32(x), UInt32(y), UInt32(z), 1] } } }
        #expect(Array(o) == want)
        #expect(rig.finish().isEmpty)
    }

    @Test("two descriptor sets")
    func twoSets() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("two_sets")
        #expect(module.description.bindings.map(\.description) == ["0.0", "0.1", "1.0", "1.1"])
        let n = 300, bytes = n * 4
        let memory = try rig.device.mirror(bytes: 4 * 1280)
        let a = memory.uints(n), b = memory.uints(at: 1280, n)
        for i in 0..<n {
            a[i] = UInt32(i * 5)
            b[i] = UInt32(i)
        }
        let bindings = (0..<4).map { (i: Int) -> BufferBinding in
            BufferBinding(set: UInt32(i / 2), binding: UInt32(i % 2), memory: memory, offset: i * 1280, bytes: bytes)
        }
        let report = try rig.device.run(module, bindings: bindings, grid: Grid(5))
        #expect(report.state == .finished)
        let sum = memory.uints(at: 2 * 1280, n), diff = memory.uints(at: 3 * 1280, n)
        #expect(Array(sum) == (0..<n).map { UInt32($0 * 6) })
        #expect(Array(diff) == (0..<n).map { UInt32($0 * 4) })
        #expect(rig.finish().isEmpty)
    }

    @Test("a loop of many dispatches over the same buffers, spawned and joined")
    func manyDispatches() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("increment")
        let n = 640
        let memory = try rig.device.mirror(bytes: n * 4)
        let binding = [BufferBinding(set: 0, binding: 0, memory: memory, bytes: n * 4)]
        for _ in 0..<200 {
            let t = try rig.device.spawn(module, bindings: binding, grid: Grid(10))
            #expect(try rig.device.wait(t, timeoutSeconds: 30).state == .finished)
        }
        let expected = (0..<n).map { (i: Int) -> UInt32 in UInt32(200 * (i + 1)) }
        #expect(Array(memory.uints(n)) == expected)
        #expect(rig.finish().isEmpty)
    }

    @Test("a user kernel is killed like any device thread")
    func killAndTeardown() throws {
        let rig = try UserKernelRig()
        let module = try rig.load("increment")
        // A grid of many slices: 60,000 × 32 groups (each row of 60,000 adds to the same
        // elements) take ~1.8 s on lavapipe here. One row, 57 ms, once ended before the kill
        // reached the daemon beside the other suites.
        let n = 64 * 60_000
        let memory = try rig.device.mirror(bytes: n * 4)
        let t = try rig.device.spawn(module, bindings: [BufferBinding(set: 0, binding: 0, memory: memory, bytes: n * 4)],
                                     grid: Grid(60_000, 32))
        let wasAlive = try rig.device.kill(t)
        let report = try rig.device.wait(t, timeoutSeconds: 10)
        #expect(wasAlive && report.state == .killed, "alive at the kill: \(wasAlive); ended \(report.state), \(report.error.map { "\($0)" } ?? "no error"), \(report.deviceNanos) ns on the device")
        #expect(rig.finish().isEmpty)
    }
}
