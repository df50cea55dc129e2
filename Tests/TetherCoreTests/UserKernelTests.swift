import Testing
import TetherCore

/// The pure parts of user kernels: how a slice of a 3-D grid becomes dispatch boxes, how spec
/// constant values parse, and the scheduler's unsliced threads.
@Suite("UserKernel")
struct UserKernelCoreTests {
    /// Every linear range of a grid is covered exactly once, in order, by at most five boxes.
    @Test("boxes cover any range of a 3-D grid exactly once", arguments: [Grid(1), Grid(7), Grid(5, 4), Grid(3, 4, 5), Grid(1, 1, 9), Grid(13, 1, 3)])
    func boxesCoverRanges(grid: Grid) {
        let total = grid.total
        for first in 0..<total {
            for count in 1...(total - first) {
                var covered: [UInt64] = []
                let boxes = grid.boxes(first: first, count: count)
                #expect(boxes.count <= 5)
                for box in boxes {
                    for z in 0..<box.count[2] { for y in 0..<box.count[1] { for x in 0..<box.count[0] {
                        let (gx, gy, gz) = (UInt64(box.base[0] + x), UInt64(box.base[1] + y), UInt64(box.base[2] + z))
                        #expect(gx < UInt64(grid.x) && gy < UInt64(grid.y) && gz < UInt64(grid.z))
                        covered.append(gx + UInt64(grid.x) * (gy + UInt64(grid.y) * gz))
                    } } }
                }
                #expect(covered.sorted() == Array(first..<first + count), "\(grid) [\(first), +\(count))")
            }
        }
    }

    @Test("spec constant values parse by the constant's type")
    func specParsing() {
        func c(_ t: ModuleDescription.ScalarType) -> ModuleDescription.SpecConstant { .init(id: 0, type: t, defaultBits: 0, name: "") }
        #expect(c(.bool).parse("true") == 1 && c(.bool).parse("0") == 0 && c(.bool).parse("yes") == nil)
        #expect(c(.int32).parse("-1") == 0xFFFF_FFFF && c(.int32).parse("4294967295") == nil)
        #expect(c(.uint32).parse("0x10") == 16 && c(.uint32).parse("-1") == nil)
        #expect(c(.float32).parse("1.5") == UInt64(Float(1.5).bitPattern))
        #expect(c(.float64).parse("-2") == (-2.0).bitPattern)
        #expect(c(.int64).parse("-1") == .max && c(.uint64).parse("18446744073709551615") == .max)
    }

    @Test("an unsliced thread gets its whole grid in one pick; a sliced one probes with one group")
    func unslicedThreads() {
        var q = RunQueue(quantumNanos: 1_000)
        q.add(ThreadID(rawValue: 1), space: SpaceID(rawValue: 1), priority: .normal, groups: 5_000, persistent: false, unsliced: true)
        #expect(q.pick()?.groupCount == 5_000)
        var r = RunQueue(quantumNanos: 1_000)
        r.add(ThreadID(rawValue: 2), space: SpaceID(rawValue: 1), priority: .normal, groups: 5_000, persistent: false)
        #expect(r.pick()?.groupCount == 1)
    }
}
