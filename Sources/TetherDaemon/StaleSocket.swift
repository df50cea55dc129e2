import Glibc
import TetherCore
import TetherSys

/// What may be removed at the daemon's socket path before it binds there: only a socket that is
/// provably stale — a Unix socket on which `connect` is refused (`ECONNREFUSED`: nobody listens;
/// a daemon that died left it). A live daemon's socket, a regular file, a directory or anything
/// else is left alone with a sentence saying what is there.
enum StaleSocket {
    static func removeIfStale(_ path: String) throws(TetherError) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw TetherError(.invalidArgument, "cannot inspect \(path): \(SystemError("lstat"))")
        }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw TetherError(.invalidArgument, "\(path) exists and is not a socket; remove it or choose another --socket")
        }
        let refusal: SystemError
        do throws(SystemError) {
            _ = try SeqPacketSocket.connect(path: path, timeoutSeconds: 2)
            refusal = SystemError("connect", errno: 0)
        } catch {
            refusal = error
        }
        switch refusal.errno {
        case 0:
            throw TetherError(.invalidArgument, "a Tether daemon already listens at \(path)")
        case ECONNREFUSED:
            unlink(path)  // stale: nobody listens
        case EAGAIN:
            throw TetherError(.invalidArgument, "a daemon listens at \(path) but does not accept connections (its backlog is full); it is not stale, so it is left alone")
        default:
            throw TetherError(.invalidArgument, "cannot tell whether the socket at \(path) is stale (\(refusal)); remove it yourself if no daemon uses it")
        }
    }
}
