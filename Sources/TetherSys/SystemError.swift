import Glibc

/// A failed system call: which call, and the errno it left.
///
/// `EINTR` never reaches callers (the wrappers retry it); `EAGAIN` is returned as a value where a
/// call is non-blocking. Everything else is thrown as this error, naming the call.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32 = Glibc.errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Retries `body` while it fails with `EINTR`, and turns `-1` into a thrown `SystemError`.
@inline(__always)
@discardableResult
public func retryingInterrupts<T: BinaryInteger>(_ call: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        if errno == EINTR { continue }
        throw SystemError(call)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the one clock of every teardown timeline (comparable across
/// processes on one machine).
@inline(__always)
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Writes one line to standard error (unbuffered: it must appear even if the process dies next).
public func printError(_ line: String) {
    let text = line.hasSuffix("\n") ? line : line + "\n"
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

extension String {
    /// A string from a NUL-terminated C buffer.
    public init(cBuffer: [CChar]) {
        self = String(decoding: cBuffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Writes one line to standard output, unbuffered (a reader may be waiting for it on a pipe).
public func printLine(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
}
