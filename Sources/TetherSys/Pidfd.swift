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

    /// True once the process has exited.
    public static func hasExited(_ pidfd: Int32) -> Bool {
        (try? waitReadable(pidfd, timeoutMillis: 0)) ?? true
    }
}
