import CTetherLinux
import TetherCore

/// Swift twins of the GLSL kernels in `Shaders/`, for the software backend.
///
/// `runGroup` does for one linear workgroup what the GLSL does for that group: the same early exits
/// (group past the grid, stop requested, a pointer that does not translate, elements past the end),
/// the same translations in the same order (so the same fault is recorded first), the same
/// arithmetic (mandelbrot and saxpy bit for bit; reduce in the shader's summation order). The
/// caller's thread pool runs groups concurrently; a call allocates nothing on the heap, and inner
/// loops run over unsafe pointers without bounds checks.
///
/// Keep each twin in step with its `.comp` file: a change to one is a change to both.
public enum SoftwareKernels {
    /// Runs linear workgroup `group` of `kernel`.
    public static func runGroup(_ kernel: BuiltinKernel, group: UInt32, context: SoftwareKernelContext) {
        // The GLSL checks the control word once per invocation before touching memory, so a group
        // queued after a kill costs nothing; once per group is the same thing here.
        guard group < context.groupTotal, !context.shouldStop else { return }
        switch kernel {
        case .saxpy: saxpy(group, context)
        case .reduce: reduce(group, context)
        case .matmul: matmul(group, context)
        case .mandelbrot: mandelbrot(group, context)
        case .listwalk: listwalk(group, context)
        case .spin: spin(group, context)
        }
    }

    // MARK: - Helpers mirroring tether.glsl

    /// TETHER_MAX_LOOP: lavapipe stops loops of more iterations, so the shaders clamp to it.
    static let loopCap: UInt64 = 65_535

    /// `args[i]`, or 0 past the end (push constants the host did not set read as 0 on the device).
    @inline(__always)
    static func arg(_ context: SoftwareKernelContext, _ i: Int) -> UInt64 {
        i < context.args.count ? context.args[i] : 0
    }

    /// tetherArrayBytes: count × elementSize, saturated so that a wrapped product cannot pass
    /// translation.
    @inline(__always)
    static func arrayBytes(_ count: UInt64, _ elementSize: UInt64) -> UInt64 {
        count > UInt64.max / elementSize ? UInt64.max : count &* elementSize
    }

    /// tetherTranslateArray: `count` elements of `elementSize` bytes at owner address `va`, or nil
    /// after recording a fault (misaligned, or outside every region).
    @inline(__always)
    static func translateArray(_ context: SoftwareKernelContext, _ va: UInt64, count: UInt64,
                               elementSize: UInt64) -> UnsafeMutableRawPointer? {
        guard va & (elementSize - 1) == 0 else {
            context.recordFault(va)
            return nil
        }
        return context.pointer(va, bytes: arrayBytes(count, elementSize))
    }

    @inline(__always)
    static func array<T>(_ context: SoftwareKernelContext, _ va: UInt64, count: UInt64,
                         of type: T.Type) -> UnsafeMutablePointer<T>? {
        translateArray(context, va, count: count, elementSize: UInt64(MemoryLayout<T>.size))?
            .assumingMemoryBound(to: T.self)
    }

    // MARK: - saxpy (saxpy.comp)

    static func saxpy(_ group: UInt32, _ context: SoftwareKernelContext) {
        let n = arg(context, 0)
        let a = Float(bitPattern: UInt32(truncatingIfNeeded: arg(context, 1)))
        guard let x = array(context, arg(context, 2), count: n, of: Float.self),
              let y = array(context, arg(context, 3), count: n, of: Float.self) else { return }
        let first = UInt64(group) * 256
        guard first < n else { return }
        // n elements translated, so every index below fits in Int.
        let end = Int(min(first + 256, n))
        for i in Int(first)..<end {
            y[i] = a * x[i] + y[i]  // no FMA, like `precise` in the shader
        }
    }

    // MARK: - reduce (reduce.comp)

    static func reduce(_ group: UInt32, _ context: SoftwareKernelContext) {
        let perGroup = UInt64(BuiltinKernel.reduceElementsPerGroup)
        let n = arg(context, 0)
        let partialCount = n / perGroup + (n % perGroup != 0 ? 1 : 0)
        guard let x = array(context, arg(context, 1), count: n, of: Float.self),
              let partials = array(context, arg(context, 2), count: partialCount, of: Float.self) else { return }
        let first = UInt64(group) * perGroup
        guard first < n else { return }
        let valid = Int(min(n - first, perGroup))
        let base = x + Int(first)
        // The shader's order, so the partial is bit-identical: lane l adds elements l, l + 256, …,
        // l + 1792 (those past n count as 0), then a tree over the lanes. Lanes are independent,
        // so the loops over them vectorise.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 256) { buffer in
            let sums = buffer.baseAddress!
            sums.initialize(repeating: 0, count: 256)
            if valid == Int(perGroup) {
                // A whole group: each lane's 8 additions in one pass.
                for lane in 0..<256 {
                    var sum: Float = 0
                    sum += base[lane]
                    sum += base[lane + 256]
                    sum += base[lane + 512]
                    sum += base[lane + 768]
                    sum += base[lane + 1024]
                    sum += base[lane + 1280]
                    sum += base[lane + 1536]
                    sum += base[lane + 1792]
                    sums[lane] = sum
                }
            } else {
                for k in 0..<8 {
                    let rowStart = k * 256
                    let lanes = min(256, max(0, valid - rowStart))
                    for lane in 0..<lanes {
                        sums[lane] += base[rowStart + lane]
                    }
                }
            }
            var stride = 128
            while stride > 0 {
                for lane in 0..<stride {
                    sums[lane] += sums[lane + stride]
                }
                stride >>= 1
            }
            partials[Int(group)] = sums[0]
        }
    }

    // MARK: - matmul (matmul.comp)

    static func matmul(_ group: UInt32, _ context: SoftwareKernelContext) {
        let tile = BuiltinKernel.matmulTile
        let n64 = arg(context, 0)
        let elements = n64 > 0xFFFF_FFFF ? UInt64.max : n64 * n64
        guard let a = array(context, arg(context, 1), count: elements, of: Float.self),
              let b = array(context, arg(context, 2), count: elements, of: Float.self),
              let c = array(context, arg(context, 3), count: elements, of: Float.self) else { return }
        // n × n × 4 bytes lie in a region, so n is small enough for Int arithmetic from here on.
        let n = Int(n64)
        let tilesPerRow = (n + tile - 1) / tile
        guard Int(group) < tilesPerRow * tilesPerRow else { return }
        let row0 = (Int(group) / tilesPerRow) * tile
        let col0 = (Int(group) % tilesPerRow) * tile
        let rows = min(tile, n - row0)
        let cols = min(tile, n - col0)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: tile * tile) { buffer in
            let acc = buffer.baseAddress!
            // A literal 16 lets the inlined inner loop become fixed-width vector code.
            if cols == 16 {
                matmulTile(a: a, b: b, c: c, n: n, row0: row0, col0: col0, rows: rows, cols: 16, acc: acc)
            } else {
                matmulTile(a: a, b: b, c: c, n: n, row0: row0, col0: col0, rows: rows, cols: cols, acc: acc)
            }
        }
    }

    /// One tile: every C element sums A[row][k]·B[k][col] for k ascending, as the shader does
    /// (the shader walks k in 16-wide slabs of shared memory; the order is the same).
    @inline(__always)
    static func matmulTile(a: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>,
                           n: Int, row0: Int, col0: Int, rows: Int, cols: Int, acc: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let aRow = a + (row0 + r) * n
            let accRow = acc + r * 16
            accRow.initialize(repeating: 0, count: cols)
            var bRow = b + col0
            for k in 0..<n {
                let aValue = aRow[k]
                for j in 0..<cols {
                    accRow[j] += aValue * bRow[j]
                }
                bRow += n
            }
            let cRow = c + (row0 + r) * n + col0
            for j in 0..<cols {
                cRow[j] = accRow[j]
            }
        }
    }

    // MARK: - mandelbrot (mandelbrot.comp)

    static func mandelbrot(_ group: UInt32, _ context: SoftwareKernelContext) {
        let width = arg(context, 0)
        let height = arg(context, 1)
        let maxIterations = UInt32(min(arg(context, 2), loopCap))
        let pixels = (height != 0 && width > UInt64.max / height) ? UInt64.max : width * height
        guard let out = array(context, arg(context, 3), count: pixels, of: UInt32.self) else { return }
        let first = UInt64(group) * 256
        guard first < pixels else { return }
        let end = min(first + 256, pixels)
        let w = Float(width)
        let h = Float(height)
        // Scalar on purpose: an 8-lane SIMD version was 2× faster optimised but 10× slower in
        // debug builds, where tests and development runs of the software backend live.
        for p in first..<end {
            // Same expressions, same order as the shader (`precise` there, no FMA here).
            let cx: Float = -2 + 3 * Float(p % width) / w
            let cy: Float = -1.5 + 3 * Float(p / width) / h
            var zx: Float = 0
            var zy: Float = 0
            var iterations: UInt32 = 0
            while iterations < maxIterations {
                let zx2 = zx * zx
                let zy2 = zy * zy
                if zx2 + zy2 > 4 { break }
                zy = 2 * zx * zy + cy
                zx = zx2 - zy2 + cx
                iterations += 1
            }
            out[Int(p)] = iterations
        }
    }

    // MARK: - listwalk (listwalk.comp)

    static func listwalk(_ group: UInt32, _ context: SoftwareKernelContext) {
        let listCount = arg(context, 0)
        guard let heads = array(context, arg(context, 1), count: listCount, of: UInt64.self),
              let out = array(context, arg(context, 2), count: listCount > UInt64.max / 2 ? UInt64.max : listCount * 2,
                              of: UInt32.self) else { return }
        let first = UInt64(group) * 64
        guard first < listCount else { return }
        let end = Int(min(first + 64, listCount))
        let lanes = end - Int(first)
        // The group's lists are walked in lockstep, one node per list per round, rather than one
        // list after another: each step is a dependent cache miss, and interleaving 64 independent
        // chains keeps many misses in flight, as the device's 64 invocations do.
        withUnsafeTemporaryAllocation(of: ListwalkLane.self, capacity: 64) { buffer in
            let lane = buffer.baseAddress!
            for i in 0..<lanes {
                (lane + i).initialize(to: ListwalkLane(node: heads[Int(first) + i]))
            }
            var running = lanes
            while running > 0 {
                for i in 0..<lanes where lane[i].running {
                    if !listwalkStep(&lane[i], context) {
                        lane[i].running = false
                        running -= 1
                        if !lane[i].faulted {
                            let list = Int(first) + i
                            out[2 * list] = lane[i].sum
                            out[2 * list + 1] = lane[i].count
                        }
                    }
                }
            }
        }
    }

    /// One invocation of listwalk.comp: where it is in its list.
    struct ListwalkLane {
        var node: UInt64
        var sum: UInt32 = 0
        var count: UInt32 = 0
        /// The previous node's region; size 0 matches nothing.
        var region = RegionTableEntry(ownerBase: 0, size: 0, deviceBase: 0)
        var running = true
        var faulted = false
        init(node: UInt64) { self.node = node }
    }

    /// Follows one node; false when the walk is over (end of list, length cap, or a fault).
    /// As the shader: every node pointer (written by the owner) is checked, first against the
    /// previous node's region, then, on a miss, against the table in order. A fault ends this
    /// list's invocation without writing its result.
    @inline(__always)
    static func listwalkStep(_ lane: inout ListwalkLane, _ context: SoftwareKernelContext) -> Bool {
        let node = lane.node
        guard node != 0 && lane.count < UInt32(BuiltinKernel.maxListLength) else { return false }
        guard node & 7 == 0 else {
            context.recordFault(node)
            lane.faulted = true
            return false
        }
        if lane.region.translate(node, bytes: 16) == nil {
            guard let found = context.regions.first(where: { $0.translate(node, bytes: 16) != nil }) else {
                context.recordFault(node)
                lane.faulted = true
                return false
            }
            lane.region = found
        }
        guard let current = UnsafeRawPointer(bitPattern: UInt(lane.region.deviceBase + (node - lane.region.ownerBase))) else {
            context.recordFault(node)  // a region mapped at device address 0: not a real mapping
            lane.faulted = true
            return false
        }
        lane.sum &+= current.load(fromByteOffset: 8, as: UInt32.self)
        lane.count += 1
        lane.node = current.load(as: UInt64.self)
        return true
    }

    // MARK: - spin (spin.comp)

    static let spinLanes = 64

    static func spin(_ group: UInt32, _ context: SoftwareKernelContext) {
        let iterations = Int(min(arg(context, 0), loopCap))
        withUnsafeTemporaryAllocation(of: Float.self, capacity: spinLanes) { buffer in
            let v = buffer.baseAddress!
            for lane in 0..<spinLanes {
                v[lane] = Float(lane) * (1.0 / 64.0)
            }
            // Each of the 64 invocations does `iterations` steps and polls every 64; the lanes run
            // in lockstep here, so the poll count per invocation is the shader's.
            var i = 0
            while i < iterations {
                if context.shouldStop { return }
                let chunk = min(64, iterations - i)
                for _ in 0..<chunk {
                    for lane in 0..<spinLanes {
                        var x = v[lane]
                        x = x * 0.9999 + 0.0001
                        x = x * 1.00005 - 0.00005
                        x = x * 0.99995 + 0.00005
                        x = x * 1.0001 - 0.0001
                        v[lane] = x
                    }
                }
                i += chunk
            }
            // The shader's sentinel: never true, but it keeps the arithmetic observable.
            for lane in 0..<spinLanes where v[lane] == -1 {
                atomicAddSink(context.control, 1)
            }
        }
    }

    static func atomicAddSink(_ control: UnsafeMutablePointer<ControlBlock>, _ value: UInt32) {
        let sink = UnsafeMutableRawPointer(control).advanced(by: 16).assumingMemoryBound(to: UInt32.self)
        var current = tether_atomic_load_u32(sink)
        while !tether_atomic_cas_u32(sink, current, current &+ value) {
            current = tether_atomic_load_u32(sink)
        }
    }
}
