import Glibc
import TetherCore
@testable import TetherDevice
import TetherSys
import Testing

/// One Vulkan backend per test process (creating a device costs ~100 ms on lavapipe), with the
/// Khronos validation layer on: every test ends by asserting that it printed nothing.
enum Backends {
    static let vulkan: VulkanBackend? = {
        setenv("TETHER_VALIDATION", "1", 1)
        return try? BackendFactory.open(.vulkan) as? VulkanBackend
    }()

    static func all() -> [any ComputeBackend] {
        [vulkan as (any ComputeBackend)?, SoftwareBackend()].compactMap { $0 }
    }
}

struct BackendCase: CustomTestStringConvertible, Sendable {
    let kind: BackendKind
    /// The scheduler's cap on slices in flight (nil: its default for the device).
    var slicesInFlight: Int? = nil
    var testDescription: String { kind.rawValue + (slicesInFlight.map { ", \($0) slices in flight" } ?? "") }
    var backend: any ComputeBackend {
        get throws {
            switch kind {
            case .software: return SoftwareBackend()
            case .vulkan: return try #require(Backends.vulkan, "lavapipe must be installed (tools/setup installs mesa-vulkan-drivers)")
            }
        }
    }
}

let backendCases = [BackendCase(kind: .vulkan), BackendCase(kind: .software)]
/// By default lavapipe runs one slice at a time and the software backend two; both ways are tested.
let schedulerCases = backendCases + [BackendCase(kind: .vulkan, slicesInFlight: 2), BackendCase(kind: .software, slicesInFlight: 1)]

@Suite(.serialized) struct BackendTests {
    static let sizes: [String: Int] = ["saxpy": 100_003, "reduce": 70_001, "matmul": 48, "mandelbrot": 96,
                                       "listwalk": 9_000, "spin": 100]

    @Test("every built-in kernel matches its CPU reference", arguments: schedulerCases, Workloads.names)
    func kernelsMatchReference(backend: BackendCase, name: String) throws {
        let device = LocalDevice(backend: try backend.backend, quantumNanos: 500_000, slicesInFlight: backend.slicesInFlight)
        defer { device.close() }
        var workload = try Workloads.make(name, size: Self.sizes[name])
        let region = try device.mirror(bytes: workload.mirroredBytes)
        let launch = workload.prepare(memory: region.localBase!)
        let outcome = try device.run(.builtin(workload.kernel), launch: launch)
        #expect(outcome.state == .finished)
        let verification = workload.verify(memory: region.localBase!)
        #expect(verification.ok, "\(verification.detail)")
        #expect(VulkanValidation.messageCount == 0)
    }

    @Test("device code faults on an address outside every region; the thread fails, nothing crashes", arguments: schedulerCases)
    func faultIsAnError(backend: BackendCase) throws {
        let device = LocalDevice(backend: try backend.backend, slicesInFlight: backend.slicesInFlight)
        defer { device.close() }
        let region = try device.mirror(bytes: 4096)
        let base = region.ownerBase
        // x covers the region exactly; y is far outside it.
        let outcome = try device.run(.builtin(.saxpy), launch: Launch(args: [1024, 0, base, base + 1 << 40], groups: 4))
        #expect(outcome.state == .faulted)
        #expect(outcome.error?.code == .addressFault)
        #expect(outcome.error?.message.contains(String(base + 1 << 40, radix: 16)) == true)
        #expect(VulkanValidation.messageCount == 0)
    }

    @Test("killing a running persistent spin returns within a slice, and the thread is reported killed", arguments: schedulerCases)
    func killStopsSpin(backend: BackendCase) throws {
        let device = LocalDevice(backend: try backend.backend, slicesInFlight: backend.slicesInFlight)
        defer { device.close() }
        let thread = try device.spawn(.builtin(.spin), launch: Launch(args: [60_000], groups: 64), persistentNanos: 600_000_000_000)
        // Wait (bounded) until it has run at least one slice.
        let deadline = monotonicNanos() + 10_000_000_000
        while device.scheduler.deviceNanos(ofSpace: device.space) == 0 && monotonicNanos() < deadline {
            _ = device.scheduler.wait(thread, timeoutNanos: 1_000_000)
        }
        let start = monotonicNanos()
        #expect(device.scheduler.kill(thread))
        let took = monotonicNanos() - start
        #expect(thread.state == .killed)
        // Generous: the target (≤ 1 ms p99) is measured by `tether bench kill`, not here.
        #expect(took < 200_000_000, "kill took \(took / 1000) µs")
        // Its context goes back to the pool with no slice pending: the next thread reuses it.
        var w = try Workloads.make("saxpy", size: 50_000)
        let region = try device.mirror(bytes: w.mirroredBytes)
        #expect(try device.run(.builtin(.spin), launch: Launch(args: [10], groups: 4)).state == .finished)
        #expect(try device.run(.builtin(.saxpy), launch: w.prepare(memory: region.localBase!)).state == .finished)
        #expect(w.verify(memory: region.localBase!).ok)
        #expect(VulkanValidation.messageCount == 0)
    }

    @Test("on lavapipe the worker polls for the next submission after a slice: round trips during its poll all run, and a close during its poll stops it")
    func workerPollSeesSubmissionsAndStops() throws {
        let backend = try BackendCase(kind: .vulkan).backend
        for round in 0..<20 {
            let device = LocalDevice(backend: backend)
            // Back to back: each run is submitted while the worker polls after the previous one.
            for _ in 0..<10 {
                #expect(try device.run(.builtin(.spin), launch: Launch(args: [1], groups: 1)).state == .finished)
            }
            // Right after a slice the worker polls with its lock released; the stop it is sent
            // then must still reach it (a lost broadcast would leave close waiting forever).
            let closed = Completion()
            startThread(name: "closer") {
                device.close()
                closed.complete()
            }
            guard closed.wait(untilNanos: monotonicNanos() + 10_000_000_000) else {
                Issue.record("round \(round): close did not return within 10 s")
                return
            }
        }
        #expect(VulkanValidation.messageCount == 0)
    }

    @Test("the software pool charges a slice its share of the device: one workgroup on two device threads, half its time")
    func softwareChargesItsShare() throws {
        let backend = SoftwareBackend(workers: 2)
        let context = try backend.makeContext(program: .builtin(.spin))
        let start = monotonicNanos()
        try context.startSlice(SliceLaunch(args: [BuiltinKernel.maxSpinIterations], regions: [], groupBase: 0,
                                           groupCount: 1, groupTotal: 1))
        let charged = try #require(try context.finishSlice())
        let wall = monotonicNanos() - start
        // One thread ran the group for about the whole wall time; the other had nothing to claim.
        #expect(charged <= wall * 6 / 10 && charged >= wall / 4, "charged \(charged) ns of \(wall) ns")
    }

    @Test("with two slices in flight the device really holds two, and a region mirrored mid-run changes nothing for a running thread")
    func twoSlicesInFlight() throws {
        let device = LocalDevice(backend: try BackendCase(kind: .vulkan).backend, quantumNanos: 200_000, slicesInFlight: 2)
        defer { device.close() }
        #expect(device.scheduler.slicesInFlight == 2)
        var w = try Workloads.make("saxpy", size: 2_000_000)
        let region = try device.mirror(bytes: w.mirroredBytes)
        let thread = try device.spawn(.builtin(.saxpy), launch: w.prepare(memory: region.localBase!))
        // Wait (bounded) until it runs, then change the region table under it.
        let deadline = monotonicNanos() + 10_000_000_000
        while device.scheduler.deviceNanos(ofSpace: device.space) == 0 && monotonicNanos() < deadline {
            _ = device.scheduler.wait(thread, timeoutNanos: 1_000_000)
        }
        let other = try device.mirror(bytes: 1 << 20)
        memset(other.localBase!, 0x5a, 1 << 20)
        let outcome = try #require(device.scheduler.wait(thread, timeoutNanos: 60_000_000_000))
        #expect(outcome.state == .finished)
        #expect(w.verify(memory: region.localBase!).ok)
        #expect(device.scheduler.slicesRun > 4)
        #expect(device.scheduler.peakSlicesInFlight == 2)
        #expect(VulkanValidation.messageCount == 0)
    }

    @Test("a Vulkan device opened and closed after real work leaves no object behind (validation reports leaks at destroy)")
    func vulkanReleasesEverything() throws {
        setenv("TETHER_VALIDATION", "1", 1)
        let before = VulkanValidation.messageCount
        do {
            let backend = try BackendFactory.open(.vulkan)
            let device = LocalDevice(backend: backend)
            var w = try Workloads.make("saxpy", size: 10_000)
            let region = try device.mirror(bytes: w.mirroredBytes)
            let launch = w.prepare(memory: region.localBase!)
            _ = try device.run(.builtin(.saxpy), launch: launch)
            _ = try device.run(.builtin(.spin), launch: Launch(args: [10], groups: 1))
            device.close()
        }
        #expect(VulkanValidation.messageCount == before)
    }

    @Test("the validation counter really counts: an invalid buffer (size 0) is reported")
    func validationCounts() throws {
        let backend = try #require(Backends.vulkan)
        let before = VulkanValidation.messageCount
        _ = try? backend.makeBuffer(size: 0, importing: nil)
        #expect(VulkanValidation.messageCount > before)
        VulkanValidation.messages.store(before, ordering: .releasing)  // this message was the point
    }

    @Test("devices: lavapipe is listed with the features Tether needs, and auto picks it over software")
    func inventory() {
        let inventory = DeviceInventory.scan()
        let lavapipe = inventory.vulkanDevices.first { $0.name.contains("llvmpipe") }
        #expect(lavapipe?.usable == true)
        #expect(inventory.autoPick.backend == (inventory.vulkanDevices.contains { $0.usable } ? .vulkan : .software))
        #expect(inventory.software.backend == .software)
    }
}
