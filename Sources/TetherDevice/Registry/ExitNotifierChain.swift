import TetherCore
import TetherSys

/// The exit notifier chain — the user-space twin of the notifier chain the seed's patch puts in
/// `mmput`: ordered subsystem handlers run when an address space dies, on a teardown executor
/// thread, never on the daemon's event loop.
///
/// Order (each step timed into the space's `TeardownTimeline`):
/// 1. stop admitting work — done by the caller at notice time (`Registry.beginTeardown`), so the
///    very next request on any connection of the space is refused;
/// 2. drop queued slices and signal in-flight device threads through their control words, then
///    wait for them (`Scheduler.kill`) — `quiesced`;
/// 3. free device imports, unmap regions, close memfds;
/// 4. remove the registry entries and record the timeline — `released`;
/// 5. the subscribers' handlers (the daemon orphans the space's connections, logs).
///
/// Spaces noticed together are torn down together: step 2 kills all their threads in one call,
/// so a burst of 64 dying processes waits for the slice in flight once, not 64 times.
/// `TETHER_TRACE_TEARDOWN=1`: the daemon prints each teardown batch's step timings on stderr.
let trace = environment("TETHER_TRACE_TEARDOWN") != nil

public final class ExitNotifierChain: @unchecked Sendable {
    public typealias Handler = @Sendable (AddressSpace, TeardownTimeline) -> Void

    struct Request {
        var space: AddressSpace
        var reason: String
        var done: (@Sendable (TeardownTimeline) -> Void)?
    }

    let registry: Registry
    let scheduler: Scheduler
    private let monitor = Monitor()
    private var pending: [Request] = []
    private var handlers: [(String, Handler)] = []
    private var stopped = false
    private var running = false

    public init(registry: Registry, scheduler: Scheduler) {
        self.registry = registry
        self.scheduler = scheduler
        startThread(name: "tether-teardown") { [self] in loop() }
    }

    /// Subscribes a handler that runs after the space is released, in registration order.
    public func subscribe(_ name: String, _ handler: @escaping Handler) {
        monitor.withLock { handlers.append((name, handler)) }
    }

    /// Queues the teardown of a space whose admission was already stopped by
    /// `Registry.beginTeardown`. `done` runs on the executor once the space is released.
    public func enqueue(_ space: AddressSpace, reason: String, done: (@Sendable (TeardownTimeline) -> Void)? = nil) {
        monitor.withLock {
            pending.append(Request(space: space, reason: reason, done: done))
            monitor.broadcast()
        }
    }

    /// Blocks until every queued teardown has finished (or `timeoutNanos` passed).
    public func drain(timeoutNanos: UInt64 = 10_000_000_000) {
        let deadline = monotonicNanos() + timeoutNanos
        monitor.withLock {
            while (!pending.isEmpty || running) && monotonicNanos() < deadline { monitor.wait(untilNanos: deadline) }
        }
    }

    public func stop() {
        drain()
        monitor.withLock {
            stopped = true
            monitor.broadcast()
        }
    }

    private func loop() {
        while true {
            let (batch, subscribers): ([Request], [(String, Handler)]) = monitor.withLock {
                while pending.isEmpty && !stopped { monitor.wait() }
                let b = pending
                pending = []
                running = !b.isEmpty
                return (b, handlers)
            }
            if batch.isEmpty { return }
            run(batch, subscribers)
            monitor.withLock {
                running = false
                monitor.broadcast()
            }
        }
    }

    private func run(_ batch: [Request], _ subscribers: [(String, Handler)]) {
        // Step 2: every thread of every space in the batch, killed together.
        let t0 = monotonicNanos()
        let taken = batch.map { registry.takeResources($0.space) }
        let t1 = monotonicNanos()
        scheduler.kill(taken.flatMap(\.threads))
        let quiesced = monotonicNanos()
        for (request, resources) in zip(batch, taken) {
            // Step 3: imports first, then mappings, then memfds (DeviceRegion.release's order).
            var bytes: UInt64 = 0
            for region in resources.regions {
                bytes += UInt64(region.size)
                region.release()
            }
            // Step 4.
            let alive = resources.threads.filter { $0.state == .killed }.count
            let timeline = TeardownTimeline(
                space: request.space.id, pid: request.space.pid, reason: request.reason,
                noticeNanos: request.space.noticeNanos, quiescedNanos: quiesced, releasedNanos: monotonicNanos(),
                threadsKilled: UInt32(alive), regionsFreed: UInt32(resources.regions.count), bytesFreed: bytes)
            registry.finishTeardown(request.space, timeline: timeline)
            // Step 5.
            for (_, handler) in subscribers { handler(request.space, timeline) }
            request.done?(timeline)
        }
        // Scheduler bookkeeping (accounting of the dead spaces) is not a resource of theirs: it
        // is dropped once per batch, after every space's release was recorded.
        for request in batch { scheduler.forgetSpace(request.space.id) }
        if trace {
            let wake = t0 - batch.map(\.space.noticeNanos).max()!
            printError("teardown batch of \(batch.count): executor woke after \(wake / 1000) µs, take \((t1 - t0) / 1000) µs, "
                + "kill \((quiesced - t1) / 1000) µs, release \((monotonicNanos() - quiesced) / 1000) µs")
        }
    }
}
