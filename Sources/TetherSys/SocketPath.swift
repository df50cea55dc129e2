import Glibc

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

    /// Creates the socket's directory with owner-only permissions if it is missing.
    public static func prepareDirectory(for path: String) throws(SystemError) {
        guard let slash = path.lastIndex(of: "/") else { return }
        let dir = String(path[..<slash])
        guard !dir.isEmpty else { return }
        if mkdir(dir, 0o700) != 0 && errno != EEXIST { throw SystemError("mkdir(\(dir))") }
    }
}

public func environment(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}
