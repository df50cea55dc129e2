import CTetherLinux
import Glibc

/// Tells a peer's `shutdown()` apart from the release of the peer's socket.
///
/// Both look the same on a connected Unix socket — end of file and `EPOLLHUP` — but only a
/// release (every copy of the peer's fd closed: exit, exec with `SOCK_CLOEXEC`, `close`) is the
/// twin of a device file's last close. A `shutdown()` may come from any process that holds a copy
/// of the fd (a forked child), while the owner still holds it and means to go on. The kernel
/// knows which it is: `unix_diag` reports the peer socket's inode while the peer socket is open
/// and 0 once it has been released. Measured on Linux 6.18: inode after a child's
/// `shutdown(SHUT_RDWR)`, still after the owner's own `close` while the child holds a copy, 0 once
/// the last copy is closed.
public final class PeerRelease: @unchecked Sendable {
    /// The NETLINK_SOCK_DIAG socket; used by one thread at a time (the daemon's event loop).
    private let diag: Int32

    /// nil where the kernel has no `unix_diag` (CONFIG_UNIX_DIAG) or netlink is refused: then
    /// every hang-up counts as a release, as before.
    public init?() {
        let fd = tether_sock_diag_open()
        guard fd >= 0 else { return nil }
        diag = fd
    }

    deinit { close(diag) }

    /// Whether the peer of the connected socket `fd` has released its end. Errors count as
    /// released (the conservative answer: the daemon then tears down as it always did).
    public func peerReleased(_ fd: Int32) -> Bool {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return true }
        return tether_unix_peer_inode(diag, UInt32(truncatingIfNeeded: st.st_ino)) <= 0
    }

}
