import Glibc
import TetherCore

/// Where a daemon's `DaemonGeneration` comes from: a counter in the file `generation` in the
/// socket's directory, incremented at every daemon start under `flock`. Daemons started one after
/// another on a socket — a restart — therefore never share a generation (until 2^20 − 1 starts
/// have gone round), so handles from before a restart name nothing afterwards.
///
/// The directory has been checked by `SocketPath.prepareDirectory`, but that allows a root-owned
/// sticky directory such as `/tmp`, where another user may have created `generation` first to pick
/// this daemon's generations. So the file is opened with `O_NOFOLLOW` and used only if it is a
/// regular file of this user with one link that no one else may write. Where it cannot be used
/// the generation is random (`fallback` says so).
enum GenerationCounter {
    static func next(forSocket path: String) -> (generation: DaemonGeneration, fallback: String?) {
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let file = (dir.isEmpty ? "" : dir) + "/generation"
        let fd = open(file, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return (random(), "cannot open \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_uid == geteuid(), st.st_nlink == 1,
              st.st_mode & 0o022 == 0 else {
            return (random(), "\(file) is not a regular file of this user that only it may write")
        }
        guard flock(fd, LOCK_EX) == 0 else { return (random(), "cannot lock \(file)") }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = pread(fd, &buffer, 31, 0)
        let previous = n > 0 ? UInt32(String(decoding: buffer[0..<n], as: UTF8.self).trimmingWhitespace()) : nil
        let generation = DaemonGeneration(rawValue: previous ?? 0).next
        let text = Array("\(generation.rawValue)\n".utf8)
        guard ftruncate(fd, 0) == 0, pwrite(fd, text, text.count, 0) == text.count else {
            return (random(), "cannot write \(file)")
        }
        return (generation, nil)
    }

    private static func random() -> DaemonGeneration {
        DaemonGeneration(rawValue: UInt32.random(in: 1...DaemonGeneration.mask))
    }
}

private extension String {
    func trimmingWhitespace() -> String {
        String(self.filter { !$0.isWhitespace })
    }
}
