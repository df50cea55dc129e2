import Glibc
import TetherSys

/// Who sent one message, as the kernel vouches for it: pid and uid from `SCM_CREDENTIALS`, and,
/// on Linux ≥ 6.5, a pidfd of the sender taken when it sent (`SCM_PIDFD`) — which, unlike a pid,
/// cannot come to mean another process. Lives for the handling of one message; the pidfd is
/// closed then unless binding took it as the new address space's owner pidfd.
final class Sender {
    let pid: Int32
    let uid: UInt32
    /// The sender's pidfs identity (`Pidfd.identity`), nil without a pidfd or pidfs.
    let identity: UInt64?
    /// Owned; −1 when none came or once taken.
    private var pidfd: Int32

    init(_ message: inout ReceivedMessage) {
        pid = message.senderPid
        uid = message.senderUid
        pidfd = message.senderPidfd
        message.senderPidfd = -1
        identity = pidfd >= 0 ? Pidfd.identity(pidfd) : nil
    }

    /// A sender the daemon vouches for itself (a ring packet's: see `Sender(owner:)`).
    init(pid: Int32, uid: UInt32, identity: UInt64?) {
        self.pid = pid
        self.uid = uid
        self.identity = identity
        pidfd = -1
    }

    deinit { if pidfd >= 0 { close(pidfd) } }

    /// Whether the kernel attached a pidfd.
    var hasPidfd: Bool { pidfd >= 0 }

    /// Takes the pidfd (once).
    func takePidfd() -> OwnedDescriptor? {
        guard pidfd >= 0 else { return nil }
        defer { pidfd = -1 }
        return OwnedDescriptor(adopting: pidfd)
    }
}
