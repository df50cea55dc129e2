import Foundation
import TetherCore
import TetherTestSupport
@testable import TetherDevice
import Testing

/// User kernels in this process (the direct path): reflection, the launch checks and the
/// Vulkan descriptor path, with validation on. Through the daemon they are tested in
/// TetherIntegrationTests.
@Suite(.serialized) struct UserKernelDeviceTests {
    @Test("reflection reports bindings, spec constants and the local size of a real module")
    func reflection() throws {
        let device = LocalDevice(backend: try #require(Backends.vulkan, "lavapipe must be installed"))
        defer { device.close() }
        let module = try device.loadModule(words: try compileTestShader("elementwise3"))
        let d = module.description
        #expect(d.entryPoint == "main")
        #expect(d.localSize == [128, 1, 1])
        #expect(d.bindings.map(\.description) == ["0.0", "0.1", "0.2"])
        #expect(d.bindings.allSatisfy { $0.kind == .storage && $0.runtimeStride == 4 })
        #expect(d.pushConstantBytes == 0)
        let spec = try device.loadModule(words: try compileTestShader("prefix_spec")).description
        #expect(spec.specConstants.map(\.id) == [0])
        #expect(spec.specConstants.first?.type == .uint32)
        #expect(spec.specConstants.first?.defaultBits == 8)
        #expect(VulkanValidation.messageCount == 0)
    }

    @Test("three buffers element-wise match the CPU, sliced over many slices")
    func elementwise() throws {
        let device = LocalDevice(backend: try #require(Backends.vulkan, "lavapipe must be installed"), quantumNanos: 100_000)
        defer { device.close() }
        let module = try device.loadModule(words: try compileTestShader("elementwise3"))
        let n = 128 * 300
        let region = try device.mirror(bytes: 3 * n * 4)
        let f = region.localBase!.bindMemory(to: Float.self, capacity: 3 * n)
        for i in 0..<n { f[i] = Float(i); f[n + i] = 0.5; f[2 * n + i] = 1 }
        let base = region.entry.ownerBase
        let bytes = UInt64(n * 4)
        let (program, launch) = try device.launch(module, ModuleLaunch(module: module.id, bindings: [
            BufferBinding(set: 0, binding: 0, address: base, bytes: bytes),
            BufferBinding(set: 0, binding: 1, address: base + bytes, bytes: bytes),
            BufferBinding(set: 0, binding: 2, address: base + 2 * bytes, bytes: bytes),
        ], grid: Grid(300)))
        let outcome = try device.run(program, launch: launch)
        #expect(outcome.state == .finished)
        #expect((0..<n).allSatisfy { f[2 * n + $0] == Float($0) * 0.5 + 1 })
        #expect(VulkanValidation.messageCount == 0)
    }
}
