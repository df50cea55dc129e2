import Glibc

/// A file descriptor with exactly one owner: closed when the owner drops it.
///
/// Closing early is how fd-reuse bugs start (a later `close` hits somebody else's new fd), so an
/// owned descriptor is closed once, by `deinit` or by an explicit `close()`, never both.
public struct OwnedDescriptor: ~Copyable, @unchecked Sendable {
    public let raw: Int32

    public init(adopting raw: Int32) {
        precondition(raw >= 0, "adopting an invalid descriptor")
        self.raw = raw
    }

    /// Gives up ownership without closing.
    public consuming func release() -> Int32 {
        let fd = raw
        discard self
        return fd
    }

    public consuming func close() {
        _ = Glibc.close(raw)
        discard self
    }

    deinit { _ = Glibc.close(raw) }
}

/// Polls one descriptor for readability with a timeout (milliseconds, -1 = forever).
public func waitReadable(_ fd: Int32, timeoutMillis: Int32) throws(SystemError) -> Bool {
    var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    let n = try retryingInterrupts("poll") { poll(&pfd, 1, timeoutMillis) }
    return n > 0
}
