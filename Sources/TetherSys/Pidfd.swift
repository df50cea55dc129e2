import CTetherLinux
import Glibc

/// A process handle that cannot be confused with a later process of the same pid.
///
/// It becomes readable when the whole thread group has exited — and, measured here, only after the
/// kernel has torn down the dead process's memory, so its notice latency grows with process size.
public enum Pidfd {
    /// `pidfd_open(pid, 0)`. The corresponding C function is `syscall(SYS_pidfd_open, …)`.
    public static func open(_ pid: pid_t) throws(SystemError) -> OwnedDescriptor {
        OwnedDescriptor(adopting: try retryingInterrupts("pidfd_open") { tether_pidfd_open(pid, 0) })
    }

    /// Sends `signal` through the pidfd (never to a recycled pid).
    public static func sendSignal(_ pidfd: Int32, _ signal: Int32) throws(SystemError) {
        try retryingInterrupts("pidfd_send_signal") { tether_pidfd_send_signal(pidfd, signal) }
    }

    /// The process's identity for the life of the system: the pidfd's inode. On Linux ≥ 6.9
    /// pidfds live on pidfs, which gives every process (every `struct pid`) an inode number of its
    /// own that is never reused, so two pidfds name the same process exactly when their inodes are
    /// equal — a recycled pid gets a new inode. nil where the kernel lacks pidfs (see
    /// `hasUniqueIdentities`).
    public static func identity(_ pidfd: Int32) -> UInt64? {
        guard hasUniqueIdentities else { return nil }
        var st = stat()
        guard fstat(pidfd, &st) == 0 else { return nil }
        return UInt64(st.st_ino)
    }

    /// Whether pidfd inodes identify processes (pidfs): probed once, by comparing the inodes of
    /// pidfds of two different processes (before 6.9 every pidfd shares one anonymous inode).
    public static let hasUniqueIdentities: Bool = {
        guard let mine = try? open(getpid()), let init1 = try? open(1) else { return false }
        var a = stat(), b = stat()
        guard fstat(mine.raw, &a) == 0, fstat(init1.raw, &b) == 0 else { return false }
        return a.st_ino != b.st_ino
    }()

    /// True once the process has exited.
    public static func hasExited(_ pidfd: Int32) -> Bool {
        (try? waitReadable(pidfd, timeoutMillis: 0)) ?? true
    }
}
