import Testing
import TetherCore

/// Workloads against their own CPU references: the "device" in these tests is the reference run
/// on the memory `prepare` laid out, reached only through the launch arguments, as a kernel would.
@Suite("Workloads")
struct WorkloadTests {
    // MARK: - Registry and errors

    @Test func namesAreTheKernels() {
        #expect(Workloads.names == ["saxpy", "reduce", "matmul", "mandelbrot", "listwalk", "spin"])
    }

    @Test func unknownNameListsTheValidNames() {
        do {
            _ = try Workloads.make("saxpi", size: nil)
            Issue.record("make accepted an unknown name")
        } catch {
            #expect(error.description.contains("'saxpi'"))
            for name in Workloads.names {
                #expect(error.description.contains(name))
            }
        }
    }

    @Test(arguments: [
        ("saxpy", 0), ("saxpy", (1 << 28) + 1), ("reduce", 0), ("reduce", -5),
        ("matmul", 8), ("matmul", 100), ("matmul", 2064), ("mandelbrot", 15), ("mandelbrot", 8193),
        ("listwalk", 0), ("listwalk", (1 << 24) + 1), ("spin", 0), ("spin", 65_536),
    ])
    func badSizeGivesTheAllowedRange(name: String, size: Int) {
        do {
            _ = try Workloads.make(name, size: size)
            Issue.record("make(\(name), size: \(size)) was accepted")
        } catch {
            #expect(error.description.hasPrefix("\(name) size \(size) "))
            #expect(error.description.contains("between"))
            if name == "matmul" {
                #expect(error.description.contains("multiple of 16"))
            }
        }
    }

    @Test func defaultsAndBounds() throws {
        let expected: [String: Int] = ["saxpy": 16_777_216, "reduce": 16_777_216, "matmul": 512,
                                       "mandelbrot": 1024, "listwalk": 1_048_576, "spin": 60_000]
        for name in Workloads.names {
            let workload = try Workloads.make(name, size: nil)
            #expect(workload.kernel.rawValue == name)
            #expect(workload.size == expected[name])
        }
        // The ends of each range are accepted.
        for (name, size) in [("saxpy", 1), ("saxpy", 1 << 28), ("matmul", 16), ("matmul", 2048),
                             ("mandelbrot", 16), ("mandelbrot", 8192), ("listwalk", 1), ("spin", 65_535)] {
            #expect(try Workloads.make(name, size: size).size == size)
        }
    }

    @Test func splitMix64MatchesTheReferenceSequence() {
        // The first outputs for seed 1234567 published with the algorithm.
        var rng = SplitMix64(seed: 1_234_567)
        let outputs = (0..<5).map { _ in rng.next() }
        #expect(outputs == [6_457_827_717_110_365_317, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423,
                            4_593_380_528_125_082_431, 16_408_922_859_458_223_821])
    }

    @Test func launchShapes() throws {
        #expect(try Run(SaxpyWorkload(size: 1000)).launch.groups == 4)
        #expect(try Run(ReduceWorkload(size: 5000)).launch.groups == 3)
        #expect(try Run(MatmulWorkload(size: 48)).launch.groups == 9)
        #expect(try Run(MandelbrotWorkload(size: 16)).launch.groups == 1)
        #expect(try Run(ListwalkWorkload(size: 10_000)).launch.groups == 1)
        let spin = try Run(SpinWorkload(size: 100))
        #expect(spin.launch == Launch(args: [100], groups: 64))
        for kernel in BuiltinKernel.allCases {
            let run = try Run(Workloads.make(kernel.rawValue, size: smallSizes[kernel]))
            #expect(run.launch.args.count == kernel.argumentCount)
            // Every pointer argument is 256-byte aligned and inside the region.
            for arg in run.launch.args where arg >= run.base && arg < run.base + UInt64(run.workload.mirroredBytes) {
                #expect(arg % 256 == 0)
            }
        }
    }

    // MARK: - Reference as device

    @Test func saxpy() throws {
        let run = try Run(SaxpyWorkload(size: 1000))
        #expect(!run.verify().ok, "zeroed output must not verify")
        let args = run.launch.args
        let n = Int(args[0])
        let a = Float(bitPattern: UInt32(truncatingIfNeeded: args[1]))
        let x = floats(args[2], n)
        let y = floats(args[3], n)
        let result = SaxpyWorkload.referenceSaxpy(a: a, x: Array(x), y: Array(y))
        for i in 0..<n { y[i] = result[i] }
        try run.expectVerified()
        y[n / 2] += 0.5
        run.expectRejected()
    }

    @Test(arguments: [1, 2048, 5000])
    func reduce(size: Int) throws {
        let run = try Run(ReduceWorkload(size: size))
        let args = run.launch.args
        let n = Int(args[0])
        let x = Array(floats(args[1], n))
        let partials = floats(args[2], Int(run.launch.groups))
        for g in 0..<Int(run.launch.groups) {
            let chunk = x[(g * 2048)..<min(n, (g + 1) * 2048)]
            partials[g] = Float(ReduceWorkload.referenceSum(chunk))
        }
        try run.expectVerified()
        partials[partials.count - 1] += 100
        run.expectRejected()
    }

    @Test func matmul() throws {
        let run = try Run(MatmulWorkload(size: 48))
        let args = run.launch.args
        let n = Int(args[0])
        let c = MatmulWorkload.referenceMatmul(n: n, a: Array(floats(args[1], n * n)), b: Array(floats(args[2], n * n)))
        let out = floats(args[3], n * n)
        for i in 0..<(n * n) { out[i] = c[i] }
        try run.expectVerified()
        out[n + 7] += 1
        run.expectRejected()
    }

    @Test func mandelbrotToleratesAFewBoundaryPixels() throws {
        // 64 × 64 = 4,096 pixels: 4 mismatches allowed, 5 not.
        let run = try Run(MandelbrotWorkload(size: 64))
        let args = run.launch.args
        let (width, height, maxIterations) = (Int(args[0]), Int(args[1]), Int(args[2]))
        let reference = MandelbrotWorkload.referenceMandelbrot(width: width, height: height, maxIterations: maxIterations)
        let out = words(args[3], width * height)
        for p in 0..<(width * height) { out[p] = reference[p] }
        try run.expectVerified()
        // The image reaches the interior of the set, where every pixel runs maxIterations.
        #expect(reference.contains(UInt32(maxIterations)))
        for p in 0..<4 { out[p * 97] &+= 1 }
        try run.expectVerified()
        out[5 * 97] &+= 1
        run.expectRejected()
    }

    @Test func mandelbrotSmallImageAllowsNoMismatch() throws {
        let run = try Run(MandelbrotWorkload(size: 16))
        let args = run.launch.args
        let reference = MandelbrotWorkload.referenceMandelbrot(width: 16, height: 16, maxIterations: Int(args[2]))
        let out = words(args[3], 256)
        for p in 0..<256 { out[p] = reference[p] }
        try run.expectVerified()
        out[200] &+= 1
        run.expectRejected()
    }

    @Test(arguments: [1, 4096, 10_000])
    func listwalk(size: Int) throws {
        let run = try Run(ListwalkWorkload(size: size))
        let args = run.launch.args
        let listCount = Int(args[0])
        #expect(listCount == (size + 4095) / 4096)
        let heads = UnsafeMutablePointer<UInt64>(bitPattern: UInt(args[1]))!
        let out = words(args[2], 2 * listCount)
        // Walk the lists the way the kernel does: follow owner pointers through memory.
        var nodesSeen = 0
        var sequentialSteps = 0
        for l in 0..<listCount {
            var node = heads[l]
            var sum: UInt32 = 0
            var count: UInt32 = 0
            while node != 0 {
                #expect(node >= run.base && node < run.base + UInt64(run.workload.mirroredBytes))
                let p = UnsafeRawPointer(bitPattern: UInt(node))!
                sum &+= p.load(fromByteOffset: 8, as: UInt32.self)
                count += 1
                let next = p.load(as: UInt64.self)
                if next == node + 16 { sequentialSteps += 1 }
                node = next
            }
            out[2 * l] = sum
            out[2 * l + 1] = count
            nodesSeen += Int(count)
        }
        #expect(nodesSeen == size)
        // Shuffled placement: almost no step goes to the adjacent node.
        #expect(sequentialSteps <= max(1, size / 100))
        try run.expectVerified()
        out[2 * listCount - 1] += 1
        run.expectRejected()
    }

    @Test func spinAlwaysVerifies() throws {
        let run = try Run(SpinWorkload(size: 100))
        try run.expectVerified()
        #expect(run.workload.work.flops == 100 * 64 * 64 * 8)
    }

    @Test func workAmounts() throws {
        #expect(try SaxpyWorkload(size: 1000).work == WorkAmount(bytes: 12_000, flops: 2000, computeBound: false))
        #expect(try ReduceWorkload(size: 1000).work.bytes == 4000)
        #expect(try MatmulWorkload(size: 16).work == WorkAmount(bytes: 12 * 256, flops: 2 * 4096, computeBound: true))
        let mandelbrot = try MandelbrotWorkload(size: 16)
        let total = MandelbrotWorkload.referenceMandelbrot(width: 16, height: 16, maxIterations: 256).reduce(0) { $0 + Int($1) }
        #expect(mandelbrot.work.flops == Double(8 * total))
        #expect(mandelbrot.work.computeBound)
        #expect(try ListwalkWorkload(size: 1000).work.bytes == 16_000)
    }
}

// MARK: - Helpers

fileprivate let smallSizes: [BuiltinKernel: Int] = [.saxpy: 1000, .reduce: 5000, .matmul: 32, .mandelbrot: 16,
                                        .listwalk: 5000, .spin: 100]

fileprivate func floats(_ address: UInt64, _ count: Int) -> UnsafeMutableBufferPointer<Float> {
    UnsafeMutableBufferPointer(start: UnsafeMutablePointer(bitPattern: UInt(address)), count: count)
}

fileprivate func words(_ address: UInt64, _ count: Int) -> UnsafeMutableBufferPointer<UInt32> {
    UnsafeMutableBufferPointer(start: UnsafeMutablePointer(bitPattern: UInt(address)), count: count)
}

/// A workload prepared in page-aligned memory that lives as long as the test (tests are short;
/// the memory is never freed, which keeps the helper free of ownership rules).
fileprivate struct Run {
    var workload: any Workload
    let memory: UnsafeMutableRawPointer
    let launch: Launch
    var base: UInt64 { UInt64(UInt(bitPattern: memory)) }

    init(_ workload: any Workload) {
        self.workload = workload
        memory = .allocate(byteCount: workload.mirroredBytes, alignment: 4096)
        // Garbage in the region must not matter: prepare writes every input and zeroes outputs.
        memory.initializeMemory(as: UInt8.self, repeating: 0xA5, count: workload.mirroredBytes)
        launch = self.workload.prepare(memory: memory)
    }

    func verify() -> Verification { workload.verify(memory: memory) }

    func expectVerified(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let result = verify()
        #expect(result.ok, "\(result.detail)", sourceLocation: sourceLocation)
        #expect(!result.detail.isEmpty, sourceLocation: sourceLocation)
    }

    func expectRejected(sourceLocation: SourceLocation = #_sourceLocation) {
        let result = verify()
        #expect(!result.ok, "corruption went unnoticed: \(result.detail)", sourceLocation: sourceLocation)
    }
}
