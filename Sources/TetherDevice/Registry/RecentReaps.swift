import TetherCore

/// The reports of an address space's threads reaped lately: at most `capacity`, the oldest
/// dropped first (protected by the registry lock, like the space).
///
/// Why: a `join` reaps its thread once the reply is posted. When a holder of the owner's
/// connection fd shuts it down at that moment, the owner's library may never read the reply; it
/// asks again on its resumed connection (ownership.md, rule 2), and the report comes from here —
/// once. Reaping only after asking the socket whether its peer is still there would cost a system
/// call per `join` (~0.6 µs, a tenth of a software round trip here) and could still be wrong
/// either way: the shutdown may land between the look and the post (the owner asks again, and
/// the thread is gone), or between the post and the look (the owner read the reply, and the
/// thread is never reaped).
struct RecentReaps {
    /// More than a connection's replies in flight at a shutdown, in any test or benchmark here;
    /// ~100 bytes each.
    static let capacity = 1024
    private var reports: [ThreadID: ThreadReport] = [:]
    /// Ids in the order they were added, as a ring (`next` is the oldest once it is full).
    private var order: [ThreadID] = []
    private var next = 0

    mutating func add(_ report: ThreadReport) {
        if order.count < Self.capacity {
            order.append(report.thread)
        } else {
            reports[order[next]] = nil
            order[next] = report.thread
            next = (next + 1) % Self.capacity
        }
        reports[report.thread] = report
    }

    /// Reports kept (at most `capacity`).
    var count: Int { reports.count }

    /// The report of a thread reaped lately, which it forgets.
    mutating func take(_ id: ThreadID) -> ThreadReport? {
        reports.removeValue(forKey: id)
    }
}
