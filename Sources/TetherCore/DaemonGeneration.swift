/// The daemon instance an id was made by, carried in the id itself so that no handle outlives
/// its daemon.
///
/// Thread, address-space and region ids are 64-bit: the top `bits` (20) hold the generation of
/// the daemon that made them, the low 44 a serial number that the daemon never reuses. A daemon
/// takes its generation from a counter kept next to its socket (`tether daemon` increments it at
/// every start, under a lock), so a daemon started on the same socket after another one — a
/// restart — has a different generation, and a handle from before the restart names nothing:
/// requests with it get `noSuchThread`/`noSuchRegion`. Generation 0 is never a daemon's: ids made
/// in-process (`LocalDevice`) and in tests use it.
///
/// 2^44 serials last a daemon 5.5 years at 100,000 spawns per second; after that it refuses new
/// work (`resourceExhausted`) instead of reusing an id. 2^20 − 1 generations go round before a
/// generation repeats on one socket.
public struct DaemonGeneration: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue & Self.mask }

    public static let bits = 20
    public static let serialBits = 64 - bits
    public static let mask: UInt32 = (1 << bits) - 1
    public static let maxSerial: UInt64 = (1 << serialBits) - 1
    /// In-process ids (no daemon).
    public static let local = DaemonGeneration(rawValue: 0)

    /// The generation after `self`, skipping 0.
    public var next: DaemonGeneration {
        let n = (rawValue + 1) & Self.mask
        return DaemonGeneration(rawValue: n == 0 ? 1 : n)
    }

    /// The 64-bit id for `serial` (1…`maxSerial`).
    public func id(serial: UInt64) -> UInt64 {
        precondition(serial <= Self.maxSerial)
        return UInt64(rawValue) << UInt64(Self.serialBits) | serial
    }

    /// The generation a raw id was made by.
    public static func of(_ raw: UInt64) -> DaemonGeneration {
        DaemonGeneration(rawValue: UInt32(truncatingIfNeeded: raw >> UInt64(serialBits)))
    }

    public static func serial(of raw: UInt64) -> UInt64 { raw & maxSerial }

    public var description: String { "generation \(rawValue)" }

    /// How an id is written for people: `t5` for generation 0, `t3.5` (generation 3, serial 5)
    /// otherwise.
    static func describe(_ raw: UInt64, prefix: String) -> String {
        let g = of(raw).rawValue
        return g == 0 ? "\(prefix)\(raw)" : "\(prefix)\(g).\(serial(of: raw))"
    }
}

extension ThreadID {
    /// The daemon generation that made this thread.
    public var generation: DaemonGeneration { .of(rawValue) }

    /// Parses what `description` writes (`t3.5`, `3.5`) and a bare raw number (`12884901893`).
    public init?(parsing text: String) {
        let body = text.hasPrefix("t") ? Substring(text.dropFirst()) : Substring(text)
        let parts = body.split(separator: ".", omittingEmptySubsequences: false)
        if parts.count == 1, let raw = UInt64(parts[0]) {
            self.init(rawValue: raw)
        } else if parts.count == 2, let g = UInt32(parts[0]), g <= DaemonGeneration.mask, let s = UInt64(parts[1]),
                  s <= DaemonGeneration.maxSerial {
            self.init(rawValue: DaemonGeneration(rawValue: g).id(serial: s))
        } else {
            return nil
        }
    }
}

extension SpaceID {
    public var generation: DaemonGeneration { .of(rawValue) }
}

extension RegionID {
    public var generation: DaemonGeneration { .of(rawValue) }
}
