import Glibc
import Synchronization
import TetherCore
import TetherDevice
import TetherSys

/// One accepted client connection — the user-space twin of an open device file.
///
/// Replies may be sent from any thread (a `join` is answered by the scheduler's worker when the
/// thread ends), so the fd lives behind a lock and is closed under it: a late reply can never
/// reach a reused fd number.
final class Connection: @unchecked Sendable {
    let id: UInt64
    private let fd: Mutex<Int32>
    /// The owner this connection is bound to, from its first request on. Touched by the event
    /// loop only.
    var space: AddressSpace?
    /// The connection's submission and completion rings, once attached (`RingServer`).
    let rings = Mutex<ConnectionRings?>(nil)

    init(id: UInt64, fd: consuming OwnedDescriptor) {
        self.id = id
        self.fd = Mutex(fd.release())
    }

    var rawFD: Int32 { fd.withLock { $0 } }

    /// Returns whether the reply went out. A peer that stopped reading, vanished or was shut
    /// down loses its reply; the hang-up path cleans up.
    @discardableResult
    func send(_ reply: Reply, id requestID: UInt64) -> Bool {
        let bytes = MessageCodec.encode(reply, id: requestID)
        // A ring request's reply goes to the completion ring; one that does not fit, or finds the
        // ring full or gone, goes over the socket with the same id.
        if RingRequestID.isRing(requestID), let rings = rings.withLock({ $0 }) {
            switch rings.complete(bytes, reaps: reply.reaps, socket: rawFD) {
            case .posted(let doorbell):
                if doorbell { sendRaw(MessageCodec.encode(.doorbell, id: 0)) }
                return true
            case .peerGone: return false
            case .notPosted: break
            }
        }
        return sendRaw(bytes)
    }

    @discardableResult
    private func sendRaw(_ bytes: [UInt8]) -> Bool {
        fd.withLock { fd in
            guard fd >= 0 else { return false }
            return (try? SeqPacketSocket.send(fd, bytes)) != nil
        }
    }

    func close() {
        // The rings first: no reply may land in memory the client can no longer be told about.
        rings.withLock { r in
            r?.detach()
            r = nil
        }
        fd.withLock { fd in
            if fd >= 0 { _ = Glibc.close(fd) }
            fd = -1
        }
    }

}
