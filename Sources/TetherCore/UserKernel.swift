/// A user kernel module loaded into the daemon, owned by one address space (never reused).
public struct ModuleID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { DaemonGeneration.describe(rawValue, prefix: "m") }
}

/// What the daemon learnt by reflecting a user's SPIR-V compute module (SPIRV-Cross), after the
/// module passed SPIRV-Tools' validator and Tether's containment rules.
///
/// User kernels reach memory only through **descriptor bindings**: each `Binding` is a storage or
/// uniform buffer that a spawn points at a byte range of the owner's own mirrored memory. Push
/// constants and specialization constants carry values, never device addresses.
public struct ModuleDescription: Sendable, Equatable, Codable {
    public enum BufferKind: UInt8, Sendable, Codable, CustomStringConvertible {
        case storage = 0, uniform = 1
        public var description: String { self == .storage ? "storage" : "uniform" }
    }

    /// One buffer the entry point uses, `layout(set = S, binding = B)` in GLSL.
    public struct Binding: Sendable, Equatable, Codable, CustomStringConvertible {
        public var set: UInt32
        public var binding: UInt32
        public var kind: BufferKind
        /// The block's declared size in bytes (a trailing runtime array counted as empty): a bound
        /// range must hold at least this much.
        public var minBytes: UInt64
        /// Bytes per element of a trailing runtime array (`float data[]`), 0 if the block has none.
        public var runtimeStride: UInt64
        /// The block's name in the module, if it kept one (may be empty).
        public var name: String
        public init(set: UInt32, binding: UInt32, kind: BufferKind, minBytes: UInt64, runtimeStride: UInt64, name: String) {
            self.set = set
            self.binding = binding
            self.kind = kind
            self.minBytes = minBytes
            self.runtimeStride = runtimeStride
            self.name = name
        }
        /// `set.binding`, the way the command line names it.
        public var description: String { "\(set).\(binding)" }
    }

    public enum ScalarType: UInt8, Sendable, Codable, CaseIterable, CustomStringConvertible {
        case bool = 0, int32 = 1, uint32 = 2, float32 = 3, int64 = 4, uint64 = 5, float64 = 6
        public var description: String { ["bool", "int", "uint", "float", "int64", "uint64", "double"][Int(rawValue)] }
        /// Bytes the value takes in `VkSpecializationInfo` (a bool is a 32-bit `VkBool32`).
        public var bytes: Int { rawValue >= ScalarType.int64.rawValue ? 8 : 4 }
    }

    /// A specialization constant, `layout(constant_id = N) const T name = default;` in GLSL.
    public struct SpecConstant: Sendable, Equatable, Codable {
        public var id: UInt32
        public var type: ScalarType
        /// The default value's bit pattern (low 32 bits for 32-bit types).
        public var defaultBits: UInt64
        public var name: String
        public init(id: UInt32, type: ScalarType, defaultBits: UInt64, name: String) {
            self.id = id
            self.type = type
            self.defaultBits = defaultBits
            self.name = name
        }

        /// Parses `text` as a value of this constant's type: `true`/`false`/`1`/`0` for bool,
        /// decimal or `0x` hex integers, decimal floats. Returns the bit pattern, nil if it does not parse.
        public func parse(_ text: String) -> UInt64? {
            func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
                text.lowercased().hasPrefix("0x") ? T(text.dropFirst(2), radix: 16) : T(text)
            }
            switch type {
            case .bool:
                switch text.lowercased() {
                case "true", "1": return 1
                case "false", "0": return 0
                default: return nil
                }
            case .int32: return integer(Int32.self).map { UInt64(UInt32(bitPattern: $0)) }
            case .uint32: return integer(UInt32.self).map { UInt64($0) }
            case .float32: return Float(text).map { UInt64($0.bitPattern) }
            case .int64: return integer(Int64.self).map { UInt64(bitPattern: $0) }
            case .uint64: return integer(UInt64.self)
            case .float64: return Double(text).map { $0.bitPattern }
            }
        }
    }

    /// The compute entry point the module runs.
    public var entryPoint: String
    /// The default local size (x, y, z), as the module declares it; 0 in a dimension that is an
    /// expression of specialization constants (the daemon computes it when it specializes the
    /// module for a spawn, and checks it there).
    public var localSize: [UInt32]
    /// The specialization constant ids that override each dimension of the local size
    /// (`local_size_x_id`), nil where the size is fixed.
    public var localSizeSpecIDs: [UInt32?]
    /// The push-constant block's declared size in bytes (0: the module has none). A spawn passes
    /// exactly this many bytes.
    public var pushConstantBytes: UInt32
    public var bindings: [Binding]
    public var specConstants: [SpecConstant]
    /// The entry point reads `gl_NumWorkGroups`: it runs as one slice over its whole grid, since a
    /// slice (`vkCmdDispatchBase`) would show it the slice's count instead.
    public var usesNumWorkgroups: Bool

    public init(entryPoint: String, localSize: [UInt32], localSizeSpecIDs: [UInt32?], pushConstantBytes: UInt32,
                bindings: [Binding], specConstants: [SpecConstant], usesNumWorkgroups: Bool) {
        self.entryPoint = entryPoint
        self.localSize = localSize
        self.localSizeSpecIDs = localSizeSpecIDs
        self.pushConstantBytes = pushConstantBytes
        self.bindings = bindings
        self.specConstants = specConstants
        self.usesNumWorkgroups = usesNumWorkgroups
    }

    public func binding(set: UInt32, binding: UInt32) -> Binding? {
        bindings.first { $0.set == set && $0.binding == binding }
    }

    public func specConstant(id: UInt32) -> SpecConstant? { specConstants.first { $0.id == id } }

    /// The local size once `spec` overrides apply (0 where it is an expression of specialization
    /// constants, which only the daemon's specialization computes).
    public func localSize(with spec: [SpecValue]) -> [UInt32] {
        (0..<3).map { d in
            if let id = localSizeSpecIDs[d], let v = spec.first(where: { $0.id == id }) { return UInt32(truncatingIfNeeded: v.bits) }
            return localSize[d]
        }
    }
}

/// A buffer binding of a spawn: `[address, address + bytes)` of the owner's own mirrored memory
/// (the owner's virtual addresses, inside one region) backs `layout(set, binding)`.
public struct BufferBinding: Sendable, Equatable, Hashable {
    public var set: UInt32
    public var binding: UInt32
    public var address: UInt64
    public var bytes: UInt64
    public init(set: UInt32, binding: UInt32, address: UInt64, bytes: UInt64) {
        self.set = set
        self.binding = binding
        self.address = address
        self.bytes = bytes
    }
}

/// A specialization constant's value for one spawn: its id and bit pattern (low 32 bits for
/// 32-bit types; a bool is 0 or 1).
public struct SpecValue: Sendable, Equatable, Hashable {
    public var id: UInt32
    public var bits: UInt64
    public init(id: UInt32, bits: UInt64) {
        self.id = id
        self.bits = bits
    }
    public static func int(_ id: UInt32, _ v: Int32) -> Self { Self(id: id, bits: UInt64(UInt32(bitPattern: v))) }
    public static func uint(_ id: UInt32, _ v: UInt32) -> Self { Self(id: id, bits: UInt64(v)) }
    public static func float(_ id: UInt32, _ v: Float) -> Self { Self(id: id, bits: UInt64(v.bitPattern)) }
    public static func double(_ id: UInt32, _ v: Double) -> Self { Self(id: id, bits: v.bitPattern) }
    public static func bool(_ id: UInt32, _ v: Bool) -> Self { Self(id: id, bits: v ? 1 : 0) }
}

/// A 3-D grid of workgroups.
public struct Grid: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var x: UInt32
    public var y: UInt32
    public var z: UInt32
    public init(_ x: UInt32, _ y: UInt32 = 1, _ z: UInt32 = 1) {
        self.x = x
        self.y = y
        self.z = z
    }
    /// Workgroups in the grid (up to 2⁹⁶ in principle; the daemon accepts at most `UInt32.max`).
    public var total: UInt64 { UInt64(x) * UInt64(y) * UInt64(z) }
    public var description: String { "\(x)×\(y)×\(z)" }

    /// The boxes (`base`, `count`, each x, y, z) that cover linear workgroups
    /// `[first, first + count)` of this grid in x-fastest order: at most five — the rest of the
    /// first row, the rest of its plane, whole planes, then the last plane's whole rows and the
    /// start of the last row. A slice of a 3-D grid is one `vkCmdDispatchBase` per box.
    public func boxes(first: UInt64, count: UInt64) -> [(base: [UInt32], count: [UInt32])] {
        var boxes: [(base: [UInt32], count: [UInt32])] = []
        let row = UInt64(x), plane = UInt64(x) * UInt64(y)
        var i = first
        let end = min(first + count, total)
        func coordinates(_ i: UInt64) -> [UInt32] {
            [UInt32(i % row), UInt32((i / row) % UInt64(y)), UInt32(i / plane)]
        }
        while i < end {
            let c = coordinates(i)
            if c[0] != 0 || end - i < row {
                // A partial row.
                let n = min(row - UInt64(c[0]), end - i)
                boxes.append((c, [UInt32(n), 1, 1]))
                i += n
            } else if c[1] != 0 || end - i < plane {
                // Whole rows within one plane.
                let rows = min(UInt64(y) - UInt64(c[1]), (end - i) / row)
                boxes.append((c, [x, UInt32(rows), 1]))
                i += rows * row
            } else {
                // Whole planes.
                let planes = (end - i) / plane
                boxes.append((c, [x, y, UInt32(planes)]))
                i += planes * plane
            }
        }
        return boxes
    }
}

/// How a spawn runs a loaded module: its bindings, push-constant bytes, specialization constants
/// and grid. The daemon checks every part against the module's reflection and the owner's regions.
public struct ModuleLaunch: Sendable, Equatable {
    public var module: ModuleID
    public var bindings: [BufferBinding]
    /// Exactly `ModuleDescription.pushConstantBytes` bytes (std430 layout of the push block).
    public var pushConstants: [UInt8]
    public var specialization: [SpecValue]
    public var grid: Grid
    public init(module: ModuleID, bindings: [BufferBinding], pushConstants: [UInt8] = [], specialization: [SpecValue] = [],
                grid: Grid) {
        self.module = module
        self.bindings = bindings
        self.pushConstants = pushConstants
        self.specialization = specialization
        self.grid = grid
    }

    /// Bounds on what one spawn may carry (checked when decoding, before anything else).
    public static let maxBindings = 64
    public static let maxPushConstantBytes = 256
    public static let maxSpecValues = 64
}
