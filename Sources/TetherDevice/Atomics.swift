import CTetherLinux

@inline(__always)
func tetherAtomicStore(_ p: UnsafeMutablePointer<UInt32>, _ v: UInt32) { tether_atomic_store_u32(p, v) }
