import Glibc
import TetherCore
import TetherSys

/// Tool-side requests that bind nothing: `tether ps`, `tether kill`, benchmarks reading teardown
/// timelines. The connection never says hello, so it never becomes an address space's owner and
/// keeps nothing alive; it stays out of the fork table for the same reason.
///
/// Every call is bounded by `timeoutSeconds` and fails with `.deviceLost` when the daemon goes
/// away. Like `Device`, it opens a connection of its own in a forked child (the reader thread does
/// not survive fork); the inherited one is left as it is.
public final class DaemonControl: @unchecked Sendable {
    public let socketPath: String
    public let timeoutSeconds: Double

    private struct State {
        var connection: Connection
        /// The process `connection` belongs to.
        var pid: pid_t
        var closed = false
    }

    private let state: Locked<State>

    public init(socketPath: String? = nil, timeoutSeconds: Double = 10) throws(TetherError) {
        guard timeoutSeconds > 0, timeoutSeconds.isFinite else {
            throw TetherError(.invalidArgument, "timeoutSeconds must be a positive number of seconds, not \(timeoutSeconds)")
        }
        let path = SocketPath.resolve(socketPath)
        self.socketPath = path
        self.timeoutSeconds = timeoutSeconds
        let connection = try Connection.open(path: path, track: false, closeOnFork: false, sendTimeoutSeconds: timeoutSeconds)
        state = Locked(State(connection: connection, pid: getpid()))
    }

    deinit { close() }

    /// Every address space the daemon serves, with its threads: read page by page (`psPage`,
    /// ~1,200 entries each, every page bounded by `timeoutSeconds`), so a table of any size
    /// arrives. Pages are read one after another while the daemon goes on, so the table is not
    /// one instant's snapshot: a thread that ends between two pages may be missing.
    public func ps() throws(TetherError) -> ProcessTable {
        var cursor = PsCursor(space: 0, thread: 0)
        var table: ProcessTable?
        while true {
            let reply = try call(.psPage(afterSpace: cursor.space, afterThread: cursor.thread))
            guard case .psPage(let page, let next) = reply else { throw Device.unexpected(reply, to: "ps") }
            if table == nil {
                table = page
            } else {
                for space in page.spaces {
                    // A space cut by the previous page's end continues here.
                    if let last = table!.spaces.last, last.space == space.space {
                        table!.spaces[table!.spaces.count - 1].threads += space.threads
                    } else {
                        table!.spaces.append(space)
                    }
                }
            }
            guard let next else { return table! }
            guard next.space > cursor.space || (next.space == cursor.space && next.thread > cursor.thread) else {
                throw TetherError(.malformedMessage, "the daemon's ps pages do not advance")
            }
            cursor = next
        }
    }

    /// Tears down the address space of `pid` (reason `kill` in its timeline). Returns how many
    /// device threads were killed.
    public func killProcess(pid: Int32) throws(TetherError) -> UInt32 {
        let reply = try call(.killProcess(pid: pid))
        guard case .killedProcess(let threads) = reply else { throw Device.unexpected(reply, to: "killProcess") }
        return threads
    }

    /// Kills one device thread of any address space. Returns whether it was still alive.
    public func killThread(_ id: ThreadID) throws(TetherError) -> Bool {
        let reply = try call(.killThread(id))
        guard case .killed(let wasAlive) = reply else { throw Device.unexpected(reply, to: "killThread") }
        return wasAlive
    }

    /// Teardown timelines the daemon recorded, for one pid (0: all).
    /// Read page by page (`timelinesPage`), so any number of them arrives.
    public func timelines(pid: Int32 = 0) throws(TetherError) -> [TeardownTimeline] {
        var all: [TeardownTimeline] = []
        var after: UInt64 = 0
        while true {
            let reply = try call(.timelinesPage(pid: pid, after: after))
            guard case .timelinesPage(let list, let next) = reply else { throw Device.unexpected(reply, to: "timelines") }
            all += list
            guard let next else { return all }
            guard next > after else { throw TetherError(.malformedMessage, "the daemon's timeline pages do not advance") }
            after = next
        }
    }

    /// Waits until the address space of `pid` has been released and returns its newest 64
    /// timelines, oldest first, so `last` is the release waited for (at once if it already was);
    /// an empty list when `timeoutSeconds` passes first. The daemon does the waiting; this call's
    /// own deadline is that plus the usual `timeoutSeconds` of slack.
    public func awaitTeardown(pid: Int32, timeoutSeconds wait: Double) throws(TetherError) -> [TeardownTimeline] {
        guard wait >= 0, wait.isFinite else {
            throw TetherError(.invalidArgument, "timeoutSeconds must be zero or a positive number of seconds, not \(wait)")
        }
        let millis = UInt32(min(wait * 1000, Double(UInt32.max)).rounded(.up))
        let reply = try connection().call(.awaitTeardown(pid: pid, timeoutMillis: millis), timeoutSeconds: wait + timeoutSeconds)
        guard case .timelines(let list) = reply else { throw Device.unexpected(reply, to: "awaitTeardown") }
        return list
    }

    /// A round trip, for liveness checks and latency measurements.
    public func ping() throws(TetherError) {
        let reply = try call(.ping)
        guard case .pong = reply else { throw Device.unexpected(reply, to: "ping") }
    }

    /// Idempotent; `deinit` does it too.
    public func close() {
        let connection: Connection? = state.withLock { s in
            if s.closed { return nil }
            s.closed = true
            return s.connection
        }
        connection?.close()
    }

    /// One call; asked once more on a new connection if the current one was shut down under
    /// this process (tool requests bind nothing, so a new connection serves them just as well).
    private func call(_ request: Request) throws(TetherError) -> Reply {
        let c = try connection()
        do throws(TetherError) {
            return try c.call(request, timeoutSeconds: timeoutSeconds)
        } catch {
            guard c.wasShutDown, c.openerPid == getpid() else { throw error }
            return try connection().call(request, timeoutSeconds: timeoutSeconds)
        }
    }

    private func connection() throws(TetherError) -> Connection {
        let pid = getpid()
        let current = try state.withLock { (s: inout State) throws(TetherError) -> Connection? in
            if s.closed { throw TetherError(.deviceLost, "this DaemonControl was closed; open a new one") }
            return s.pid == pid ? s.connection : nil
        }
        if let current, !current.wasShutDown { return current }
        // A forked child, or a connection shut down under us: a new connection; a race between
        // two threads costs one extra connection, closed at once.
        let fresh = try Connection.open(path: socketPath, track: false, closeOnFork: false, sendTimeoutSeconds: timeoutSeconds)
        let winner = state.withLock { s -> Connection? in
            if s.closed { return nil }
            if s.pid == pid && s.connection !== current { return s.connection }
            s.connection = fresh
            s.pid = pid
            return fresh
        }
        if let current, winner === fresh { current.close() }
        guard let winner else {
            fresh.close()
            throw TetherError(.deviceLost, "this DaemonControl was closed; open a new one")
        }
        if winner !== fresh { fresh.close() }
        return winner
    }
}
