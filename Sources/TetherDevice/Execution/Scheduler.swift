import Glibc
import TetherCore
import TetherSys

/// Runs device threads of many address spaces on one backend, slice by slice, in the order the
/// `RunQueue` policy decides — shaped like the kernel's DRM scheduler: one scheduler per hardware
/// queue, a worker that pushes jobs (slices), a cap on jobs in flight (one).
///
/// Killing never waits for more than the slice in flight: queued slices are dropped at once, the
/// control word tells device code to stop, and the killer waits for the worker to hand the thread
/// back. Every mutable field here is protected by `monitor`.
public final class Scheduler: @unchecked Sendable {
    public let backend: any ComputeBackend
    private let monitor = Monitor()
    private var queue: RunQueue
    private var threads: [ThreadID: DeviceThread] = [:]
    private var stopping = false
    private var workersRunning = 0
    /// Device time per address space, kept past its threads' end (for `ps`).
    private var spaceNanos: [SpaceID: UInt64] = [:]
    private var slices = 0

    /// Slices run since start (for benchmarks).
    public var slicesRun: Int { monitor.withLock { slices } }

    /// - Parameters:
    ///   - quantumNanos: the target length of one slice (default 2 ms).
    ///   - slicesInFlight: how many slices may run at once (one worker each). One keeps kill latency
    ///     lowest on a backend that already uses every core for one dispatch.
    /// Where contexts of ended threads go, for the next thread of the same kernel.
    public let contexts: ContextPool

    public init(backend: any ComputeBackend, quantumNanos: UInt64 = 2_000_000, slicesInFlight: Int = 1) {
        self.backend = backend
        contexts = ContextPool(backend: backend)
        queue = RunQueue(quantumNanos: quantumNanos)
        workersRunning = max(1, slicesInFlight)
        for i in 0..<workersRunning {
            startThread(name: "tether-sched\(i)") { [self] in workerLoop() }
        }
    }

    /// Queues a thread. Its completion is reported through `onCompletion`.
    public func submit(_ thread: DeviceThread) throws(TetherError) {
        try monitor.withLock { () throws(TetherError) in
            guard !stopping else { throw TetherError(.deviceLost, "the device is shutting down") }
            threads[thread.id] = thread
            queue.add(thread.id, space: thread.space, priority: thread.priority, groups: thread.groups,
                      persistent: thread.persistentNanos > 0)
            monitor.broadcast()
        }
    }

    /// Calls `body` once the thread has ended (at once if it already has).
    public func onCompletion(_ thread: DeviceThread, _ body: @escaping @Sendable (ThreadOutcome) -> Void) {
        let done: ThreadOutcome? = monitor.withLock {
            if let o = thread.outcome { return o }
            thread.waiters.append(body)
            return nil
        }
        if let done { body(done) }
    }

    /// Blocks until the thread ends, or until `timeoutNanos` passes (nil then).
    public func wait(_ thread: DeviceThread, timeoutNanos: UInt64? = nil) -> ThreadOutcome? {
        let deadline = timeoutNanos.map { monotonicNanos() + $0 }
        return monitor.withLock {
            while thread.outcome == nil {
                if !monitor.wait(untilNanos: deadline), let deadline, monotonicNanos() >= deadline { break }
            }
            return thread.outcome
        }
    }

    /// Kills a thread and returns once none of its work runs any more. False if it had ended.
    @discardableResult
    public func kill(_ thread: DeviceThread) -> Bool {
        kill([thread]) > 0
    }

    /// Kills threads (an address space's, at teardown): drops their queued slices at once, sets
    /// their control words, and waits only for slices in flight. Returns how many were alive.
    @discardableResult
    public func kill(_ victims: [DeviceThread]) -> Int {
        var finished: [(DeviceThread, ThreadOutcome, [@Sendable (ThreadOutcome) -> Void])] = []
        let alive: Int = monitor.withLock {
            var alive = 0
            for t in victims where t.outcome == nil {
                alive += 1
                t.killRequested = true
                t.context.signal(KernelABI.controlKill)
                queue.remove(t.id)
                if !t.inFlight, let f = complete(t, .killed, nil) { finished.append(f) }
            }
            if victims.contains(where: { $0.outcome == nil }) {
                // Waiting for a slice in flight: lend our priority to the device threads running it.
                DeviceThreads.withPriorityLent {
                    while victims.contains(where: { $0.outcome == nil }) { monitor.wait() }
                }
            }
            return alive
        }
        for (_, outcome, waiters) in finished { waiters.forEach { $0(outcome) } }
        return alive
    }

    /// Device time consumed by an address space (live and ended threads).
    public func deviceNanos(ofSpace space: SpaceID) -> UInt64 {
        monitor.withLock { spaceNanos[space, default: 0] }
    }

    public func forgetSpace(_ space: SpaceID) {
        monitor.withLock {
            _ = queue.removeSpace(space)
            spaceNanos[space] = nil
        }
    }

    /// Kills everything and stops the workers.
    public func shutdown() {
        let all = monitor.withLock { () -> [DeviceThread] in
            stopping = true
            return Array(threads.values)
        }
        kill(all)
        monitor.withLock {
            monitor.broadcast()
            while workersRunning > 0 { monitor.wait() }
        }
    }

    // MARK: The worker

    /// Marks `t` ended (lock held); returns what must be called outside the lock.
    private func complete(_ t: DeviceThread, _ state: ThreadState, _ error: TetherError?)
        -> (DeviceThread, ThreadOutcome, [@Sendable (ThreadOutcome) -> Void])? {
        guard t.outcome == nil else { return nil }
        t.state = state
        let outcome = ThreadOutcome(state: state, error: error, deviceNanos: t.deviceNanos)
        t.outcome = outcome
        // Nothing runs on the context after this point: a kill only signals threads without an
        // outcome, and the worker reads the fault before completing.
        if !t.inFlight { contexts.recycle(t.context, program: t.program) }
        let waiters = t.waiters
        t.waiters = []
        threads[t.id] = nil
        queue.remove(t.id)
        monitor.broadcast()
        return (t, outcome, waiters)
    }

    /// The worker belongs to the control plane: it hands slices to the device (lavapipe's
    /// threads, the software pool) and waits, but executes no device code itself.
    private func workerLoop() {
        monitor.withLock {
            while true {
                if stopping && queue.isEmpty { break }
                guard let pick = queue.pick(), let thread = threads[pick.thread] else {
                    monitor.wait()
                    continue
                }
                thread.inFlight = true
                thread.state = .running
                let start = monotonicNanos()
                if thread.firstStartNanos == 0 { thread.firstStartNanos = start }
                var failure: TetherError?
                monitor.unlocked {
                    do {
                        try thread.context.runSlice(args: thread.args, regions: thread.regions.snapshot,
                                                    groupBase: pick.groupBase, groupCount: pick.groupCount,
                                                    groupTotal: thread.groups, round: pick.round)
                    } catch let error as TetherError {
                        failure = error
                    } catch {
                        failure = TetherError(.deviceError, "\(error)")
                    }
                }
                let end = monotonicNanos()
                let nanos = end - start
                slices += 1
                thread.inFlight = false
                thread.deviceNanos &+= nanos
                spaceNanos[thread.space, default: 0] &+= nanos
                let progress = queue.account(pick, nanos: nanos)
                let fault = thread.context.fault
                var finished: (DeviceThread, ThreadOutcome, [@Sendable (ThreadOutcome) -> Void])?
                if thread.killRequested {
                    finished = complete(thread, .killed, nil)
                } else if let failure {
                    finished = complete(thread, .failed, failure)
                } else if fault.code != KernelABI.faultNone {
                    finished = complete(thread, .faulted, TetherError(.addressFault,
                        "device thread \(thread.id) used address 0x\(String(fault.address, radix: 16)), outside every mirrored region"))
                } else if thread.persistentNanos > 0 {
                    if end - thread.firstStartNanos >= thread.persistentNanos {
                        finished = complete(thread, .finished, nil)
                    }
                } else if progress == .gridComplete {
                    finished = complete(thread, .finished, nil)
                }
                if let (_, outcome, waiters) = finished, !waiters.isEmpty {
                    monitor.unlocked { waiters.forEach { $0(outcome) } }
                }
            }
            workersRunning -= 1
            monitor.broadcast()
        }
    }
}

extension Monitor {
    /// Runs `body` with the lock released (the caller holds it), then takes it back.
    func unlocked(_ body: () -> Void) {
        unlock()
        body()
        lock()
    }
}
