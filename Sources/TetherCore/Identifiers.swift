/// A device thread, unique for the life of a daemon (never reused, so a stale id cannot name a
/// newer thread) and carrying the daemon's generation (`DaemonGeneration`), so that an id from
/// before a daemon restart names nothing after it.
public struct ThreadID: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { DaemonGeneration.describe(rawValue, prefix: "t") }
}

/// An address space (one running process image), unique for the life of a daemon and carrying
/// its generation. Pids are reused; these ids are not.
public struct SpaceID: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { DaemonGeneration.describe(rawValue, prefix: "as") }
}

/// A mirrored region of one address space.
public struct RegionID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { DaemonGeneration.describe(rawValue, prefix: "r") }
}

/// Strict priority classes of device threads; lower classes keep a guaranteed floor.
public enum PriorityClass: UInt8, Comparable, CaseIterable, Sendable, Codable, CustomStringConvertible {
    case low = 0, normal = 1, high = 2
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["low", "normal", "high"][Int(rawValue)] }
}

/// Lifetime policy of an address space (see DESIGN.md, "Lifetime rules").
public enum LifetimePolicy: UInt8, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// Torn down at the earlier of owner exit and release of the last connection.
    case exit = 0
    /// Torn down only when the last copy of the connection fd is closed (classic device file).
    case release = 1
    public var description: String { self == .exit ? "exit" : "release" }
    public init?(name: String) {
        switch name {
        case "exit": self = .exit
        case "release": self = .release
        default: return nil
        }
    }
}

/// The state of a device thread.
public enum ThreadState: UInt8, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case queued = 0, running = 1, finished = 2, killed = 3, faulted = 4, failed = 5
    public var description: String { ["queued", "running", "finished", "killed", "faulted", "failed"][Int(rawValue)] }
}

/// Enums that JSON names the way the CLI's text shows them (`"exit"`, `"finished"`, `"normal"`),
/// not by their wire numbers.
public protocol NamedInJSON: Codable, CaseIterable, CustomStringConvertible {}

extension NamedInJSON {
    static func named(_ decoder: any Decoder) throws -> Self {
        let name = try decoder.singleValueContainer().decode(String.self)
        guard let value = allCases.first(where: { $0.description == name }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown \(Self.self) \(name)"))
        }
        return value
    }

    func encodeName(_ encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

// Spelled out in each type: the raw-value enums would otherwise take the standard library's
// number coding.
extension LifetimePolicy: NamedInJSON {
    public init(from decoder: any Decoder) throws { self = try Self.named(decoder) }
    public func encode(to encoder: any Encoder) throws { try encodeName(encoder) }
}
extension ThreadState: NamedInJSON {
    public init(from decoder: any Decoder) throws { self = try Self.named(decoder) }
    public func encode(to encoder: any Encoder) throws { try encodeName(encoder) }
}
extension PriorityClass: NamedInJSON {
    public init(from decoder: any Decoder) throws { self = try Self.named(decoder) }
    public func encode(to encoder: any Encoder) throws { try encodeName(encoder) }
}
