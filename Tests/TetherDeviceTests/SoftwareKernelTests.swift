import CTetherLinux
import Foundation
import Testing
import TetherCore
import TetherDevice

/// The software twins, one workgroup at a time in order, on ordinary allocated memory: the region
/// table maps the memory onto itself (owner address = device address), as the software backend
/// does for a client that is the daemon itself.
@Suite("SoftwareKernels")
struct SoftwareKernelTests {
    // MARK: - Every kernel against its workload's reference

    @Test(arguments: [1, 1000, 65_536 + 3])
    func saxpy(size: Int) throws {
        let bench = try Bench(SaxpyWorkload(size: size))
        bench.runAllGroups()
        bench.expectVerified()
        bench.expectNoFault()
    }

    @Test(arguments: [1, 2048, 5000, 100_000])
    func reduce(size: Int) throws {
        let bench = try Bench(ReduceWorkload(size: size))
        bench.runAllGroups()
        bench.expectVerified()
        // The twin's Float sums are exact for these inputs (multiples of 1/256, small sums).
        let args = bench.launch.args
        let x = UnsafeMutablePointer<Float>(bitPattern: UInt(args[1]))!
        let partials = UnsafeMutablePointer<Float>(bitPattern: UInt(args[2]))!
        for g in 0..<Int(bench.launch.groups) {
            var sum = 0.0
            for i in (g * 2048)..<min(size, (g + 1) * 2048) { sum += Double(x[i]) }
            #expect(Double(partials[g]) == sum)
        }
    }

    @Test(arguments: [16, 48, 128])
    func matmul(size: Int) throws {
        let bench = try Bench(MatmulWorkload(size: size))
        bench.runAllGroups()
        bench.expectVerified()
    }

    /// The kernel handles orders that are not a multiple of the tile (edge tiles are partial), even
    /// though the workload only makes multiples of 16.
    @Test func matmulPartialTiles() {
        let n = 20
        let memory = Memory(bytes: 3 * 4 * n * n)
        let a = memory.floats(at: 0, count: n * n)
        let b = memory.floats(at: 4 * n * n, count: n * n)
        let c = memory.floats(at: 8 * n * n, count: n * n)
        for i in 0..<(n * n) {
            a[i] = Float(i % 7) - 3
            b[i] = Float(i % 5) - 2
            c[i] = -99
        }
        let tilesPerRow = (n + 15) / 16
        memory.run(.matmul, args: [UInt64(n), memory.address(0), memory.address(4 * n * n), memory.address(8 * n * n)],
                   groups: UInt32(tilesPerRow * tilesPerRow))
        for i in 0..<n {
            for j in 0..<n {
                var sum: Float = 0
                for k in 0..<n { sum += a[i * n + k] * b[k * n + j] }
                #expect(c[i * n + j] == sum, "C[\(i)][\(j)]")
            }
        }
        #expect(memory.control.pointee.fault == KernelABI.faultNone)
    }

    @Test(arguments: [16, 64, 200])
    func mandelbrotMatchesTheReferenceExactly(size: Int) throws {
        let bench = try Bench(MandelbrotWorkload(size: size))
        bench.runAllGroups()
        bench.expectVerified()
        let args = bench.launch.args
        let reference = MandelbrotWorkload.referenceMandelbrot(width: size, height: size, maxIterations: Int(args[2]))
        let out = UnsafeMutablePointer<UInt32>(bitPattern: UInt(args[3]))!
        let mismatches = (0..<(size * size)).filter { out[$0] != reference[$0] }.count
        #expect(mismatches == 0)
    }

    @Test(arguments: [1, 4096, 10_000, 70_000])
    func listwalk(size: Int) throws {
        let bench = try Bench(ListwalkWorkload(size: size))
        bench.runAllGroups()
        bench.expectVerified()
        bench.expectNoFault()
    }

    @Test func spin() throws {
        let bench = try Bench(SpinWorkload(size: 1000))
        bench.runAllGroups()
        bench.expectVerified()
        #expect(bench.memory.control.pointee.sink == 0)
    }

    // MARK: - Faults

    @Test func pointerOutsideTheRegionFaults() throws {
        let bench = try Bench(SaxpyWorkload(size: 1000))
        let before = bench.snapshot()
        var args = bench.launch.args
        let outside = bench.memory.address(bench.memory.size + 4096)
        args[2] = outside  // x
        bench.memory.run(.saxpy, args: args, groups: bench.launch.groups)
        #expect(bench.memory.control.pointee.fault == KernelABI.faultAddress)
        #expect(bench.memory.control.pointee.faultAddress == outside)
        #expect(bench.snapshot() == before, "a faulting kernel must not write")
    }

    @Test func firstFaultWins() throws {
        let bench = try Bench(SaxpyWorkload(size: 1000))
        var args = bench.launch.args
        args[2] = 0xDEAD_0000
        bench.memory.run(.saxpy, args: args, groups: 1)
        args[2] = bench.launch.args[2]
        args[3] = 0xBEEF_0000
        bench.memory.run(.saxpy, args: args, groups: 1)
        #expect(bench.memory.control.pointee.faultAddress == 0xDEAD_0000)
    }

    @Test func arrayRunningPastTheRegionFaults() throws {
        // n = region size / 4: x (at the region's start) fits exactly, y (after it) runs past the end.
        let bench = try Bench(SaxpyWorkload(size: 1000))
        let before = bench.snapshot()
        var args = bench.launch.args
        #expect(args[2] == bench.memory.address(0))
        args[0] = UInt64(bench.memory.size / 4)
        bench.memory.run(.saxpy, args: args, groups: 1)
        #expect(bench.memory.control.pointee.fault == KernelABI.faultAddress)
        #expect(bench.memory.control.pointee.faultAddress == args[3])
        #expect(bench.snapshot() == before)
    }

    @Test func sizeThatWrapsTheByteCountFaults() throws {
        // n · 4 wraps to 4 bytes; without saturation it would translate and write far past y.
        let bench = try Bench(SaxpyWorkload(size: 1000))
        let before = bench.snapshot()
        var args = bench.launch.args
        args[0] = (1 << 62) + 1
        bench.memory.run(.saxpy, args: args, groups: 8)
        #expect(bench.memory.control.pointee.fault == KernelABI.faultAddress)
        #expect(bench.snapshot() == before)
    }

    @Test func misalignedPointerFaults() throws {
        let bench = try Bench(SaxpyWorkload(size: 1000))
        var args = bench.launch.args
        args[3] += 2
        bench.memory.run(.saxpy, args: args, groups: 1)
        #expect(bench.memory.control.pointee.fault == KernelABI.faultAddress)
        #expect(bench.memory.control.pointee.faultAddress == args[3])
    }

    @Test func badNodePointerFaultsOnlyItsList() throws {
        let bench = try Bench(ListwalkWorkload(size: 3 * 4096))
        let args = bench.launch.args
        let heads = UnsafeMutablePointer<UInt64>(bitPattern: UInt(args[1]))!
        // Break list 1 after its third node.
        var node = heads[1]
        for _ in 0..<2 { node = UnsafePointer<UInt64>(bitPattern: UInt(node))!.pointee }
        let bad: UInt64 = 0x10
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(node))!.pointee = bad
        bench.runAllGroups()
        #expect(bench.memory.control.pointee.fault == KernelABI.faultAddress)
        #expect(bench.memory.control.pointee.faultAddress == bad)
        let out = UnsafeMutablePointer<UInt32>(bitPattern: UInt(args[2]))!
        let expected = ListwalkWorkload.referenceListwalk(size: 3 * 4096)
        #expect(out[0] == expected[0].sum && out[1] == expected[0].count)
        #expect(out[2] == 0 && out[3] == 0, "the faulting list writes nothing")
        #expect(out[4] == expected[2].sum && out[5] == expected[2].count)
    }

    @Test func cyclicListStopsAtTheMaximumLength() {
        // One node pointing at itself: the walk ends after maxListLength nodes.
        let memory = Memory(bytes: 4096)
        let node = memory.address(0)
        let head = memory.address(256)
        let out = memory.address(512)
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(node))!.pointee = node
        UnsafeMutablePointer<UInt32>(bitPattern: UInt(node + 8))!.pointee = 1
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(head))!.pointee = node
        memory.run(.listwalk, args: [1, head, out], groups: 1)
        let result = UnsafeMutablePointer<UInt32>(bitPattern: UInt(out))!
        #expect(result[0] == UInt32(BuiltinKernel.maxListLength))
        #expect(result[1] == UInt32(BuiltinKernel.maxListLength))
    }

    @Test func misalignedNodeFaults() {
        // The second node sits 4 bytes off the 8-byte grid, inside the region the first one used.
        let memory = Memory(bytes: 4096)
        let node = memory.address(0)
        let bad = memory.address(20)
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(node))!.pointee = bad
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(memory.address(256)))!.pointee = node
        memory.run(.listwalk, args: [1, memory.address(256), memory.address(512)], groups: 1)
        #expect(memory.control.pointee.fault == KernelABI.faultAddress)
        #expect(memory.control.pointee.faultAddress == bad)
    }

    /// Owner addresses that are not this process's addresses, in two regions: the twin must go
    /// through the table (as the daemon does for a client), including when a list crosses regions.
    @Test func translationThroughTwoRegions() {
        let memory = Memory(bytes: 2 << 20)
        let half: UInt64 = 1 << 20
        let ownerLow: UInt64 = 0x7000_0000_0000
        let ownerHigh: UInt64 = 0x7100_0000_0000
        let device = memory.address(0)
        let regions = [
            RegionTableEntry(ownerBase: ownerHigh, size: half, deviceBase: device + half),
            RegionTableEntry(ownerBase: ownerLow, size: half, deviceBase: device),
        ]
        // Node m lives in the low region when m is even, the high one when odd.
        func owner(_ m: Int) -> UInt64 { (m % 2 == 0 ? ownerLow : ownerHigh) + 4096 + UInt64(16 * m) }
        func host(_ owner: UInt64) -> UnsafeMutableRawPointer {
            let entry = regions.first { $0.translate(owner, bytes: 1) != nil }!
            return UnsafeMutableRawPointer(bitPattern: UInt(entry.deviceBase + (owner - entry.ownerBase)))!
        }
        var expected: UInt32 = 0
        for m in 0..<100 {
            let node = host(owner(m))
            node.storeBytes(of: m + 1 < 100 ? owner(m + 1) : 0, as: UInt64.self)
            node.storeBytes(of: UInt32(3 * m), toByteOffset: 8, as: UInt32.self)
            expected += UInt32(3 * m)
        }
        host(ownerLow).storeBytes(of: owner(0), as: UInt64.self)  // heads[0]
        let context = SoftwareKernelContext(args: [1, ownerLow, ownerLow + 8], regions: regions,
                                            control: memory.control, groupTotal: 1, round: 0)
        SoftwareKernels.runGroup(.listwalk, group: 0, context: context)
        let out = host(ownerLow + 8).assumingMemoryBound(to: UInt32.self)
        #expect(memory.control.pointee.fault == KernelABI.faultNone)
        #expect(out[0] == expected)
        #expect(out[1] == 100)

        // saxpy through the same table: x in the low region, y in the high one.
        let x = host(ownerLow + 65_536).assumingMemoryBound(to: Float.self)
        let y = host(ownerHigh + 65_536).assumingMemoryBound(to: Float.self)
        for i in 0..<300 { x[i] = Float(i); y[i] = 1 }
        let saxpy = SoftwareKernelContext(args: [300, UInt64(Float(2).bitPattern), ownerLow + 65_536, ownerHigh + 65_536],
                                          regions: regions, control: memory.control, groupTotal: 2, round: 0)
        SoftwareKernels.runGroup(.saxpy, group: 0, context: saxpy)
        SoftwareKernels.runGroup(.saxpy, group: 1, context: saxpy)
        #expect((0..<300).allSatisfy { y[$0] == 2 * Float($0) + 1 })
        #expect(memory.control.pointee.fault == KernelABI.faultNone)
    }

    // MARK: - Kill and grid bounds

    @Test func killedSpinReturnsImmediately() throws {
        let bench = try Bench(SpinWorkload(size: 65_535))
        bench.memory.control.pointee.word = KernelABI.controlKill
        let clock = ContinuousClock()
        let elapsed = clock.measure { bench.runAllGroups() }
        // 64 groups × 64 invocations × 65,535 iterations take seconds; a stopped grid, microseconds.
        #expect(elapsed < .milliseconds(100))
    }

    @Test(arguments: [KernelABI.controlKill, KernelABI.controlYield])
    func stoppedSaxpyWritesNothing(word: UInt32) throws {
        let bench = try Bench(SaxpyWorkload(size: 1000))
        let before = bench.snapshot()
        bench.memory.control.pointee.word = word
        bench.runAllGroups()
        #expect(bench.snapshot() == before)
        bench.expectNoFault()
    }

    @Test func spinStopsWhenKilledMidway() throws {
        // The twin polls every 64 iterations, so a kill set while it runs ends it within a poll.
        // A plain thread, not a Task: the test's cooperative pool may be busy with other tests.
        let bench = try Bench(SpinWorkload(size: 65_535))
        let context = bench.memory.context(args: bench.launch.args, groupTotal: 64)
        let clock = ContinuousClock()
        let finished = DispatchSemaphore(value: 0)
        let end = Box<ContinuousClock.Instant>()
        let thread = Thread {
            for g in UInt32(0)..<64 { SoftwareKernels.runGroup(.spin, group: g, context: context) }
            end.value = clock.now
            finished.signal()
        }
        thread.start()
        Thread.sleep(forTimeInterval: 0.02)
        let killed = clock.now
        // Atomic, as the host writes it: the spinning thread reads it concurrently.
        tether_atomic_store_u32(UnsafeMutableRawPointer(bench.memory.control).assumingMemoryBound(to: UInt32.self),
                                KernelABI.controlKill)
        finished.wait()
        // 64 × 64 × 65,535 iterations take far longer than 20 ms, so the grid was still running.
        #expect(end.value! > killed, "the grid finished before the kill; the test proves nothing")
        let latency = end.value! - killed
        #expect(latency < .milliseconds(500), "stopped \(latency) after the kill")
    }

    @Test func groupsPastTheGridDoNothing() throws {
        let bench = try Bench(SaxpyWorkload(size: 1000))
        let before = bench.snapshot()
        let context = bench.memory.context(args: bench.launch.args, groupTotal: 2)
        // Groups 2 and 3 exist in the data but not in this grid.
        SoftwareKernels.runGroup(.saxpy, group: 2, context: context)
        SoftwareKernels.runGroup(.saxpy, group: 3, context: context)
        #expect(bench.snapshot() == before)
    }
}

// MARK: - Helpers

/// Page-aligned memory registered as one region that maps onto itself, plus a control block.
/// Never freed: tests are short and the helpers stay free of ownership rules.
fileprivate final class Memory: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let size: Int
    let control: UnsafeMutablePointer<ControlBlock>

    init(bytes: Int) {
        size = bytes
        base = .allocate(byteCount: bytes, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        control = .allocate(capacity: 1)
        control.initialize(to: ControlBlock())
    }

    var regions: [RegionTableEntry] {
        let address = UInt64(UInt(bitPattern: base))
        return [RegionTableEntry(ownerBase: address, size: UInt64(size), deviceBase: address)]
    }

    func address(_ offset: Int) -> UInt64 { UInt64(UInt(bitPattern: base)) + UInt64(offset) }

    func floats(at offset: Int, count: Int) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: (base + offset).bindMemory(to: Float.self, capacity: count), count: count)
    }

    func context(args: [UInt64], groupTotal: UInt32) -> SoftwareKernelContext {
        SoftwareKernelContext(args: args, regions: regions, control: control, groupTotal: groupTotal, round: 0)
    }

    /// Runs every group of the grid in order, as one slice.
    func run(_ kernel: BuiltinKernel, args: [UInt64], groups: UInt32) {
        let context = context(args: args, groupTotal: groups)
        for g in 0..<groups {
            SoftwareKernels.runGroup(kernel, group: g, context: context)
        }
    }
}

/// A workload prepared in a `Memory`.
fileprivate struct Bench {
    var workload: any Workload
    let memory: Memory
    let launch: Launch

    init(_ workload: any Workload) {
        self.workload = workload
        memory = Memory(bytes: workload.mirroredBytes)
        launch = self.workload.prepare(memory: memory.base)
    }

    func runAllGroups() { memory.run(workload.kernel, args: launch.args, groups: launch.groups) }

    func snapshot() -> [UInt8] { Array(UnsafeRawBufferPointer(start: memory.base, count: memory.size)) }

    func expectVerified(sourceLocation: SourceLocation = #_sourceLocation) {
        let result = workload.verify(memory: memory.base)
        #expect(result.ok, "\(result.detail)", sourceLocation: sourceLocation)
    }

    func expectNoFault(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(memory.control.pointee.fault == KernelABI.faultNone, sourceLocation: sourceLocation)
    }
}

/// A value handed from the spinning thread back to the test (ordered by the semaphore).
fileprivate final class Box<T>: @unchecked Sendable {
    var value: T?
}
