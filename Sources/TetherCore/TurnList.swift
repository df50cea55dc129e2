/// The runnable threads of one address space in turn order: a doubly linked list threaded
/// through a dictionary, so that appending, removing any thread and sending one to the back all
/// cost O(1) — a space with 100,000 threads is torn down in linear time, not quadratic.
///
/// ```swift
/// var turns = TurnList()
/// turns.append(a); turns.append(b)   // a, b
/// turns.moveToBack(a)                // b, a
/// turns.remove(b)                    // a
/// ```
struct TurnList: Sendable {
    private var links: [ThreadID: (previous: ThreadID?, next: ThreadID?)] = [:]
    private(set) var head: ThreadID?
    private var tail: ThreadID?

    var isEmpty: Bool { head == nil }
    var count: Int { links.count }
    func contains(_ id: ThreadID) -> Bool { links[id] != nil }

    /// - Complexity: O(1).
    mutating func append(_ id: ThreadID) {
        precondition(links[id] == nil, "thread \(id) is in the turns twice")
        links[id] = (tail, nil)
        if let t = tail { links[t]!.next = id } else { head = id }
        tail = id
    }

    /// - Complexity: O(1). Returns whether it was there.
    @discardableResult
    mutating func remove(_ id: ThreadID) -> Bool {
        guard let link = links.removeValue(forKey: id) else { return false }
        if let p = link.previous { links[p]!.next = link.next } else { head = link.next }
        if let n = link.next { links[n]!.previous = link.previous } else { tail = link.previous }
        return true
    }

    /// - Complexity: O(1).
    mutating func moveToBack(_ id: ThreadID) {
        guard tail != id, remove(id) else { return }
        append(id)
    }

    /// The first thread in turn order that satisfies `predicate`.
    /// - Complexity: O(threads passed over).
    func first(where predicate: (ThreadID) -> Bool) -> ThreadID? {
        var cursor = head
        while let id = cursor {
            if predicate(id) { return id }
            cursor = links[id]!.next
        }
        return nil
    }

    /// Every thread in turn order. - Complexity: O(n).
    var all: [ThreadID] {
        var result: [ThreadID] = []
        result.reserveCapacity(links.count)
        var cursor = head
        while let id = cursor {
            result.append(id)
            cursor = links[id]!.next
        }
        return result
    }
}
