import Glibc
import TetherCore

/// Where the daemon listens. Every command and the client library find it the same way:
/// `--socket`, else `$TETHER_SOCKET`, else `$XDG_RUNTIME_DIR/tether/tether.sock`, else
/// `/tmp/tether-$UID/tether.sock`.
public enum SocketPath {
    public static func resolve(_ explicit: String? = nil) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let env = environment("TETHER_SOCKET"), !env.isEmpty { return env }
        if let runtime = environment("XDG_RUNTIME_DIR"), !runtime.isEmpty { return runtime + "/tether/tether.sock" }
        return "/tmp/tether-\(getuid())/tether.sock"
    }

    /// Creates the socket's directory with owner-only permissions if it is missing, and refuses
    /// one that someone else could have prepared: the directory (not a symlink) must belong to this
    /// process's effective uid or to root, and no other user may write to it — unless it is a
    /// root-owned sticky directory like `/tmp`, where nobody can remove or replace another user's
    /// socket. (Another user who created `/tmp/tether-$UID` first would otherwise receive every
    /// connection meant for this daemon.) The client checks the daemon's uid as well.
    ///
    /// Throws `.permissionDenied` naming the directory, its owner and mode, with the fix.
    public static func prepareDirectory(for path: String) throws(TetherError) {
        guard let slash = path.lastIndex(of: "/") else { return }
        let dir = slash == path.startIndex ? "/" : String(path[..<slash])
        if mkdir(dir, 0o700) != 0 && errno != EEXIST {
            throw TetherError(.permissionDenied, "cannot create the socket directory \(dir): \(SystemError("mkdir"))")
        }
        var st = stat()
        guard lstat(dir, &st) == 0 else {
            throw TetherError(.permissionDenied, "cannot inspect the socket directory \(dir): \(SystemError("lstat"))")
        }
        let me = geteuid()
        let mode = st.st_mode & 0o7777
        let isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
        let ownedWell = st.st_uid == me || st.st_uid == 0
        let othersWrite = mode & 0o022 != 0
        let rootSticky = st.st_uid == 0 && mode & UInt32(S_ISVTX) != 0
        guard isDirectory, ownedWell, !othersWrite || rootSticky else {
            let what = isDirectory ? "owned by uid \(st.st_uid) with mode \(String(mode, radix: 8))" : "not a directory"
            throw TetherError(.permissionDenied, "the socket directory \(dir) is \(what); it must be a directory of uid \(me) (or root) that no other user can write: remove it, or choose another --socket")
        }
    }
}

public func environment(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}
