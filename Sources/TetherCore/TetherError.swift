/// Every error Tether reports, on either side of the socket: a code that travels on the wire and
/// one sentence for the user (with the fix, where there is one).
public struct TetherError: Error, CustomStringConvertible, Equatable, Sendable {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        /// The request came from a process that does not own the connection (a forked child, or a
        /// process the fd was passed to) — amdkfd answers `-EBADF` here.
        public static let notOwner = Code(rawValue: 1)
        /// The connection's address space was torn down; the connection is orphaned.
        public static let ownerExited = Code(rawValue: 2)
        /// The daemon is gone or stopped answering.
        public static let deviceLost = Code(rawValue: 3)
        public static let invalidArgument = Code(rawValue: 4)
        /// Device code used an address outside every mirrored region.
        public static let addressFault = Code(rawValue: 5)
        public static let unknownKernel = Code(rawValue: 6)
        public static let gridTooLarge = Code(rawValue: 7)
        /// The requested backend does not exist here (or the daemon does not serve it).
        public static let backendUnavailable = Code(rawValue: 8)
        public static let malformedMessage = Code(rawValue: 9)
        public static let unsupported = Code(rawValue: 10)
        /// The device thread was killed before it finished.
        public static let killed = Code(rawValue: 11)
        public static let noSuchThread = Code(rawValue: 12)
        public static let noSuchRegion = Code(rawValue: 13)
        public static let resourceExhausted = Code(rawValue: 14)
        public static let permissionDenied = Code(rawValue: 15)
        public static let deviceError = Code(rawValue: 16)
        public static let protocolVersion = Code(rawValue: 17)
        /// A call's own deadline passed before its answer; the connection stays usable. Raised
        /// by the client library, never sent by the daemon.
        public static let timedOut = Code(rawValue: 18)

        public var description: String {
            switch self {
            case .notOwner: "notOwner"
            case .ownerExited: "ownerExited"
            case .deviceLost: "deviceLost"
            case .invalidArgument: "invalidArgument"
            case .addressFault: "addressFault"
            case .unknownKernel: "unknownKernel"
            case .gridTooLarge: "gridTooLarge"
            case .backendUnavailable: "backendUnavailable"
            case .malformedMessage: "malformedMessage"
            case .unsupported: "unsupported"
            case .killed: "killed"
            case .noSuchThread: "noSuchThread"
            case .noSuchRegion: "noSuchRegion"
            case .resourceExhausted: "resourceExhausted"
            case .permissionDenied: "permissionDenied"
            case .deviceError: "deviceError"
            case .protocolVersion: "protocolVersion"
            case .timedOut: "timedOut"
            default: "error\(rawValue)"
            }
        }
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
