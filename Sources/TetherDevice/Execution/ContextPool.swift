import Synchronization
import TetherCore

/// Reuses the per-thread device state of finished device threads (a command pool, a fence and a
/// control block on Vulkan), so that spawning a small device thread costs a submission, not a
/// dozen object creations — the difference between a ~30 µs and a ~200 µs round trip on lavapipe.
///
/// Only built-in kernels are pooled (custom SPIR-V contexts own their pipeline).
public final class ContextPool: Sendable {
    public let backend: any ComputeBackend
    private let free = Mutex<[BuiltinKernel: [any ThreadContext]]>([:])
    public let capacityPerKernel: Int

    public init(backend: any ComputeBackend, capacityPerKernel: Int = 32) {
        self.backend = backend
        self.capacityPerKernel = capacityPerKernel
    }

    public func acquire(_ program: KernelProgram) throws(TetherError) -> any ThreadContext {
        if case .builtin(let kernel) = program, let reused = free.withLock({ $0[kernel]?.popLast() }) {
            reused.resetControl()
            return reused
        }
        return try backend.makeContext(program: program)
    }

    /// Takes back the context of a thread that has ended (nothing may run on it any more).
    public func recycle(_ context: any ThreadContext, program: KernelProgram) {
        guard case .builtin(let kernel) = program else { return }
        free.withLock { lists in
            if lists[kernel, default: []].count < capacityPerKernel { lists[kernel, default: []].append(context) }
        }
    }
}
