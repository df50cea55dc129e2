import Dispatch
import Glibc
import Synchronization
import TetherCore
import TetherSys

/// The native Swift device: built-in kernels' twins run on every core, one workgroup at a time,
/// checking the control word between workgroups. Device memory *is* the mapping, so importing is
/// free and `deviceBase` is the host address.
public final class SoftwareBackend: ComputeBackend, Sendable {
    public let device: DeviceDescription
    let workers: Int

    public init(workers: Int? = nil) {
        let cores = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        self.workers = max(1, workers ?? cores)
        device = DeviceDescription(
            name: "Tether software device (\(self.workers) threads)", backend: .software, type: "software",
            driver: "tether-swift", apiVersion: "-", vendorID: 0, deviceID: 0,
            externalMemoryHost: true, bufferDeviceAddress: true, timelineSemaphore: true, renderNode: nil)
    }

    public func importMemory(base: UnsafeMutableRawPointer, size: Int) throws(TetherError) -> any ImportedMemory {
        SoftwareMemory(deviceBase: UInt64(UInt(bitPattern: base)))
    }

    public func makeContext(program: KernelProgram) throws(TetherError) -> any ThreadContext {
        guard case .builtin(let kernel) = program else {
            throw TetherError(.unsupported, "custom SPIR-V kernels need a Vulkan backend; this daemon runs the software backend")
        }
        return SoftwareThreadContext(kernel: kernel, workers: workers)
    }
}

final class SoftwareMemory: ImportedMemory {
    let deviceBase: UInt64
    init(deviceBase: UInt64) { self.deviceBase = deviceBase }
}

final class SoftwareThreadContext: ThreadContext, @unchecked Sendable {
    let kernel: BuiltinKernel
    let workers: Int
    let control: UnsafeMutablePointer<ControlBlock>

    init(kernel: BuiltinKernel, workers: Int) {
        self.kernel = kernel
        self.workers = workers
        control = .allocate(capacity: 1)
        control.initialize(to: ControlBlock())
    }

    deinit { control.deallocate() }

    func runSlice(args: [UInt64], regions: [RegionTableEntry], groupBase: UInt32, groupCount: UInt32,
                  groupTotal: UInt32, round: UInt32) throws(TetherError) {
        let context = SoftwareKernelContext(args: args, regions: regions, control: control,
                                            groupTotal: groupTotal, round: round)
        let kernel = self.kernel
        let end = groupBase + groupCount
        if groupCount == 1 || workers == 1 {
            var g = groupBase
            while g < end && !context.shouldStop {
                SoftwareKernels.runGroup(kernel, group: g, context: context)
                g += 1
            }
            return
        }
        // Workers claim workgroups one at a time, so a kill waits for at most one group per worker.
        let next = Atomic<UInt32>(groupBase)
        DispatchQueue.concurrentPerform(iterations: min(workers, Int(groupCount))) { _ in
            while !context.shouldStop {
                let g = next.add(1, ordering: .relaxed).oldValue
                if g >= end { break }
                SoftwareKernels.runGroup(kernel, group: g, context: context)
            }
        }
    }
}
