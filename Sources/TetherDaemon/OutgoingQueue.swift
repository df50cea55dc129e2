/// The replies of one connection that its socket did not take yet, oldest first.
///
/// A reply is never dropped because its client is slow: when `sendmsg` says `EAGAIN` the reply
/// waits here and the event loop watches the socket for `EPOLLOUT`. The queue is bounded the way
/// a kernel socket is — by back-pressure, not by dropping: once it holds `pauseCount` replies or
/// `pauseBytes` bytes, the daemon stops reading that connection's requests (`Connection`) until
/// it has drained below half of both. What can still arrive while reading is paused are answers
/// to requests already taken (joins, kills, teardown waiters), and those are bounded by the
/// per-connection limits on pending joins and waiters (`DaemonLimits`), so the queue's worst case
/// is `pauseCount` + those limits.
///
/// Not thread-safe: `Connection` holds it under its lock.
struct OutgoingQueue {
    /// Reading pauses at this many queued replies…
    static let pauseCount = 256
    /// …or at this many queued bytes (a few `ps` pages).
    static let pauseBytes = 1 << 20

    struct Item {
        var bytes: [UInt8]
        /// Runs once the reply left (a join reaps its thread only then).
        var onSent: (@Sendable () -> Void)?
    }

    private var items: [Item] = []
    /// Index of the oldest item in `items` (popping from the front is O(1); compacted lazily).
    private var head = 0
    private(set) var bytes = 0

    var count: Int { items.count - head }
    var isEmpty: Bool { head == items.count }
    var first: Item? { isEmpty ? nil : items[head] }

    /// Whether reading should stop (the queue reached either bound).
    var isFull: Bool { count >= Self.pauseCount || bytes >= Self.pauseBytes }
    /// Whether a paused connection may read again (below half of both bounds).
    var hasDrained: Bool { count < Self.pauseCount / 2 && bytes < Self.pauseBytes / 2 }

    mutating func append(_ item: Item) {
        items.append(item)
        bytes += item.bytes.count
    }

    /// - Complexity: O(1) amortised.
    mutating func removeFirst() -> Item {
        let item = items[head]
        items[head] = Item(bytes: [], onSent: nil)
        head += 1
        bytes -= item.bytes.count
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 64 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
        return item
    }

    mutating func removeAll() {
        items = []
        head = 0
        bytes = 0
    }
}
