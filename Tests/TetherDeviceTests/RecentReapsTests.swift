import TetherCore
@testable import TetherDevice
import Testing

/// The reports a space keeps for joins asked again after a connection was shut down under its
/// owner: each answered once, and never more than `RecentReaps.capacity` kept, whatever a client
/// reaps.
@Suite struct RecentReapsTests {
    static func report(_ id: UInt64) -> ThreadReport {
        ThreadReport(thread: ThreadID(rawValue: id), kernel: "spin", state: .finished, deviceNanos: id, priority: .normal)
    }

    @Test("a reaped thread's report is answered once")
    func answeredOnce() {
        var reaps = RecentReaps()
        reaps.add(Self.report(7))
        #expect(reaps.take(ThreadID(rawValue: 7)) == Self.report(7))
        #expect(reaps.take(ThreadID(rawValue: 7)) == nil)
        #expect(reaps.take(ThreadID(rawValue: 8)) == nil)
    }

    @Test("past its capacity the oldest reports go first, taken ones included")
    func boundedOldestFirst() {
        var reaps = RecentReaps()
        let n = UInt64(RecentReaps.capacity)
        for id in 1...n { reaps.add(Self.report(id)) }
        _ = reaps.take(ThreadID(rawValue: 2))
        for id in (n + 1)...(3 * n) { reaps.add(Self.report(id)) }
        #expect(reaps.take(ThreadID(rawValue: 2 * n)) == nil, "reported 2n, dropped after n more")
        #expect(reaps.take(ThreadID(rawValue: 2 * n + 1)) == Self.report(2 * n + 1))
        #expect(reaps.take(ThreadID(rawValue: 3 * n)) == Self.report(3 * n))
        #expect(reaps.count == RecentReaps.capacity - 2)
    }
}
