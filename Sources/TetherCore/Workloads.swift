// The sample workloads behind `tether run` and the benchmarks: one per built-in kernel.
//
// Each workload lays its arrays out in one mirrored region (every array 256-byte aligned), fills
// its inputs deterministically from a fixed SplitMix64 seed, and checks the device's output against
// a plain CPU reference (`reference…` functions, written for obviousness rather than speed).
// `verify` regenerates the inputs from the seed rather than trusting the region, whose inputs the
// device could have overwritten. Pure Swift: no Foundation, no Glibc.

// MARK: - Errors and the registry

/// Why `Workloads.make` refused: one sentence naming the valid choices.
public struct WorkloadError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }

    public static func unknownWorkload(_ name: String) -> WorkloadError {
        WorkloadError("unknown workload '\(name)'; valid workloads are \(Workloads.names.joined(separator: ", ")).")
    }

    public static func sizeOutOfRange(_ kernel: BuiltinKernel, size: Int, unit: String,
                                      range: ClosedRange<Int>, multipleOf step: Int = 1) -> WorkloadError {
        let allowed = step == 1
            ? "between \(range.lowerBound) and \(range.upperBound)"
            : "a multiple of \(step) between \(range.lowerBound) and \(range.upperBound)"
        return WorkloadError("\(kernel.rawValue) size \(size) (\(unit)) is out of range: it must be \(allowed).")
    }
}

public enum Workloads {
    /// Every workload name, in `BuiltinKernel` order (each workload is named after its kernel).
    public static let names: [String] = BuiltinKernel.allCases.map(\.rawValue)

    /// The workload called `name` at `size`, or at its default size when `size` is nil.
    public static func make(_ name: String, size: Int?) throws(WorkloadError) -> any Workload {
        guard let kernel = BuiltinKernel(rawValue: name) else { throw .unknownWorkload(name) }
        switch kernel {
        case .saxpy: return try SaxpyWorkload(size: size ?? SaxpyWorkload.defaultSize)
        case .reduce: return try ReduceWorkload(size: size ?? ReduceWorkload.defaultSize)
        case .matmul: return try MatmulWorkload(size: size ?? MatmulWorkload.defaultSize)
        case .mandelbrot: return try MandelbrotWorkload(size: size ?? MandelbrotWorkload.defaultSize)
        case .listwalk: return try ListwalkWorkload(size: size ?? ListwalkWorkload.defaultSize)
        case .spin: return try SpinWorkload(size: size ?? SpinWorkload.defaultSize)
        }
    }
}

// MARK: - Shared helpers

/// Places arrays one after another, each at a 256-byte aligned offset from the region's start
/// (regions are page aligned, so the arrays' addresses are 256-byte aligned too).
fileprivate struct RegionLayout {
    static let alignment = 256
    private(set) var bytes = 0

    mutating func place(bytes count: Int) -> Int {
        let offset = (bytes + Self.alignment - 1) & ~(Self.alignment - 1)
        bytes = offset + count
        return offset
    }

    /// The region size: the end of the last array, rounded up to the alignment.
    var totalBytes: Int { max(Self.alignment, (bytes + Self.alignment - 1) & ~(Self.alignment - 1)) }
}

/// The owner virtual address of `memory + offset`, as kernel arguments carry it.
@inline(__always)
fileprivate func ownerAddress(_ memory: UnsafeMutableRawPointer, _ offset: Int) -> UInt64 {
    UInt64(UInt(bitPattern: memory + offset))
}

@inline(__always)
fileprivate func typed<T>(_ memory: UnsafeMutableRawPointer, _ offset: Int, _ count: Int, as type: T.Type) -> UnsafeMutableBufferPointer<T> {
    UnsafeMutableBufferPointer(start: (memory + offset).bindMemory(to: T.self, capacity: count), count: count)
}

@inline(__always)
fileprivate func ceilDiv(_ a: Int, _ b: Int) -> Int { (a + b - 1) / b }

/// |value − expected| within `relative` of |expected|, with |expected| floored at 1 so that
/// results near zero are compared absolutely. NaN never matches.
@inline(__always)
fileprivate func approximatelyEqual(_ value: Double, _ expected: Double, relative: Double) -> Bool {
    abs(value - expected) <= relative * max(abs(expected), 1)
}

// MARK: - saxpy

/// `y = a·x + y` over `size` elements: memory bound (12 bytes and 2 flops per element).
public struct SaxpyWorkload: Workload, Sendable {
    public static let defaultSize = 16_777_216
    public static let sizeRange = 1...(1 << 28)
    /// The scalar `a`; 2.5 keeps `a·x` exact for the 24-bit inputs.
    public static let a: Float = 2.5
    static let seed: UInt64 = 0x7E7E_5A3B_0000_0001

    public var kernel: BuiltinKernel { .saxpy }
    public let size: Int
    public let mirroredBytes: Int
    let xOffset: Int
    let yOffset: Int

    public init(size: Int = defaultSize) throws(WorkloadError) {
        guard Self.sizeRange.contains(size) else {
            throw .sizeOutOfRange(.saxpy, size: size, unit: "elements", range: Self.sizeRange)
        }
        self.size = size
        var layout = RegionLayout()
        xOffset = layout.place(bytes: 4 * size)
        yOffset = layout.place(bytes: 4 * size)
        mirroredBytes = layout.totalBytes
    }

    /// Inputs in [−1, 1), x and y interleaved from one generator.
    static func fillInputs(x: UnsafeMutableBufferPointer<Float>, y: UnsafeMutableBufferPointer<Float>) {
        var rng = SplitMix64(seed: seed)
        for i in 0..<x.count {
            x[i] = rng.nextUnitFloat() * 2 - 1
            y[i] = rng.nextUnitFloat() * 2 - 1
        }
    }

    /// The inputs `prepare` writes, for references and tests.
    public func inputs() -> (x: [Float], y: [Float]) {
        var x = [Float](repeating: 0, count: size)
        var y = [Float](repeating: 0, count: size)
        x.withUnsafeMutableBufferPointer { xs in
            y.withUnsafeMutableBufferPointer { ys in Self.fillInputs(x: xs, y: ys) }
        }
        return (x, y)
    }

    public static func referenceSaxpy(a: Float, x: [Float], y: [Float]) -> [Float] {
        var out = y
        for i in 0..<x.count {
            out[i] = a * x[i] + y[i]
        }
        return out
    }

    public mutating func prepare(memory: UnsafeMutableRawPointer) -> Launch {
        Self.fillInputs(x: typed(memory, xOffset, size, as: Float.self), y: typed(memory, yOffset, size, as: Float.self))
        return Launch(args: [UInt64(size), UInt64(Self.a.bitPattern), ownerAddress(memory, xOffset), ownerAddress(memory, yOffset)],
                      groups: UInt32(ceilDiv(size, BuiltinKernel.saxpy.invocationsPerGroup)))
    }

    public func verify(memory: UnsafeMutableRawPointer) -> Verification {
        let (x, y) = inputs()
        let expected = Self.referenceSaxpy(a: Self.a, x: x, y: y)
        let result = typed(memory, yOffset, size, as: Float.self)
        for i in 0..<size where !(result[i] == expected[i] || approximatelyEqual(Double(result[i]), Double(expected[i]), relative: 1e-6)) {
            return Verification(ok: false, detail: "saxpy: y[\(i)] is \(result[i]), expected \(expected[i]).")
        }
        return Verification(ok: true, detail: "saxpy: all \(size) elements of y match the CPU reference.")
    }

    public var work: WorkAmount {
        WorkAmount(bytes: 12 * Double(size), flops: 2 * Double(size), computeBound: false)
    }
}

// MARK: - reduce

/// The sum of `size` floats: each workgroup writes the partial sum of 2,048 elements and the host
/// adds the partials. Memory bound (4 bytes per element).
public struct ReduceWorkload: Workload, Sendable {
    public static let defaultSize = 16_777_216
    public static let sizeRange = 1...(1 << 28)
    static let seed: UInt64 = 0x7E7E_5A3B_0000_0002

    public var kernel: BuiltinKernel { .reduce }
    public let size: Int
    public let mirroredBytes: Int
    /// Partial sums, one per workgroup.
    public let partialCount: Int
    let xOffset: Int
    let partialsOffset: Int

    public init(size: Int = defaultSize) throws(WorkloadError) {
        guard Self.sizeRange.contains(size) else {
            throw .sizeOutOfRange(.reduce, size: size, unit: "elements", range: Self.sizeRange)
        }
        self.size = size
        partialCount = ceilDiv(size, BuiltinKernel.reduceElementsPerGroup)
        var layout = RegionLayout()
        xOffset = layout.place(bytes: 4 * size)
        partialsOffset = layout.place(bytes: 4 * partialCount)
        mirroredBytes = layout.totalBytes
    }

    /// Inputs k/256 for k in 0..<256: a group's Float sum (at most 2,048) stays exact.
    static func fillInputs(_ x: UnsafeMutableBufferPointer<Float>) {
        var rng = SplitMix64(seed: seed)
        for i in 0..<x.count {
            x[i] = Float(rng.next() >> 56) * 0x1p-8
        }
    }

    public func inputs() -> [Float] {
        var x = [Float](repeating: 0, count: size)
        x.withUnsafeMutableBufferPointer { Self.fillInputs($0) }
        return x
    }

    /// The sum in Double, element by element.
    public static func referenceSum(_ x: ArraySlice<Float>) -> Double {
        var sum = 0.0
        for value in x {
            sum += Double(value)
        }
        return sum
    }

    public mutating func prepare(memory: UnsafeMutableRawPointer) -> Launch {
        Self.fillInputs(typed(memory, xOffset, size, as: Float.self))
        typed(memory, partialsOffset, partialCount, as: Float.self).update(repeating: 0)
        return Launch(args: [UInt64(size), ownerAddress(memory, xOffset), ownerAddress(memory, partialsOffset)],
                      groups: UInt32(partialCount))
    }

    public func verify(memory: UnsafeMutableRawPointer) -> Verification {
        let x = inputs()
        let partials = typed(memory, partialsOffset, partialCount, as: Float.self)
        // Each partial as well as the total: a dropped group moves the total by only
        // 1/partialCount, which the total's tolerance could hide.
        let perGroup = BuiltinKernel.reduceElementsPerGroup
        for g in 0..<partialCount {
            let expected = Self.referenceSum(x[(g * perGroup)..<min(size, (g + 1) * perGroup)])
            if !approximatelyEqual(Double(partials[g]), expected, relative: 1e-3) {
                return Verification(ok: false, detail: "reduce: partial \(g) is \(partials[g]), expected \(expected).")
            }
        }
        var total = 0.0
        for g in 0..<partialCount {
            total += Double(partials[g])
        }
        let expected = Self.referenceSum(x[...])
        guard approximatelyEqual(total, expected, relative: 1e-3) else {
            return Verification(ok: false, detail: "reduce: the partials add up to \(total), expected \(expected).")
        }
        return Verification(ok: true, detail: "reduce: \(partialCount) partials add up to \(total), as the CPU reference does.")
    }

    public var work: WorkAmount {
        WorkAmount(bytes: 4 * Double(size), flops: Double(size), computeBound: false)
    }
}

// MARK: - matmul

/// `C = A·B` for `size`×`size` row-major matrices: compute bound (2n³ flops).
public struct MatmulWorkload: Workload, Sendable {
    public static let defaultSize = 512
    public static let sizeRange = 16...2048
    static let seed: UInt64 = 0x7E7E_5A3B_0000_0003

    public var kernel: BuiltinKernel { .matmul }
    public let size: Int
    public let mirroredBytes: Int
    let aOffset: Int
    let bOffset: Int
    let cOffset: Int

    public init(size: Int = defaultSize) throws(WorkloadError) {
        let tile = BuiltinKernel.matmulTile
        guard Self.sizeRange.contains(size), size % tile == 0 else {
            throw .sizeOutOfRange(.matmul, size: size, unit: "matrix order", range: Self.sizeRange, multipleOf: tile)
        }
        self.size = size
        var layout = RegionLayout()
        aOffset = layout.place(bytes: 4 * size * size)
        bOffset = layout.place(bytes: 4 * size * size)
        cOffset = layout.place(bytes: 4 * size * size)
        mirroredBytes = layout.totalBytes
    }

    /// Small integers in −4…4: every product and partial sum (|sum| ≤ 16n ≤ 2^15) is exact in
    /// Float, so any summation order gives the reference's answer.
    static func fillInputs(a: UnsafeMutableBufferPointer<Float>, b: UnsafeMutableBufferPointer<Float>) {
        var rng = SplitMix64(seed: seed)
        for i in 0..<a.count {
            a[i] = Float(Int(rng.next(below: 9)) - 4)
        }
        for i in 0..<b.count {
            b[i] = Float(Int(rng.next(below: 9)) - 4)
        }
    }

    public func inputs() -> (a: [Float], b: [Float]) {
        var a = [Float](repeating: 0, count: size * size)
        var b = [Float](repeating: 0, count: size * size)
        a.withUnsafeMutableBufferPointer { ab in
            b.withUnsafeMutableBufferPointer { bb in Self.fillInputs(a: ab, b: bb) }
        }
        return (a, b)
    }

    /// Row-major n×n product, accumulated in Double (i-k-j order keeps B's reads sequential).
    public static func referenceMatmul(n: Int, a: [Float], b: [Float]) -> [Float] {
        var c = [Float](repeating: 0, count: n * n)
        var row = [Double](repeating: 0, count: n)
        for i in 0..<n {
            for j in 0..<n { row[j] = 0 }
            for k in 0..<n {
                let aik = Double(a[i * n + k])
                for j in 0..<n {
                    row[j] += aik * Double(b[k * n + j])
                }
            }
            for j in 0..<n { c[i * n + j] = Float(row[j]) }
        }
        return c
    }

    public mutating func prepare(memory: UnsafeMutableRawPointer) -> Launch {
        let count = size * size
        Self.fillInputs(a: typed(memory, aOffset, count, as: Float.self), b: typed(memory, bOffset, count, as: Float.self))
        typed(memory, cOffset, count, as: Float.self).update(repeating: 0)
        let tilesPerRow = size / BuiltinKernel.matmulTile
        return Launch(args: [UInt64(size), ownerAddress(memory, aOffset), ownerAddress(memory, bOffset), ownerAddress(memory, cOffset)],
                      groups: UInt32(tilesPerRow * tilesPerRow))
    }

    public func verify(memory: UnsafeMutableRawPointer) -> Verification {
        let (a, b) = inputs()
        let expected = Self.referenceMatmul(n: size, a: a, b: b)
        let c = typed(memory, cOffset, size * size, as: Float.self)
        for i in 0..<(size * size) where !approximatelyEqual(Double(c[i]), Double(expected[i]), relative: 1e-3) {
            return Verification(ok: false, detail: "matmul: C[\(i / size)][\(i % size)] is \(c[i]), expected \(expected[i]).")
        }
        return Verification(ok: true, detail: "matmul: all \(size)×\(size) elements of C match the CPU reference.")
    }

    public var work: WorkAmount {
        let n = Double(size)
        return WorkAmount(bytes: 12 * n * n, flops: 2 * n * n * n, computeBound: true)
    }
}

// MARK: - mandelbrot

/// Escape iterations of a `size`×`size` image of [−2, 1]×[−1.5, 1.5]: compute bound, with
/// per-pixel work that varies wildly (divergence).
public struct MandelbrotWorkload: Workload, Sendable {
    public static let defaultSize = 1024
    public static let sizeRange = 16...8192
    public static let maxIterations = 256

    public var kernel: BuiltinKernel { .mandelbrot }
    /// The image width; the image is square.
    public let size: Int
    public var width: Int { size }
    public var height: Int { size }
    public let mirroredBytes: Int
    let outOffset: Int

    public init(size: Int = defaultSize) throws(WorkloadError) {
        guard Self.sizeRange.contains(size) else {
            throw .sizeOutOfRange(.mandelbrot, size: size, unit: "image width and height", range: Self.sizeRange)
        }
        self.size = size
        var layout = RegionLayout()
        outOffset = layout.place(bytes: 4 * size * size)
        mirroredBytes = layout.totalBytes
    }

    /// The iterations before z escapes |z| > 2, at most `maxIterations`. The expressions and their
    /// order are those of mandelbrot.comp, whose `precise` forbids fused multiply-adds.
    public static func referenceIterations(cx: Float, cy: Float, maxIterations: Int) -> UInt32 {
        var zx: Float = 0
        var zy: Float = 0
        var iterations = 0
        while iterations < maxIterations {
            let zx2 = zx * zx
            let zy2 = zy * zy
            if zx2 + zy2 > 4 { break }
            zy = 2 * zx * zy + cy
            zx = zx2 - zy2 + cx
            iterations += 1
        }
        return UInt32(iterations)
    }

    /// The point of pixel (x, y), as mandelbrot.comp computes it.
    public static func referencePoint(x: Int, y: Int, width: Int, height: Int) -> (cx: Float, cy: Float) {
        (-2 + 3 * Float(x) / Float(width), -1.5 + 3 * Float(y) / Float(height))
    }

    /// Iterations per pixel, row-major.
    public static func referenceMandelbrot(width: Int, height: Int, maxIterations: Int) -> [UInt32] {
        var out = [UInt32](repeating: 0, count: width * height)
        for y in 0..<height {
            for x in 0..<width {
                let (cx, cy) = referencePoint(x: x, y: y, width: width, height: height)
                out[y * width + x] = referenceIterations(cx: cx, cy: cy, maxIterations: maxIterations)
            }
        }
        return out
    }

    public mutating func prepare(memory: UnsafeMutableRawPointer) -> Launch {
        let pixels = width * height
        typed(memory, outOffset, pixels, as: UInt32.self).update(repeating: 0)
        return Launch(args: [UInt64(width), UInt64(height), UInt64(Self.maxIterations), ownerAddress(memory, outOffset)],
                      groups: UInt32(ceilDiv(pixels, BuiltinKernel.mandelbrot.invocationsPerGroup)))
    }

    /// Pixels that may differ: a device that rounds a boundary point differently can escape at
    /// a very different iteration, so a few mismatches (0.1%, rounded down) are tolerated.
    public var allowedMismatches: Int { width * height / 1000 }

    public func verify(memory: UnsafeMutableRawPointer) -> Verification {
        let pixels = width * height
        let expected = Self.referenceMandelbrot(width: width, height: height, maxIterations: Self.maxIterations)
        let out = typed(memory, outOffset, pixels, as: UInt32.self)
        var mismatches = 0
        var first = -1
        for p in 0..<pixels where out[p] != expected[p] {
            mismatches += 1
            if first < 0 { first = p }
        }
        guard mismatches <= allowedMismatches else {
            return Verification(ok: false, detail: "mandelbrot: \(mismatches) of \(pixels) pixels differ from the CPU reference "
                + "(at most \(allowedMismatches) allowed), the first at (\(first % width), \(first / width)): "
                + "\(out[first]) iterations, expected \(expected[first]).")
        }
        return Verification(ok: true, detail: "mandelbrot: \(pixels - mismatches) of \(pixels) pixels match the CPU reference "
            + "(\(mismatches) boundary mismatches, at most \(allowedMismatches) allowed).")
    }

    /// About 8 flops per iteration (4 multiplies, 4 adds), summed over the reference image, which
    /// each read computes (callers read it once, after timing).
    public var work: WorkAmount {
        let iterations = Self.totalIterations(width: width, height: height)
        return WorkAmount(bytes: 4 * Double(width * height), flops: 8 * Double(iterations), computeBound: true)
    }

    static func totalIterations(width: Int, height: Int) -> Int {
        referenceMandelbrot(width: width, height: height, maxIterations: maxIterations).reduce(0) { $0 + Int($1) }
    }
}

// MARK: - listwalk

/// Pointer chasing: `size` nodes split into lists of at most 4,096, the nodes shuffled across the
/// region so that every step is a dependent, cache-unfriendly load. Latency bound.
public struct ListwalkWorkload: Workload, Sendable {
    public static let defaultSize = 1_048_576
    public static let sizeRange = 1...(1 << 24)
    public static let nodesPerList = 4096
    static let placementSeed: UInt64 = 0x7E7E_5A3B_0000_0004
    static let valueSeed: UInt64 = 0x7E7E_5A3B_0000_0005

    public var kernel: BuiltinKernel { .listwalk }
    /// Nodes in all lists together.
    public let size: Int
    public let listCount: Int
    public let mirroredBytes: Int
    let nodesOffset: Int
    let headsOffset: Int
    let outOffset: Int

    public init(size: Int = defaultSize) throws(WorkloadError) {
        guard Self.sizeRange.contains(size) else {
            throw .sizeOutOfRange(.listwalk, size: size, unit: "nodes", range: Self.sizeRange)
        }
        self.size = size
        listCount = ceilDiv(size, Self.nodesPerList)
        var layout = RegionLayout()
        nodesOffset = layout.place(bytes: MemoryLayout<ListNode>.stride * size)
        headsOffset = layout.place(bytes: 8 * listCount)
        outOffset = layout.place(bytes: 8 * listCount)
        mirroredBytes = layout.totalBytes
    }

    /// Node k's value, in logical order (list k / 4096, position k % 4096). 16 bits, so that a
    /// list's sum (at most 4,096 × 65,535) does not wrap.
    static func values(count: Int) -> [UInt32] {
        var rng = SplitMix64(seed: valueSeed)
        return (0..<count).map { _ in UInt32(truncatingIfNeeded: rng.next() >> 48) }
    }

    /// Slot (index in the node array) of logical node k: a Fisher–Yates shuffle.
    static func placement(count: Int) -> [UInt32] {
        var slots = (0..<count).map { UInt32($0) }
        var rng = SplitMix64(seed: placementSeed)
        var i = count - 1
        while i > 0 {
            let j = Int(rng.next(below: UInt64(i + 1)))
            slots.swapAt(i, j)
            i -= 1
        }
        return slots
    }

    /// (sum of values, node count) of every list, from the values alone: the reference does not
    /// follow pointers, so it cannot share a layout bug with `prepare`.
    public static func referenceListwalk(size: Int) -> [(sum: UInt32, count: UInt32)] {
        let values = values(count: size)
        var out: [(sum: UInt32, count: UInt32)] = []
        var start = 0
        while start < size {
            let end = min(size, start + nodesPerList)
            var sum: UInt32 = 0
            for k in start..<end {
                sum &+= values[k]
            }
            out.append((sum, UInt32(end - start)))
            start = end
        }
        return out
    }

    public mutating func prepare(memory: UnsafeMutableRawPointer) -> Launch {
        let values = Self.values(count: size)
        let slots = Self.placement(count: size)
        let nodes = typed(memory, nodesOffset, size, as: ListNode.self)
        let heads = typed(memory, headsOffset, listCount, as: UInt64.self)
        let nodeBase = ownerAddress(memory, nodesOffset)
        let stride = UInt64(MemoryLayout<ListNode>.stride)
        for k in 0..<size {
            let lastInList = (k + 1) % Self.nodesPerList == 0 || k + 1 == size
            let next = lastInList ? 0 : nodeBase + UInt64(slots[k + 1]) * stride
            nodes[Int(slots[k])] = ListNode(next: next, value: values[k])
            if k % Self.nodesPerList == 0 {
                heads[k / Self.nodesPerList] = nodeBase + UInt64(slots[k]) * stride
            }
        }
        typed(memory, outOffset, 2 * listCount, as: UInt32.self).update(repeating: 0)
        return Launch(args: [UInt64(listCount), ownerAddress(memory, headsOffset), ownerAddress(memory, outOffset)],
                      groups: UInt32(ceilDiv(listCount, BuiltinKernel.listwalk.invocationsPerGroup)))
    }

    public func verify(memory: UnsafeMutableRawPointer) -> Verification {
        let expected = Self.referenceListwalk(size: size)
        let out = typed(memory, outOffset, 2 * listCount, as: UInt32.self)
        for l in 0..<listCount where out[2 * l] != expected[l].sum || out[2 * l + 1] != expected[l].count {
            return Verification(ok: false, detail: "listwalk: list \(l) gave sum \(out[2 * l]) over \(out[2 * l + 1]) nodes, "
                + "expected \(expected[l].sum) over \(expected[l].count).")
        }
        return Verification(ok: true, detail: "listwalk: all \(listCount) lists (\(size) nodes) match the CPU reference.")
    }

    /// 16 bytes (one node) and one add per node.
    public var work: WorkAmount {
        WorkAmount(bytes: 16 * Double(size), flops: Double(size), computeBound: false)
    }
}

// MARK: - spin

/// A busy kernel with no output: every invocation of 64 groups of 64 loops `size` times. The
/// caller relaunches it for a duration; it exists to measure kill/yield latency and sharing.
public struct SpinWorkload: Workload, Sendable {
    public static let defaultSize = 60_000
    public static let sizeRange = 1...Int(BuiltinKernel.maxSpinIterations)
    public static let groups: UInt32 = 64
    /// Four dependent multiply-adds per iteration in spin.comp.
    public static let flopsPerIteration = 8

    public var kernel: BuiltinKernel { .spin }
    /// Iterations per invocation.
    public let size: Int
    /// spin touches no memory, but a region of zero bytes cannot be mapped; one alignment unit
    /// keeps every launch alike.
    public var mirroredBytes: Int { RegionLayout.alignment }

    public init(size: Int = defaultSize) throws(WorkloadError) {
        guard Self.sizeRange.contains(size) else {
            throw .sizeOutOfRange(.spin, size: size, unit: "iterations per invocation", range: Self.sizeRange)
        }
        self.size = size
    }

    public mutating func prepare(memory: UnsafeMutableRawPointer) -> Launch {
        Launch(args: [UInt64(size)], groups: Self.groups)
    }

    public func verify(memory: UnsafeMutableRawPointer) -> Verification {
        Verification(ok: true, detail: "spin: nothing to check (the kernel has no output).")
    }

    public var work: WorkAmount {
        let invocations = Double(Self.groups) * Double(BuiltinKernel.spin.invocationsPerGroup)
        return WorkAmount(bytes: 0, flops: Double(size) * invocations * Double(Self.flopsPerIteration), computeBound: true)
    }
}
