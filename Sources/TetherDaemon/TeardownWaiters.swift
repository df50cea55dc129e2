import Synchronization
import TetherCore
import TetherDevice

/// `awaitTeardown` requests waiting for a pid's address spaces to be released, or for their
/// deadline.
///
/// Bounded (per connection and per uid, `DaemonLimits`), dropped with the connection that asked,
/// and never scanned as a whole: a release looks up its pid, the event loop pops expired
/// deadlines from a heap (stale entries of waiters already answered are skipped, and the heap is
/// rebuilt once they outnumber the live ones). Every operation is O(log n) in the waiters, or
/// O(the waiters it answers).
///
/// Shared by the event loop (add, expire, drop) and the teardown executor (release), under one
/// mutex; replies are sent after it is released.
final class TeardownWaiters: Sendable {
    struct Waiter {
        var pid: Int32
        /// Who asked: answered with the timelines that uid may see.
        var uid: UInt32
        var deadline: UInt64
        var connection: Connection
        var requestID: UInt64
    }

    private struct State {
        var nextID: UInt64 = 1
        var waiters: [UInt64: Waiter] = [:]
        var byPid: [Int32: Set<UInt64>] = [:]
        var perUid: [UInt32: UInt64] = [:]
        var deadlines = DeadlineHeap()

        mutating func remove(_ id: UInt64) -> Waiter? {
            guard let w = waiters.removeValue(forKey: id) else { return nil }
            byPid[w.pid]?.remove(id)
            if byPid[w.pid]?.isEmpty == true { byPid[w.pid] = nil }
            perUid[w.uid]! -= 1
            if perUid[w.uid] == 0 { perUid[w.uid] = nil }
            w.connection.waiters.remove(id)
            return w
        }
    }

    private let state = Mutex(State())

    var count: Int { state.withLock { $0.waiters.count } }

    /// Registers a waiter unless `isReleased()` (checked under the same lock the release path
    /// takes, so a release in between cannot be missed). Returns false when already released.
    func add(_ waiter: Waiter, limits: DaemonLimits, isReleased: () -> Bool) throws(TetherError) -> Bool {
        try state.withLock { (s: inout State) throws(TetherError) -> Bool in
            if isReleased() { return false }
            try limits.waitersOfConnection.check(have: UInt64(waiter.connection.waiters.count), hint: "wait for some to be answered first")
            try limits.waitersOfUser.check(have: s.perUid[waiter.uid, default: 0], hint: "wait for some to be answered first")
            let id = s.nextID
            s.nextID += 1
            s.waiters[id] = waiter
            s.byPid[waiter.pid, default: []].insert(id)
            s.perUid[waiter.uid, default: 0] += 1
            waiter.connection.waiters.insert(id)
            s.deadlines.push(waiter.deadline, id)
            return true
        }
    }

    /// Takes the waiters of `pid` (its last space was released) — under the lock, so that `add`
    /// sees the release or is taken here.
    func take(pid: Int32, ifReleased: () -> Bool) -> [Waiter] {
        state.withLock { s in
            guard ifReleased(), let ids = s.byPid[pid] else { return [] }
            let due = ids.compactMap { s.remove($0) }
            s.deadlines.compactIfStale(live: s.waiters)
            return due
        }
    }

    /// Takes the waiters whose deadline passed; also returns the next deadline, if any.
    func expire(now: UInt64) -> (due: [Waiter], next: UInt64?) {
        state.withLock { s in
            var due: [Waiter] = []
            while let (deadline, id) = s.deadlines.min, deadline <= now {
                s.deadlines.popMin()
                if let w = s.remove(id) { due.append(w) }
            }
            // Stale entries (answered early) surface here too; skip to a live one.
            while let (_, id) = s.deadlines.min, s.waiters[id] == nil { s.deadlines.popMin() }
            return (due, s.deadlines.min?.deadline)
        }
    }

    /// Forgets the waiters of a connection that went away (nobody is left to answer).
    func drop(_ connection: Connection) {
        state.withLock { s in
            for id in connection.waiters { _ = s.remove(id) }
            s.deadlines.compactIfStale(live: s.waiters)
        }
    }
}

/// A binary min-heap of (deadline, waiter id).
struct DeadlineHeap {
    private var items: [(deadline: UInt64, id: UInt64)] = []

    var count: Int { items.count }
    var min: (deadline: UInt64, id: UInt64)? { items.first }

    /// - Complexity: O(log n).
    mutating func push(_ deadline: UInt64, _ id: UInt64) {
        items.append((deadline, id))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard less(i, parent) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    /// - Complexity: O(log n).
    mutating func popMin() {
        guard !items.isEmpty else { return }
        items.swapAt(0, items.count - 1)
        items.removeLast()
        siftDown(0)
    }

    /// Rebuilds from the live waiters once stale entries are more than half (O(n), amortised
    /// O(1) per removal).
    mutating func compactIfStale(live: [UInt64: TeardownWaiters.Waiter]) {
        guard items.count > 64, items.count > 2 * live.count else { return }
        items = live.map { ($0.value.deadline, $0.key) }
        for i in stride(from: items.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        (items[a].deadline, items[a].id) < (items[b].deadline, items[b].id)
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count && less(l, m) { m = l }
            if r < items.count && less(r, m) { m = r }
            if m == i { return }
            items.swapAt(i, m)
            i = m
        }
    }
}
