import CTetherLinux
import TetherCore

/// What a software kernel twin sees while it runs one workgroup: the arguments, the region table
/// (whose `deviceBase` is this process's mapping of the mirrored pages) and the control block.
///
/// Twins must behave like their GLSL originals: translate every owner pointer through `pointer`,
/// stop quietly when it returns nil (the fault is recorded), and poll `shouldStop` where the GLSL
/// polls the control word.
public struct SoftwareKernelContext: @unchecked Sendable {
    public let args: [UInt64]
    public let regions: [RegionTableEntry]
    public let control: UnsafeMutablePointer<ControlBlock>
    public let groupTotal: UInt32
    public let round: UInt32

    public init(args: [UInt64], regions: [RegionTableEntry], control: UnsafeMutablePointer<ControlBlock>,
                groupTotal: UInt32, round: UInt32) {
        self.args = args
        self.regions = regions
        self.control = control
        self.groupTotal = groupTotal
        self.round = round
    }

    /// This process's pointer to owner range `[va, va + bytes)`, or nil after recording an address
    /// fault in the control block (first fault wins, as `atomicCompSwap` in GLSL).
    @inline(__always)
    public func pointer(_ va: UInt64, bytes: UInt64) -> UnsafeMutableRawPointer? {
        for region in regions {
            if let address = region.translate(va, bytes: bytes) {
                return UnsafeMutableRawPointer(bitPattern: UInt(address))
            }
        }
        recordFault(va)
        return nil
    }

    public func recordFault(_ va: UInt64) {
        let raw = UnsafeMutableRawPointer(control)
        if tether_atomic_cas_u32(raw.advanced(by: 4).assumingMemoryBound(to: UInt32.self),
                                 KernelABI.faultNone, KernelABI.faultAddress) {
            tether_atomic_store_u64(raw.advanced(by: 8).assumingMemoryBound(to: UInt64.self), va)
        }
    }

    /// True once the host asked this thread to stop (kill or yield).
    @inline(__always)
    public var shouldStop: Bool {
        tether_atomic_load_u32(UnsafeMutableRawPointer(control).assumingMemoryBound(to: UInt32.self)) != KernelABI.controlRun
    }

    /// `args[i]` as the float whose bits are in its low 32 bits.
    @inline(__always)
    public func float(_ i: Int) -> Float { Float(bitPattern: UInt32(truncatingIfNeeded: args[i])) }
}
