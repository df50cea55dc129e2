/// A sample compute workload: it lays out its inputs in one mirrored region, says how to launch its
/// kernel, and checks the device's output against a plain CPU reference.
///
/// The same workload runs in-process (`tether run` with a local device), through a daemon (the
/// client library mirrors the region) and in benchmarks, so it knows nothing about backends.
public protocol Workload {
    /// The kernel this workload launches.
    var kernel: BuiltinKernel { get }
    /// The problem size the workload was created with (elements, matrix order, pixels, nodes…).
    var size: Int { get }
    /// Bytes of mirrored memory `prepare` needs (the caller rounds up to pages).
    var mirroredBytes: Int { get }
    /// Writes inputs into `memory` (a mirrored region of at least `mirroredBytes`, whose owner
    /// virtual address is its address in this process) and returns the launch.
    mutating func prepare(memory: UnsafeMutableRawPointer) -> Launch
    /// Checks the output left in `memory` against the CPU reference.
    func verify(memory: UnsafeMutableRawPointer) -> Verification
    /// What one run does, for throughput figures.
    var work: WorkAmount { get }
}

/// Kernel arguments and grid for one device thread.
public struct Launch: Sendable, Equatable {
    public var args: [UInt64]
    public var groups: UInt32
    public init(args: [UInt64], groups: UInt32) {
        self.args = args
        self.groups = groups
    }
}

public struct Verification: Sendable, Equatable {
    public var ok: Bool
    /// One sentence: what was compared, or the first mismatch.
    public var detail: String
    public init(ok: Bool, detail: String) {
        self.ok = ok
        self.detail = detail
    }
}

/// What a run does: bytes it moves and floating-point operations it performs.
public struct WorkAmount: Sendable, Equatable {
    public var bytes: Double
    public var flops: Double
    /// True when GFLOP/s is the meaningful figure (matmul, mandelbrot), else GB/s.
    public var computeBound: Bool
    public init(bytes: Double, flops: Double, computeBound: Bool) {
        self.bytes = bytes
        self.flops = flops
        self.computeBound = computeBound
    }
}
