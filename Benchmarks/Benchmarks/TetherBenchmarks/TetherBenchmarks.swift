// Micro-benchmarks of TetherCore's hot paths: the wire protocol, the scheduler policy
// (`RunQueue`) and the region-table lookup. Pure code: no daemon, no device, no memfds.
//
// Every benchmark runs its operation `scalingFactor` times per iteration, so the reported
// numbers (marked `*` in the output) are per operation. `mallocCountTotal` is the stable metric
// (deterministic for a given toolchain); wall clock depends on the machine.
import Benchmark
import TetherCore

/// Mutable state that lives across iterations (a steady-state queue, not a fresh one per sample).
final class QueueBox {
    var queue: RunQueue
    var nextThread: UInt64
    var cursor = 0
    init(queue: RunQueue, nextThread: UInt64) {
        self.queue = queue
        self.nextThread = nextThread
    }
}

enum Fixtures {
    static let spaceCount = 64
    static let threadsPerSpace = 8

    /// 64 address spaces × 8 persistent threads with grids that never finish during a run, in
    /// the three priority classes (mostly normal), warmed up so every thread has a cost estimate.
    static func loadedQueue() -> QueueBox {
        var q = RunQueue(quantumNanos: 2_000_000)
        var id: UInt64 = 1
        for s in 0..<spaceCount {
            let priority: PriorityClass = s % 16 == 0 ? .high : (s % 4 == 0 ? .low : .normal)
            for _ in 0..<threadsPerSpace {
                q.add(ThreadID(rawValue: id), space: SpaceID(rawValue: UInt64(s + 1)), priority: priority,
                      groups: 1 << 30, persistent: true)
                id += 1
            }
        }
        let box = QueueBox(queue: q, nextThread: id)
        for _ in 0..<(spaceCount * threadsPerSpace * 4) { cycle(box) }
        return box
    }

    /// One scheduling decision: pick a slice, "run" it at 1 µs per workgroup, account it.
    @inline(__always)
    static func cycle(_ box: QueueBox) {
        let pick = box.queue.pick()!
        blackHole(box.queue.account(pick, nanos: UInt64(pick.groupCount) &* 1_000))
    }

    static let spawn = Request.spawn(SpawnRequest(
        program: .builtin(.saxpy), args: [1 << 20, 0x4000_0000, 0x7F12_3456_0000, 0x7F12_3496_0000],
        groups: 4096, persistentNanos: 0, priority: .normal))

    static let report = ThreadReport(thread: ThreadID(rawValue: 4242), kernel: "saxpy", state: .finished,
                                     deviceNanos: 12_345_678, priority: .normal)

    /// A `ps` answer for 16 address spaces of 8 threads each.
    static let table: ProcessTable = {
        let kernels = BuiltinKernel.allCases.map(\.rawValue)
        var spaces: [SpaceReport] = []
        var id: UInt64 = 1
        for s in 0..<16 {
            var threads: [ThreadReport] = []
            for t in 0..<8 {
                threads.append(ThreadReport(thread: ThreadID(rawValue: id), kernel: kernels[(s + t) % kernels.count],
                                            state: t % 3 == 0 ? .running : .queued, deviceNanos: id * 1_000_003,
                                            priority: .normal))
                id += 1
            }
            spaces.append(SpaceReport(space: SpaceID(rawValue: UInt64(s + 1)), pid: Int32(1000 + s), uid: 1000,
                                      policy: .exit, ownerAlive: true, connections: 1, regions: 4,
                                      mirroredBytes: 64 << 20, deviceNanos: UInt64(s) * 8_000_000, threads: threads))
        }
        return ProcessTable(backend: .vulkan, deviceName: "llvmpipe (LLVM 19.1.7, 256 bits)", policy: .exit, spaces: spaces)
    }()

    /// 64 disjoint 1 MiB regions, 16 MiB apart in the owner, packed on the device side.
    static let regions: [RegionTableEntry] = (0..<64).map { i in
        RegionTableEntry(ownerBase: 0x7F00_0000_0000 + UInt64(i) << 24, size: 1 << 20,
                         deviceBase: 0x1_0000_0000 + UInt64(i) << 20)
    }

    /// 1,024 addresses inside the table, spread uniformly over its regions (a hit scans 32.5
    /// entries on average), in a fixed pseudo-random order.
    static let hits: [UInt64] = {
        var rng = SplitMix64(seed: 42)
        return (0..<1024).map { _ in
            let r = regions[Int(rng.next() % 64)]
            return r.ownerBase + (rng.next() % (r.size - 64))
        }
    }()

    /// The region scan of `SoftwareKernelContext.pointer` / `AddressSpace`: first region that holds
    /// `[va, va + bytes)`.
    @inline(__always)
    static func lookup(_ table: [RegionTableEntry], _ va: UInt64, bytes: UInt64) -> UInt64? {
        for region in table {
            if let address = region.translate(va, bytes: bytes) { return address }
        }
        return nil
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        timeUnits: .nanoseconds,
        warmupIterations: 10,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 100_000
    )

    // MARK: Wire protocol

    Benchmark("Codec: encode spawn request (4 args)") { benchmark in
        let request = Fixtures.spawn
        for i in benchmark.scaledIterations {
            blackHole(MessageCodec.encode(request, id: UInt64(i)))
        }
    }

    Benchmark("Codec: decode spawn request (4 args)") { benchmark in
        let bytes = MessageCodec.encode(Fixtures.spawn, id: 7)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try! MessageCodec.decodeRequest(bytes))
        }
    }

    Benchmark("Codec: encode joined reply") { benchmark in
        let reply = Reply.joined(Fixtures.report)
        for i in benchmark.scaledIterations {
            blackHole(MessageCodec.encode(reply, id: UInt64(i)))
        }
    }

    Benchmark("Codec: decode joined reply") { benchmark in
        let bytes = MessageCodec.encode(Reply.joined(Fixtures.report), id: 7)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try! MessageCodec.decodeReply(bytes))
        }
    }

    Benchmark("Codec: decode ps reply (16 spaces x 8 threads)",
              configuration: .init(scalingFactor: .one)) { benchmark in
        let bytes = MessageCodec.encode(Reply.ps(Fixtures.table), id: 7)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try! MessageCodec.decodeReply(bytes))
        }
    }

    // MARK: Scheduler policy

    var pickBox: QueueBox?
    Benchmark("RunQueue: pick+account (64 spaces x 8 threads)") { benchmark in
        let box = pickBox!
        for _ in benchmark.scaledIterations {
            Fixtures.cycle(box)
        }
    } setup: {
        pickBox = Fixtures.loadedQueue()
    } teardown: {
        pickBox = nil
    }

    var churnBox: QueueBox?
    Benchmark("RunQueue: add+remove thread (64 spaces x 8 threads)") { benchmark in
        let box = churnBox!
        for _ in benchmark.scaledIterations {
            let id = ThreadID(rawValue: box.nextThread)
            box.nextThread &+= 1
            box.cursor = (box.cursor + 1) % Fixtures.spaceCount
            box.queue.add(id, space: SpaceID(rawValue: UInt64(box.cursor + 1)), priority: .normal,
                          groups: 4096, persistent: false)
            blackHole(box.queue.remove(id))
        }
    } setup: {
        churnBox = Fixtures.loadedQueue()
    } teardown: {
        churnBox = nil
    }

    // MARK: Region table

    Benchmark("RegionTable: translate hit (64 entries)") { benchmark in
        let table = Fixtures.regions
        let hits = Fixtures.hits
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(Fixtures.lookup(table, hits[i & 1023], bytes: 16))
        }
    }

    Benchmark("RegionTable: translate miss (64 entries)") { benchmark in
        let table = Fixtures.regions
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            // Between regions: every entry is tried and none holds it.
            blackHole(Fixtures.lookup(table, 0x7F00_0000_0000 + UInt64(i & 63) << 24 + (2 << 20), bytes: 16))
        }
    }
}
