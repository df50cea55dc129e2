import CTetherLinux
import Glibc

/// One received message: its bytes, the fds that came with it (owned by the receiver now), and the
/// sender the kernel vouches for (`SCM_CREDENTIALS`; pid −1 where the socket lacks `SO_PASSCRED`;
/// `SCM_PIDFD` where it has `SO_PASSPIDFD`).
public struct ReceivedMessage: ~Copyable {
    public var bytes: [UInt8]
    public var fds: [Int32]
    public var senderPid: pid_t
    public var senderUid: uid_t
    /// A pidfd of the sender taken when it sent (owned by this message; −1 when none came: no
    /// `SO_PASSPIDFD`, or the kernel could not make one).
    public var senderPidfd: Int32 = -1
    /// The message or its attached fds did not fit the receive buffer.
    public var truncated: Bool

    /// Takes ownership of the received fds; the caller must close them.
    public mutating func takeFds() -> [Int32] {
        defer { fds = [] }
        return fds
    }

    deinit {
        for fd in fds { close(fd) }
        if senderPidfd >= 0 { close(senderPidfd) }
    }
}

public enum ReceiveResult: ~Copyable {
    case message(ReceivedMessage)
    /// The peer closed (every copy of its end is gone).
    case hangUp
    /// Non-blocking socket with nothing to read.
    case wouldBlock
}

/// A Unix `SOCK_SEQPACKET` socket: message boundaries kept, fds passed with `SCM_RIGHTS`.
public enum SeqPacketSocket {
    public static let maxFdsPerMessage: Int32 = 8

    /// Binds and listens at `path` with owner-only permissions, with `SO_PASSCRED` set on the
    /// listening socket so accepted sockets inherit it.
    public static func listen(path: String, backlog: Int32 = 512) throws(SystemError) -> OwnedDescriptor {
        let fd = OwnedDescriptor(adopting: try retryingInterrupts("socket") {
            socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        try retryingInterrupts("setsockopt(SO_PASSCRED)") { tether_enable_passcred(fd.raw) }
        var addr = try address(path)
        let oldMask = umask(0o077)
        defer { umask(oldMask) }
        try retryingInterrupts("bind(\(path))") {
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        try retryingInterrupts("listen") { Glibc.listen(fd.raw, backlog) }
        return fd
    }

    /// Sets `SO_PASSPIDFD` (Linux ≥ 6.5) on a listening socket, so that every message on the
    /// sockets it accepts carries a pidfd of its sender. Returns false where the kernel lacks it.
    public static func enableSenderPidfds(_ fd: Int32) -> Bool {
        tether_enable_passpidfd(fd) == 0
    }

    /// Who created the other end of a connected socket (`SO_PEERCRED`: its effective uid and
    /// its pid at `connect`/`listen` time).
    public static func peerCredentials(_ fd: Int32) throws(SystemError) -> (uid: uid_t, pid: pid_t) {
        var uid: uid_t = 0
        var pid: pid_t = 0
        try retryingInterrupts("getsockopt(SO_PEERCRED)") { tether_peer_credentials(fd, &uid, &pid) }
        return (uid, pid)
    }

    /// Connects to the daemon at `path` (`SOCK_CLOEXEC`: an exec'd image must not inherit the
    /// device, see the lifetime rules). A listener whose backlog is full (a daemon that stopped
    /// accepting) makes `connect` wait; with `timeoutSeconds` it gives up with `EAGAIN` after
    /// that long (Linux bounds a Unix `connect` by `SO_SNDTIMEO`, which stays set on the socket).
    public static func connect(path: String, timeoutSeconds: Double? = nil) throws(SystemError) -> OwnedDescriptor {
        let fd = OwnedDescriptor(adopting: try retryingInterrupts("socket") {
            socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        if let timeoutSeconds {
            let clamped = max(0.000_001, min(timeoutSeconds, 1e9))
            var tv = timeval(tv_sec: Int(clamped), tv_usec: Int((clamped - clamped.rounded(.down)) * 1e6))
            try retryingInterrupts("setsockopt(SO_SNDTIMEO)") {
                setsockopt(fd.raw, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            }
        }
        var addr = try address(path)
        try retryingInterrupts("connect(\(path))") {
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        return fd
    }

    /// Accepts one connection (non-blocking, close-on-exec); nil when none is pending.
    public static func accept(_ listener: Int32) throws(SystemError) -> OwnedDescriptor? {
        while true {
            let fd = tether_accept_nonblocking(listener)
            if fd >= 0 { return OwnedDescriptor(adopting: fd) }
            switch errno {
            case EINTR: continue
            case EAGAIN, ECONNABORTED: return nil
            default: throw SystemError("accept4")
            }
        }
    }

    public static func send(_ fd: Int32, _ bytes: [UInt8], fds: [Int32] = []) throws(SystemError) {
        let n = bytes.withUnsafeBytes { buf in
            fds.withUnsafeBufferPointer { tether_send_with_fds(fd, buf.baseAddress, buf.count, $0.baseAddress, Int32($0.count)) }
        }
        if n < 0 { throw SystemError("sendmsg") }
    }

    /// Sends one message without fds and without blocking (`MSG_DONTWAIT`). False when the
    /// socket's buffer is full or the peer is gone.
    public static func trySend(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)) }
        return n == bytes.count
    }

    public static func receive(_ fd: Int32, capacity: Int) throws(SystemError) -> ReceiveResult {
        try receive(fd, into: ReceiveBuffer(capacity: capacity))
    }

    /// Receives into a reused buffer (allocating and zeroing 192 KiB per message cost ~7 µs) and
    /// copies out only the bytes that arrived.
    /// `dontWait`: never block, even on a blocking socket (`.wouldBlock` when nothing is there) —
    /// for a reader that polled first while another process may hold the same fd and take the
    /// message in between.
    public static func receive(_ fd: Int32, into buffer: ReceiveBuffer, dontWait: Bool = false) throws(SystemError) -> ReceiveResult {
        let capacity = buffer.capacity
        var fds = [Int32](repeating: -1, count: Int(maxFdsPerMessage))
        var fdCount: Int32 = 0
        var pid: pid_t = -1
        var uid: uid_t = 0
        var pidfd: Int32 = -1
        var truncated = false
        var n = -1
        // ECONNRESET: the peer closed while our last message to it was unread. The kernel reports
        // that once, before the messages it had sent us: read on, so that its last words (a
        // daemon turning a connection away says why) are not lost.
        for _ in 0..<2 {
            n = fds.withUnsafeMutableBufferPointer {
                tether_recv_with_fds(fd, buffer.storage, capacity, $0.baseAddress, maxFdsPerMessage, &fdCount, &pid, &uid,
                                     &pidfd, &truncated, dontWait)
            }
            if n < 0 && errno == ECONNRESET { continue }
            break
        }
        if n < 0 {
            if errno == EAGAIN { return .wouldBlock }
            if errno == ECONNRESET { return .hangUp }
            throw SystemError("recvmsg")
        }
        if n == 0 && fdCount == 0 && !truncated {
            if pidfd >= 0 { close(pidfd) }
            return .hangUp
        }
        let bytes = Array(UnsafeRawBufferPointer(start: buffer.storage, count: Int(n)))
        return .message(ReceivedMessage(bytes: bytes, fds: Array(fds[0..<Int(fdCount)]), senderPid: pid,
                                        senderUid: uid, senderPidfd: pidfd, truncated: truncated))
    }

    public static func setNonBlocking(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    private static func address(_ path: String) throws(SystemError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SystemError("socket path too long (\(path))", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return addr
    }
}

/// A receive buffer owned by one reading thread.
public final class ReceiveBuffer: @unchecked Sendable {
    public let capacity: Int
    let storage: UnsafeMutableRawPointer
    public init(capacity: Int) {
        self.capacity = capacity
        storage = .allocate(byteCount: capacity, alignment: 16)
    }
    deinit { storage.deallocate() }
}
