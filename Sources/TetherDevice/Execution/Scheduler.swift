import Glibc
import Synchronization
import TetherCore
import TetherSys

/// Runs device threads of many address spaces on one backend, slice by slice, in the order the
/// `RunQueue` policy decides — shaped like the kernel's DRM scheduler: one scheduler per hardware
/// queue, a worker that pushes jobs (slices), a cap on jobs in flight (`slicesInFlight`: the next
/// slice waits on the device while one runs, so the device does not idle between slices).
///
/// Killing never waits for more than the slices in flight: queued slices are dropped at once, the
/// control word tells device code to stop (the workgroups of a slice still waiting return at their
/// first poll), and the killer waits for the worker to hand the thread back. Every mutable field
/// here is protected by `monitor`.
public final class Scheduler: @unchecked Sendable {
    public let backend: any ComputeBackend
    /// At most this many slices are on the device at once.
    public let slicesInFlight: Int
    /// Whether a small awaited slice may run on the worker when the device is otherwise idle
    /// (asked for, and the backend can).
    public let runsSmallSlicesOnWorker: Bool
    /// How long (ns) an awaited slice may be expected to take to run on the thread that submits
    /// it (`submit(_:runHere:)`; the backend's `submitterSliceNanos` unless told otherwise).
    public let submitterSliceNanos: Double
    /// Whether a known-tiny awaited slice may run on the thread that submits it (asked for, and
    /// the backend can).
    private let runsOnSubmitter: Bool
    /// A slice that held its submitter longer than this (ns) overran: twice what it may be
    /// expected to take, and at least 200 µs (10× on software). Twice, not more: work that costs
    /// more once its pages are cold (a client that gives them back before each run) stays under
    /// a larger factor, and its measured cost decays back within ~10 runs (a review measured
    /// 0.5 ms stalls of the event loop every ~11 runs at 10× on Vulkan). The daemon charges
    /// overruns to their user (`OverrunBudget`).
    public let submitterOverrunNanos: UInt64
    /// The longest a submitter waits for the end of a slice it started where the device's own
    /// threads run it (the backend's `submitterWaitNanos`); past that the worker finishes it and
    /// the submitter — the daemon's event loop, whose other clients wait meanwhile — goes on.
    public let submitterWaitNanos: UInt64
    /// The worker's time for known-tiny slices nobody waits for yet (`DeviceThread.tinySlicesOnWorker`).
    private var tinySliceBudget = TinySliceBudget()
    /// Slices a submitter started and handed to the worker to finish (`submitterWaitNanos`).
    private var handedToWorker: [Started] = []
    /// Whether even a slice started on the caller runs on the device's own threads (a backend
    /// that never runs one on the caller, Vulkan). Then a submitter's wait for its slice can be
    /// bounded (`submitterWaitNanos`), and the worker polls for work (`workerPollNanos`).
    private let devicesOwnThreadsRunEverySlice: Bool
    /// Where the device's own threads run every slice, the worker, its device idle, polls for the
    /// next submission this long after a slice ends instead of sleeping at once: every slice the
    /// submitter does not run goes through it. A client doing round trips submits its next
    /// thread within tens of µs of the last one's end, and waking a sleeping worker costs
    /// 30–58 µs on the VMs here. Not where small slices run on the caller: there the device's own
    /// threads need the CPU the worker would poll on.
    static let workerPollNanos: UInt64 = 100_000
    /// Threads handed to the worker so far, for its poll.
    private let submissions = Atomic<UInt64>(0)
    /// Started slices that went to the device's own threads (every one but those the worker may
    /// run itself), read without the lock by the event loop: while this is 0, polling on the event
    /// loop takes no CPU from device work (`RingServer.sleepTimeout`).
    private let handedOver = Atomic<Int>(0)
    /// How many address spaces have device threads queued or running (`RunQueue.activeSpaces`),
    /// read without the lock.
    private let activeSpaceCount = Atomic<Int>(0)
    /// Whether device threads of more than one address space are queued or running: a space
    /// then has others to share the device with.
    public var isShared: Bool { activeSpaceCount.load(ordering: .relaxed) > 1 }
    /// Whether any address space has device threads queued or running.
    public var hasWork: Bool { activeSpaceCount.load(ordering: .relaxed) > 0 }
    /// Whether `space` has device threads queued or running.
    public func hasWork(of space: SpaceID) -> Bool { monitor.withLock { queue.isActive(space) } }
    /// Whether the device's own threads have slices of this scheduler to run.
    public var deviceThreadsBusy: Bool { handedOver.load(ordering: .relaxed) > 0 }
    private let monitor = Monitor()
    private var queue: RunQueue {
        // No `oldValue`: the queue is still modified in place (SE-0268).
        didSet { activeSpaceCount.store(queue.activeSpaces, ordering: .relaxed) }
    }
    private var threads: [ThreadID: DeviceThread] = [:]
    private var stopping = false
    private var workerRunning = true
    private var slices = 0
    /// Slices started and not finished (by the worker or a submitter).
    private var inFlight = 0
    /// Callers of `wait` and `kill` sleeping until a thread has its outcome.
    private var outcomeWaiters = 0
    private var peakStarted = 0

    /// Slices run since start (for benchmarks).
    public var slicesRun: Int { monitor.withLock { slices } }
    /// The most slices that were on the device at once.
    public var peakSlicesInFlight: Int { monitor.withLock { peakStarted } }

    /// Where contexts of ended threads go, for the next thread of the same kernel.
    public let contexts: ContextPool

    /// - Parameters:
    ///   - quantumNanos: the target length of one slice (default 2 ms).
    ///   - slicesInFlight: the cap on slices on the device at once (default: the backend's
    ///     `defaultSlicesInFlight`), at most its `sliceDepth`.
    ///   - runsSmallSlicesOnWorker: whether the worker may let the backend run a small slice on
    ///     the worker itself when someone already waits for it (see `start()`), and a submitter
    ///     one it waits for (`submit(_:runHere:)`).
    ///   - submitterSliceNanos: overrides the backend's `submitterSliceNanos` (ns; 0: never).
    ///   - submitterWaitNanos: overrides the backend's `submitterWaitNanos` (ns).
    public init(backend: any ComputeBackend, quantumNanos: UInt64 = 2_000_000, slicesInFlight: Int? = nil,
                runsSmallSlicesOnWorker: Bool = true, submitterSliceNanos: Double? = nil, submitterWaitNanos: UInt64? = nil) {
        self.runsSmallSlicesOnWorker = runsSmallSlicesOnWorker && backend.callerSliceGroups > 0
        self.submitterSliceNanos = submitterSliceNanos ?? backend.submitterSliceNanos
        runsOnSubmitter = runsSmallSlicesOnWorker && self.submitterSliceNanos > 0
        submitterOverrunNanos = max(200_000, UInt64(2 * self.submitterSliceNanos))
        self.submitterWaitNanos = submitterWaitNanos ?? backend.submitterWaitNanos
        devicesOwnThreadsRunEverySlice = backend.callerSliceGroups == 0
        self.backend = backend
        self.slicesInFlight = min(max(1, slicesInFlight ?? backend.defaultSlicesInFlight), backend.sliceDepth)
        contexts = ContextPool(backend: backend)
        queue = RunQueue(quantumNanos: quantumNanos, slicesPerThread: self.slicesInFlight)
        startThread(name: "tether-sched") { [self] in workerLoop() }
    }

    /// The longest a slice may be expected to take (its measured cost per group) to run on the
    /// thread that starts it, where that thread runs its groups itself (the software backend:
    /// its `submitterSliceNanos`, and the worker's own small slices): the daemon's event loop,
    /// whose other clients wait meanwhile. A tenth of the ~200 µs a loaded 2-core VM here takes
    /// to wake a sleeping thread in another process and back.
    public static let maxNanosOnSubmitter = 20_000.0

    /// Queues a thread. Its completion is reported through `onCompletion`.
    ///
    /// `runHere`: the caller may run the thread's one slice itself, before this returns, instead
    /// of waking the worker — when the device has nothing else queued or in flight, someone
    /// already waits for the thread, and it is a built-in whose cost does not depend on memory
    /// and that its space ran before within the backend's `submitterSliceNanos` (software: one
    /// group run inline; Vulkan: recorded, submitted and its fence waited for here). A tiny `run`
    /// then costs no hand-off between threads at all (the event loop would otherwise wake the
    /// worker, and the worker it: ~20 µs on software, 50–100 µs on lavapipe here). Killed like
    /// any slice on the worker.
    ///
    /// The caller waits for the slice's end at most `submitterWaitNanos`; past that the worker
    /// finishes it.
    ///
    /// - Returns: how long it held the caller (ns: from its start to its end being accounted, or
    ///   to its hand-over to the worker after `submitterWaitNanos`), or nil when it went to the
    ///   worker at once.
    @discardableResult
    public func submit(_ thread: DeviceThread, runHere: Bool = false) throws(TetherError) -> UInt64? {
        try monitor.withLock { () throws(TetherError) -> UInt64? in
            guard !stopping else { throw TetherError(.deviceLost, "the device is shutting down") }
            // Killed between its registration and now (its space's teardown runs on another
            // thread): it has its outcome and its context is back in the pool; nothing to run.
            guard thread.outcome == nil else { return nil }
            threads[thread.id] = thread
            thread.countedQueued = true
            thread.queued.add(1)
            queue.add(thread.id, space: thread.space, priority: thread.priority, groups: thread.groups,
                      persistent: thread.persistentNanos > 0, unsliced: thread.program.runsUnsliced,
                      costKey: thread.costKey)
            guard runHere && mayRunOnSubmitter(thread), var slice = start(onSubmitter: true) else {
                submissions.add(1, ordering: .relaxed)
                monitor.broadcast()
                return nil
            }
            // The device's own threads run it (Vulkan) and have not finished it in time: the
            // worker waits for it instead.
            var done = true
            if slice.failure == nil && devicesOwnThreadsRunEverySlice {
                let context = slice.thread.context, nanos = submitterWaitNanos
                monitor.unlocked { done = context.waitForOldestSlice(nanos: nanos) }
            }
            // Not to a worker that has stopped (`shutdown()` from another thread meanwhile): no
            // one would finish the slice, and the kill waiting for it would never return.
            if !done && workerRunning {
                slice.handedOver = true
                handedOver.add(1, ordering: .relaxed)
                handedToWorker.append(slice)
                submissions.add(1, ordering: .relaxed)
                monitor.broadcast()
                return monotonicNanos() - slice.startNanos
            }
            // It ran here; had the backend handed it to its threads after all (a pool that is
            // stopping), this waits for it.
            finishOnCaller(&slice)
            return monotonicNanos() - slice.startNanos
        }
    }

    /// See `submit(_:runHere:)` (lock held).
    private func mayRunOnSubmitter(_ thread: DeviceThread) -> Bool {
        runsOnSubmitter && inFlight == 0 && queue.threadCount == 1 && !thread.waiters.isEmpty
            && thread.persistentNanos == 0
            && (backend.callerSliceGroups == 0 || thread.groups <= UInt32(backend.callerSliceGroups))
            && isKnownTiny(thread, groups: thread.groups, within: submitterSliceNanos)
    }

    /// Whether `groups` groups of the thread are known to take at most `nanos` (default
    /// `maxNanosOnSubmitter`): work whose cost is in its arguments, measured before (lock held).
    private func isKnownTiny(_ thread: DeviceThread, groups: UInt32, within nanos: Double = maxNanosOnSubmitter) -> Bool {
        guard thread.costIsInArguments, let cost = queue.nanosPerGroup(of: thread.id) else { return false }
        return cost * Double(groups) <= nanos
    }

    /// Finishes a slice that ran on the calling thread (lock held; released meanwhile).
    private func finishOnCaller(_ slice: inout Started) {
        var measured: UInt64?
        if slice.failure == nil {
            monitor.unlocked {
                do throws(TetherError) { measured = try slice.thread.context.finishSlice() } catch { slice.failure = error }
            }
        }
        let end = monotonicNanos()
        finish(slice, nanos: measured ?? end - slice.startNanos, held: end - slice.startNanos, end: end)
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
            outcomeWaiters += 1
            defer { outcomeWaiters -= 1 }
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
        var finished: [(ThreadOutcome, [@Sendable (ThreadOutcome) -> Void])] = []
        let alive: Int = monitor.withLock {
            var alive = 0
            for t in victims where t.outcome == nil {
                alive += 1
                t.killRequested = true
                t.context.signal(KernelABI.controlKill)
                queue.remove(t.id)
                if t.slicesInFlight == 0, let f = complete(t, .killed, nil) { finished.append(f) }
            }
            // Where the backend can tell, a victim is done once its own slices stopped — not when
            // the worker gets to them behind another thread's slice.
            let inFlight = victims.filter { $0.outcome == nil }
            var stopped: [DeviceThread] = []
            if !inFlight.isEmpty {
                monitor.unlocked { stopped = inFlight.filter { $0.context.waitUntilStopped() } }
            }
            for t in stopped {
                if let f = complete(t, .killed, nil) { finished.append(f) }
            }
            if victims.contains(where: { $0.outcome == nil }) {
                // Waiting for the worker: lend our priority to the device threads running the slices.
                DeviceThreads.withPriorityLent {
                    outcomeWaiters += 1
                    defer { outcomeWaiters -= 1 }
                    while victims.contains(where: { $0.outcome == nil }) { monitor.wait() }
                }
            }
            return alive
        }
        for (outcome, waiters) in finished { waiters.forEach { $0(outcome) } }
        return alive
    }

    /// Device time consumed by an address space (live and ended threads).
    public func deviceNanos(ofSpace space: SpaceID) -> UInt64 {
        monitor.withLock { queue.deviceNanos(ofSpace: space) ?? 0 }
    }

    public func forgetSpace(_ space: SpaceID) {
        monitor.withLock {
            _ = queue.removeSpace(space)
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
            while workerRunning { monitor.wait() }
        }
    }

    // MARK: The worker

    /// Marks `t` ended (lock held); returns what must be called outside the lock.
    private func complete(_ t: DeviceThread, _ state: ThreadState, _ error: TetherError?)
        -> (ThreadOutcome, [@Sendable (ThreadOutcome) -> Void])? {
        guard t.outcome == nil else { return nil }
        t.leaveQueued()
        t.state = state
        let outcome = ThreadOutcome(state: state, error: error, deviceNanos: t.deviceNanos)
        t.outcome = outcome
        // Nothing runs on the context after this point: a kill only signals threads without an
        // outcome, and the worker reads the fault before completing. With slices still to hand
        // back (a kill that saw them stop), the worker recycles it after the last one.
        if t.slicesInFlight == 0 { contexts.recycle(t.context, program: t.program) }
        let waiters = t.waiters
        t.waiters = []
        threads[t.id] = nil
        queue.remove(t.id)
        // Only `wait` and `kill` sleep for an outcome. Waking the worker for nothing costs a
        // cross-CPU wake-up (5–10 µs of the caller's time on a VM) per thread.
        if outcomeWaiters > 0 { monitor.broadcast() }
        return (outcome, waiters)
    }

    /// A slice on the device.
    private struct Started {
        var pick: RunQueue.Pick
        var thread: DeviceThread
        var startNanos: UInt64
        var failure: TetherError?
        /// Counted in `handedOver` until finished.
        var handedOver = false
    }

    /// The worker belongs to the control plane: it hands slices to the device (lavapipe's
    /// threads, the software pool) and waits. It executes device code itself only for one small
    /// slice someone already waits for (`start()`, `runsSmallSlicesOnWorker`).
    ///
    /// It keeps up to `slicesInFlight` slices started, then waits for the oldest. A slice's device
    /// time is what the backend measured, else — the device runs them in order — from its start,
    /// or the previous one's end if later, to its end.
    private func workerLoop() {
        var started: [Started] = []
        var lastEnd: UInt64 = 0
        // Where this thread could not come back to its real-time class after a lowered poll
        // (`PollingClass`), it waits at once, as on the other backends.
        let polling = devicesOwnThreadsRunEverySlice ? PollingClass() : nil
        monitor.withLock {
            while true {
                // Started by a submitter, which stopped waiting for them; they ran before anything
                // this loop starts now.
                started.insert(contentsOf: handedToWorker, at: 0)
                handedToWorker.removeAll()
                while started.count < slicesInFlight, var slice = start() {
                    guard slice.handedOver || slice.failure != nil else {
                        // It ran on this thread: done already, whatever else is in flight.
                        finishOnCaller(&slice)
                        continue
                    }
                    started.append(slice)
                    peakStarted = max(peakStarted, started.count)
                }
                guard !started.isEmpty else {
                    if stopping && queue.isEmpty { break }
                    if let polling, monotonicNanos() &- lastEnd < Self.workerPollNanos {
                        // Lowered and yielding: a client on this CPU needs it to submit. Whatever
                        // was broadcast meanwhile (a submission, a stop) reached no one waiting,
                        // so the loop looks again; past the window it waits.
                        let seen = submissions.load(ordering: .relaxed)
                        monitor.unlocked {
                            _ = polling.run {
                                spinUntil(nanos: Self.workerPollNanos, yielding: true) { submissions.load(ordering: .relaxed) != seen }
                            }
                        }
                        continue
                    }
                    monitor.wait()
                    continue
                }
                var slice = started.removeFirst()
                var measured: UInt64?
                if slice.failure == nil {
                    monitor.unlocked {
                        do throws(TetherError) { measured = try slice.thread.context.finishSlice() } catch { slice.failure = error }
                    }
                }
                let end = monotonicNanos()
                let held = end - max(slice.startNanos, lastEnd)
                finish(slice, nanos: measured ?? held, held: held, end: end)
                lastEnd = end
            }
            workerRunning = false
            monitor.broadcast()
        }
    }

    /// Picks the next slice and starts it (lock held; released while the backend starts it).
    /// When someone already waits for the thread's end (a `run` or `join`) and the slice is
    /// known to be tiny (`isKnownTiny`), the backend may run it on this thread
    /// (`SliceLaunch.mayRunOnCaller`) and save the hand-offs to its threads and back — tens of µs
    /// of wake-ups per tiny device thread on a small VM — even beside other spaces' slices on the
    /// device's threads: the slice is bounded (`callerSliceGroups`, `maxNanosOnSubmitter`),
    /// charged to its space like any other, and it keeps a client's round trip from queueing
    /// behind a flood of other work in the pool (measured: `tether bench load`'s dispatch beside a
    /// spawn flood, 3–4× → ~1× its time alone). A stream of spawns
    /// nobody waits for yet is handed over: the worker is the control plane, above device work,
    /// and must not take the CPU a submitter needs (measured: inline slices for a stream of spawns
    /// halved its rate on 2 cores) — unless it was spawned beside another client
    /// (`DeviceThread.tinySlicesOnWorker`).
    private func start(onSubmitter: Bool = false) -> Started? {
        guard let pick = queue.pick(), let thread = threads[pick.thread] else { return nil }
        inFlight += 1
        thread.slicesInFlight += 1
        thread.state = .running
        let now = monotonicNanos()
        if thread.firstStartNanos == 0 { thread.firstStartNanos = now }
        thread.leaveQueued()
        var slice = Started(pick: pick, thread: thread, startNanos: now)
        let unawaited = !onSubmitter && thread.waiters.isEmpty
        let launch = SliceLaunch(args: thread.args, regions: thread.regions.snapshot, groupBase: pick.groupBase,
                                 groupCount: pick.groupCount, groupTotal: thread.groups, round: pick.round,
                                 mayRunOnCaller: onSubmitter || runsSmallSlicesOnWorker
                                    && (!unawaited || thread.tinySlicesOnWorker && tinySliceBudget.allows(at: now))
                                    && pick.groupCount <= UInt32(backend.callerSliceGroups) && isKnownTiny(thread, groups: pick.groupCount))
        if !launch.mayRunOnCaller {
            slice.handedOver = true
            handedOver.add(1, ordering: .relaxed)
        }
        monitor.unlocked {
            do throws(TetherError) { try thread.context.startSlice(launch) } catch { slice.failure = error }
        }
        // On software a slice allowed on the caller has run by now, unless the pool took it.
        if unawaited && launch.mayRunOnCaller { tinySliceBudget.charge(monotonicNanos() - now) }
        if let failure = slice.failure, thread.ending == nil {
            thread.ending = (.failed, failure)
            queue.remove(thread.id)
        }
        return slice
    }

    /// Accounts a slice that is done and decides how its thread goes on (lock held).
    private func finish(_ slice: Started, nanos: UInt64, held: UInt64, end: UInt64) {
        if slice.handedOver { handedOver.subtract(1, ordering: .relaxed) }
        let thread = slice.thread
        let completedBefore = thread.outcome != nil
        slices += 1
        inFlight -= 1
        thread.slicesInFlight -= 1
        thread.deviceNanos &+= nanos
        let progress = queue.account(slice.pick, nanos: nanos, heldNanos: held)
        if completedBefore {
            if thread.slicesInFlight == 0 { contexts.recycle(thread.context, program: thread.program) }
            return
        }
        let fault = thread.context.fault
        if thread.ending == nil {
            if thread.killRequested {
                thread.ending = (.killed, nil)
            } else if let failure = slice.failure {  // finishing failed
                thread.ending = (.failed, failure)
            } else if fault.code != KernelABI.faultNone {
                thread.ending = (.faulted, TetherError(.addressFault,
                    "device thread \(thread.id) used address 0x\(String(fault.address, radix: 16)), outside every mirrored region"))
            } else if thread.persistentNanos > 0 ? end - thread.firstStartNanos >= thread.persistentNanos
                                                 : progress == .gridComplete {
                thread.ending = (.finished, nil)
            }
            // No more slices once it is ending; the one still in flight, if any, finishes first.
            if thread.ending != nil { queue.remove(thread.id) }
        }
        guard let (state, error) = thread.ending, thread.slicesInFlight == 0,
              let (outcome, waiters) = complete(thread, state, error), !waiters.isEmpty else { return }
        monitor.unlocked { waiters.forEach { $0(outcome) } }
    }
}

