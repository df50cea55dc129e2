/// One cap the registry enforces when it admits work: a value, what it counts, and how the
/// daemon's operator changes it (put in the `resourceExhausted` sentence).
public struct Limit: Sendable, Equatable {
    public var value: UInt64
    /// What is counted, plural: "device threads per address space".
    public var what: String
    /// The `tether daemon` flag that sets it: "--max-threads-per-space".
    public var flag: String

    public init(_ value: UInt64, _ what: String, flag: String) {
        self.value = value
        self.what = what
        self.flag = flag
    }

    /// The sentence a client gets when `have + adding` would pass the cap.
    public func exceeded(have: UInt64, adding: UInt64 = 1, hint: String) -> TetherError {
        TetherError(.resourceExhausted, "limit reached: \(have) of at most \(value) \(what) (\(flag)); \(hint), or start the daemon with a higher \(flag)")
    }

    /// Throws when adding `adding` to `have` passes the cap.
    public func check(have: UInt64, adding: UInt64 = 1, hint: String) throws(TetherError) {
        guard have <= value, adding <= value - have else { throw exceeded(have: have, adding: adding, hint: hint) }
    }
}

import TetherCore

/// The caps on what one address space and one user (uid) may hold in the registry. The daemon
/// sets them (`DaemonLimits`); the registry checks them under its lock, in the same step that
/// adds the thread or region, so concurrent admissions cannot overshoot.
public struct RegistryQuota: Sendable {
    public var threadsPerSpace: Limit
    public var threadsPerUser: Limit
    public var regionsPerSpace: Limit
    public var regionsPerUser: Limit
    public var bytesPerSpace: Limit
    public var bytesPerUser: Limit
    public var modulesPerSpace: Limit

    public init(threadsPerSpace: Limit, threadsPerUser: Limit, regionsPerSpace: Limit, regionsPerUser: Limit,
                bytesPerSpace: Limit, bytesPerUser: Limit, modulesPerSpace: Limit) {
        self.threadsPerSpace = threadsPerSpace
        self.threadsPerUser = threadsPerUser
        self.regionsPerSpace = regionsPerSpace
        self.regionsPerUser = regionsPerUser
        self.bytesPerSpace = bytesPerSpace
        self.bytesPerUser = bytesPerUser
        self.modulesPerSpace = modulesPerSpace
    }

    /// No caps beyond what the registry always had (tests of the device layer).
    public static let unlimited = RegistryQuota(
        threadsPerSpace: Limit(.max, "device threads per address space", flag: "--max-threads-per-space"),
        threadsPerUser: Limit(.max, "device threads per user", flag: "--max-threads-per-user"),
        regionsPerSpace: Limit(.max, "regions per address space", flag: "--max-regions-per-space"),
        regionsPerUser: Limit(.max, "regions per user", flag: "--max-regions-per-user"),
        bytesPerSpace: Limit(.max, "mirrored bytes per address space", flag: "--max-mirrored-mib-per-space"),
        bytesPerUser: Limit(.max, "mirrored bytes per user", flag: "--max-mirrored-mib-per-user"),
        modulesPerSpace: Limit(64, "modules per address space", flag: "--max-modules-per-space"))
}

/// What one uid holds in the registry (under the registry's lock).
struct Usage {
    var threads: UInt64 = 0
    var regions: UInt64 = 0
    var bytes: UInt64 = 0
}
