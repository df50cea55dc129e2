import Glibc
import Logging

/// What the daemon sets on its own process, as a service manager would for a system service.
public enum ServiceProcess {
    /// The daemon's `oom_score_adj` (−1000 … 1000). Every client's device, and every client's
    /// mirrored memory mapping, lives in this one process, so the OOM killer should pick a
    /// client (whose mirrored pages are charged to it) long before it picks the daemon; −500
    /// keeps it killable in a true emergency (−1000 would exempt it), like `OOMScoreAdjust=-500`
    /// in a systemd unit. Lowering it needs `CAP_SYS_RESOURCE`; without it the value stays and a
    /// notice says so.
    public static let oomScoreAdjust = -500

    /// SIGPIPE ignored (a closed log pipe or peer is an error to handle, not a reason to die);
    /// SIGHUP ignored (the daemon has no configuration file to reload and logs to standard
    /// error, so a hang-up of its terminal must not end it); the fd soft limit raised to the hard
    /// limit (each connection, pidfd and region holds fds); `oomScoreAdjust` set.
    public static func prepare(logger: Logger) {
        signal(SIGPIPE, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        }
        let value = "\(oomScoreAdjust)\n"
        let fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC)
        let written = fd >= 0 ? value.withCString { write(fd, $0, strlen($0)) } : -1
        if fd >= 0 { close(fd) }
        if written < 0 {
            logger.notice("oom_score_adj left as it was (setting \(oomScoreAdjust) needs CAP_SYS_RESOURCE)")
        }
    }
}
