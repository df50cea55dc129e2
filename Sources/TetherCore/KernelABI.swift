/// The contract between the host (both backends) and device code.
///
/// Every built-in kernel is a 1-D grid of workgroups. The host runs a device thread as a series of
/// slices; each slice covers a range of *linear* workgroup ids `[groupBase, groupBase + count)`.
/// Device code adds `groupBase` (a push constant) to `gl_WorkGroupID.x` rather than relying on
/// `vkCmdDispatchBase`, because `maxComputeWorkGroupCount[0]` is 65,535 on lavapipe and a thread's
/// grid may be far larger (16 Mi saxpy elements are 65,536 groups of 256).
///
/// Push constants (128 bytes at most, the Vulkan guaranteed minimum), mirrored by
/// `Shaders/include/tether.glsl`:
///
/// | offset | field        | meaning                                                     |
/// |--------|--------------|-------------------------------------------------------------|
/// | 0      | control      | device address of this thread's `ControlBlock`              |
/// | 8      | regions      | device address of the region table (`RegionTableEntry[]`)   |
/// | 16     | regionCount  | entries in the region table                                  |
/// | 20     | groupBase    | first linear workgroup of this dispatch                      |
/// | 24     | groupTotal   | workgroups in the whole grid of the thread                    |
/// | 28     | round        | how many times a persistent thread has run its grid          |
/// | 32     | args[11]     | kernel arguments: owner virtual addresses and scalars         |
public enum KernelABI {
    public static let pushConstantSize = 120
    public static let maxArguments = 11
    public static let argumentsOffset = 32

    /// Values of `ControlBlock.word`, written by the host and polled by device code.
    public static let controlRun: UInt32 = 0
    public static let controlKill: UInt32 = 1
    public static let controlYield: UInt32 = 2

    /// Values of `ControlBlock.fault`, written by device code (first fault wins).
    public static let faultNone: UInt32 = 0
    /// A pointer argument (or a pointer read from memory) is outside every mirrored region.
    public static let faultAddress: UInt32 = 1
}

/// The per-thread control block in host-visible memory (std430, 24 bytes).
///
/// `word` is the host → device channel (kill / yield); `fault`, `faultAddress` and `sink` are
/// device → host. `sink` exists so that `spin` has a side effect the compiler cannot remove.
public struct ControlBlock {
    public var word: UInt32 = 0
    public var fault: UInt32 = 0
    public var faultAddress: UInt64 = 0
    public var sink: UInt32 = 0
    public var pad: UInt32 = 0
    public init() {}
    public static let size = 24
}

/// One mirrored region as device code sees it (std430, 24 bytes): owner virtual addresses in
/// `[ownerBase, ownerBase + size)` live at `deviceBase + (va − ownerBase)` on the device.
/// For the Vulkan backend `deviceBase` is a buffer device address; for the software backend it is
/// the daemon's own mapping of the same memfd pages.
public struct RegionTableEntry: Equatable, Sendable {
    public var ownerBase: UInt64
    public var size: UInt64
    public var deviceBase: UInt64
    public init(ownerBase: UInt64, size: UInt64, deviceBase: UInt64) {
        self.ownerBase = ownerBase
        self.size = size
        self.deviceBase = deviceBase
    }
    public static let stride = 24

    /// The device address of `[va, va + bytes)`, or nil when the range is not inside this region.
    @inline(__always)
    public func translate(_ va: UInt64, bytes: UInt64) -> UInt64? {
        guard va >= ownerBase, bytes <= size, va - ownerBase <= size - bytes else { return nil }
        return deviceBase + (va - ownerBase)
    }
}

/// The built-in kernels. Each has GLSL in `Shaders/`, a Swift twin in the software backend and a
/// CPU reference in `Workloads`.
///
/// Arguments (`args[i]`; pointers are owner virtual addresses, floats are their bit patterns in
/// the low 32 bits):
/// - `saxpy`: n, a, x: *f32, y: *f32 — `y[i] = a * x[i] + y[i]`; 256 invocations per group.
/// - `reduce`: n, x: *f32, partials: *f32 — each group sums 2,048 consecutive elements
///   (`reduceElementsPerGroup`) into `partials[group]`; the host adds the partials.
/// - `matmul`: n, A, B, C (row-major n×n f32) — `C = A·B`; a group computes one 16×16 tile,
///   tile `t` is row `t / tilesPerRow`, column `t % tilesPerRow`.
/// - `mandelbrot`: width, height, maxIterations, out: *u32 — iterations per pixel over
///   x ∈ [−2, 1], y ∈ [−1.5, 1.5]; 256 pixels (linear index) per group.
/// - `listwalk`: listCount, heads: *u64 (owner addresses of first nodes, 0 = empty), out: *u32×2 —
///   invocation i walks list i (`ListNode`), writing (sum of values, node count); at most
///   `maxListLength` nodes. 64 invocations per group.
/// - `spin`: iterations — every invocation loops `iterations` times (at most 65,535, lavapipe's cap),
///   polling the control word every 64 iterations; the thread's grid is usually persistent.
public enum BuiltinKernel: String, CaseIterable, Sendable, Codable {
    case saxpy, reduce, matmul, mandelbrot, listwalk, spin

    /// Invocations per workgroup (the product of the GLSL local size).
    public var invocationsPerGroup: Int {
        switch self {
        case .saxpy, .reduce, .mandelbrot, .matmul: return 256
        case .listwalk, .spin: return 64
        }
    }

    public var argumentCount: Int {
        switch self {
        case .saxpy: return 4
        case .reduce: return 3
        case .matmul: return 4
        case .mandelbrot: return 4
        case .listwalk: return 3
        case .spin: return 1
        }
    }

    /// Which arguments are owner pointers (checked against the region table at spawn).
    public var pointerArguments: [Int] {
        switch self {
        case .saxpy: return [2, 3]
        case .reduce: return [1, 2]
        case .matmul: return [1, 2, 3]
        case .mandelbrot: return [3]
        case .listwalk: return [1, 2]
        case .spin: return []
        }
    }

    public static let reduceElementsPerGroup = 2048
    public static let matmulTile = 16
    public static let maxListLength = 65_535
    public static let maxSpinIterations: UInt64 = 65_535
}

/// A node of the list that `listwalk` follows (std430, 16 bytes): `next` is a native pointer of the
/// owner process (0 ends the list).
public struct ListNode {
    public var next: UInt64
    public var value: UInt32
    public var pad: UInt32
    public init(next: UInt64, value: UInt32) {
        self.next = next
        self.value = value
        self.pad = 0
    }
}
