import CTetherLinux
import Glibc
import TetherSys
import Testing

/// The scheduler's worker polls for the next submission lowered out of `SCHED_FIFO`
/// (`PollingClass`); whatever the privileges, it must end the poll in the class it started in.
/// Each case runs in a forked child: it changes its own class, limits and uid.
@Suite struct ControlPlaneClassTests {
    /// Exit codes of the children that mean "this machine cannot set the case up".
    static let noFIFO: Int32 = 10, noSetup: Int32 = 11

    @Test("A control-plane thread polls in SCHED_OTHER and is back in SCHED_FIFO after the poll")
    func pollIsLoweredAndRestored() throws {
        let child = forkChild {
            enterControlPlane()
            guard sched_getscheduler(0) == SCHED_FIFO else { return Self.noFIFO }
            guard let polling = PollingClass() else { return 3 }
            let during = polling.run { sched_getscheduler(0) }
            guard during == SCHED_OTHER else { return 1 }
            return sched_getscheduler(0) == SCHED_FIFO ? 0 : 2
        }
        let status = waitChild(child, timeoutSeconds: 10)
        if status == Self.noFIFO { print("skipped: SCHED_FIFO is not granted here"); return }
        #expect(status == 0)
    }

    /// A daemon started unprivileged in `SCHED_FIFO` (a service manager's `CPUSchedulingPolicy=fifo`
    /// with `User=`, RLIMIT_RTPRIO 0) may leave SCHED_FIFO but never come back: lowering its
    /// worker for one poll would leave it in SCHED_OTHER for good, below device threads lent
    /// priority and beside every client.
    @Test("A thread that could not raise itself back to SCHED_FIFO is not lowered for a poll")
    func pollWithoutWayBackStaysFIFO() throws {
        guard getuid() == 0 else {
            print("skipped: dropping privileges while keeping SCHED_FIFO needs root to set it up")
            return
        }
        let child = forkChild {
            var param = sched_param(sched_priority: 5)
            guard sched_setscheduler(0, SCHED_FIFO, &param) == 0 else { return Self.noFIFO }
            var none = rlimit(rlim_cur: 0, rlim_max: 0)
            // Leaving uid 0 drops every capability, CAP_SYS_NICE included.
            guard setrlimit(__rlimit_resource_t(__RLIMIT_RTPRIO.rawValue), &none) == 0,
                  setgid(65534) == 0, setuid(65534) == 0 else { return Self.noSetup }
            enterControlPlane()  // FIFO 5 → 2: lowering a real-time priority needs no privilege
            guard sched_getscheduler(0) == SCHED_FIFO else { return 1 }
            guard PollingClass() == nil else { return 3 }  // the scheduler's worker then waits instead
            return sched_getscheduler(0) == SCHED_FIFO ? 0 : 2
        }
        let status = waitChild(child, timeoutSeconds: 10)
        if status == Self.noFIFO { print("skipped: SCHED_FIFO is not granted here"); return }
        if status == Self.noSetup { print("skipped: could not drop to uid 65534 with RLIMIT_RTPRIO 0"); return }
        #expect(status == 0, "the thread was left outside SCHED_FIFO (status \(status.map(String.init) ?? "none"))")
    }
}
