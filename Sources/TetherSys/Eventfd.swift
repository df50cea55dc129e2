import Glibc

/// Operations on raw eventfds: the wake-ups of the daemon's event loop (`EventFD`) and of the
/// library's reader, and the completion doorbell a client passes with `attachRings`. The daemon
/// signals that one when a client thread sleeps on the completion ring; the client made it, so
/// the daemon checks what it is before writing to it — a pipe or a file in its place would block
/// the event loop or take the write.
public enum Eventfd {
    /// Whether `fd` is an eventfd: its `/proc/self/fd` link reads `anon_inode:[eventfd]`, which
    /// only the kernel's eventfd file has.
    public static func isEventfd(_ fd: Int32) -> Bool {
        var buffer = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard n > 0 else { return false }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:[eventfd]"
    }

    /// Makes writes on `fd` non-blocking (the file description is the client's too; its library
    /// made it non-blocking already). Returns false if fcntl failed.
    public static func setNonBlocking(_ fd: Int32) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0
    }

    /// Adds 1 to the counter. Never blocks: a counter at its maximum fails with `EAGAIN`, and
    /// such an eventfd is readable already, which is all a wake-up needs.
    public static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Resets the counter of a non-blocking eventfd (after poll said it is readable).
    public static func drain(_ fd: Int32) {
        var counter: UInt64 = 0
        _ = read(fd, &counter, 8)
    }
}
