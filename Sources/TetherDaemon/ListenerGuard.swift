import Glibc
import Logging
import TetherCore
import TetherSys

/// Keeps the event loop from spinning when `accept` fails for lack of fds or memory.
///
/// The listener is level-triggered: while a connection is pending, epoll reports it at once, so an
/// `accept` that fails with `EMFILE` would be retried at full speed for as long as the daemon is
/// out of fds, and the pending client would wait forever. Instead one fd is held in reserve: on
/// `EMFILE` it is given up, the pending connection is accepted on it, told why in one sentence
/// (a `resourceExhausted` error with request id 0) and closed, and the reserve is taken again.
/// Where that is impossible too (`ENFILE`: the whole system is out; `ENOMEM`), the listener
/// leaves epoll for `pauseMillis` and comes back (`resume`).
///
/// The event loop only.
final class ListenerGuard {
    static let pauseMillis: UInt64 = 100
    private var reserve: Int32 = open("/dev/null", O_RDONLY | O_CLOEXEC)
    private var pausedUntil: UInt64?
    /// Connections turned away for lack of fds, and pauses (tests read these from the log).
    private(set) var refused = 0
    private(set) var pauses = 0

    deinit { if reserve >= 0 { close(reserve) } }

    func acceptFailed(_ error: SystemError, listener: Int32, epoll: Epoll, logger: Logger) {
        switch error.errno {
        case EMFILE, ENFILE, ENOBUFS, ENOMEM:
            if refuseOne(listener) {
                refused += 1
                if refused == 1 || refused % 1000 == 0 {
                    logger.warning("out of file descriptors: turned a new connection away", metadata: ["refused": "\(refused)"])
                }
                return
            }
            pauses += 1
            logger.warning("cannot accept (\(error)): listener paused for \(Self.pauseMillis) ms")
            epoll.remove(listener)
            pausedUntil = monotonicNanos() + Self.pauseMillis * 1_000_000
        default:
            // ECONNABORTED and EAGAIN never come here; anything else is the listener's own
            // failure, which a retry cannot fix either: pause rather than spin.
            pauses += 1
            logger.error("accept failed: \(error); listener paused for \(Self.pauseMillis) ms")
            epoll.remove(listener)
            pausedUntil = monotonicNanos() + Self.pauseMillis * 1_000_000
        }
    }

    /// Puts a paused listener back once its pause is over; returns how long epoll may sleep.
    func resume(_ listener: Int32, in epoll: Epoll, token: UInt64) -> Int32 {
        guard let until = pausedUntil else { return 1000 }
        let now = monotonicNanos()
        guard now >= until else { return Int32((until - now) / 1_000_000 + 1) }
        pausedUntil = nil
        try? epoll.add(listener, token: token)
        if reserve < 0 { reserve = open("/dev/null", O_RDONLY | O_CLOEXEC) }
        return 1000
    }

    /// Accepts one pending connection on the reserved fd, tells it why, closes it.
    private func refuseOne(_ listener: Int32) -> Bool {
        guard reserve >= 0 else { return false }
        close(reserve)
        reserve = -1
        defer { reserve = open("/dev/null", O_RDONLY | O_CLOEXEC) }
        guard let fd = try? SeqPacketSocket.accept(listener) else { return false }
        let sentence = TetherError(.resourceExhausted, "the Tether daemon is out of file descriptors and cannot take another connection now; close some connections or try again later (its operator can raise its RLIMIT_NOFILE or lower --max-connections-per-user)")
        _ = try? SeqPacketSocket.send(fd.raw, MessageCodec.encode(.error(sentence), id: 0))
        return true
    }
}
