import Testing
import TetherCore

/// The scheduling policy against a fake backend and a manual clock: every slice "runs" for its
/// simulated cost (a fixed per-slice overhead plus the thread's true cost per workgroup), the
/// clock moves by exactly that much, and the queue is told so. Nothing here sleeps or reads a real
/// clock, so every run is the same.
@Suite("RunQueue")
struct RunQueueTests {
    // MARK: - Fairness between address spaces

    @Test(arguments: [1, 2, 3])
    func oneThreadAgainstEightGetsHalf(depth: Int) {
        var sim = Simulator(overhead: 20_000, depth: depth)
        sim.add(1, space: 1, cost: 10_000)
        for t in 0..<8 { sim.add(100 + UInt64(t), space: 2, cost: 10_000) }
        sim.run(forNanos: 2 * second)

        let shares = sim.shares(of: [1, 2])
        for share in shares { #expect(abs(share - 0.5) <= 0.05, "share \(share) is not 50 % ± 10 %") }
        #expect(jain(sim.times(of: [1, 2])) >= 0.95)
    }

    @Test(arguments: [1, 2])
    func threeSpacesWithOneTwoAndFiveThreads(depth: Int) {
        var sim = Simulator(overhead: 20_000, depth: depth)
        var next: UInt64 = 1
        for (space, threads) in [(UInt64(1), 1), (2, 2), (3, 5)] {
            for _ in 0..<threads {
                sim.add(next, space: space, cost: 7_000)
                next += 1
            }
        }
        sim.run(forNanos: 3 * second)

        for share in sim.shares(of: [1, 2, 3]) {
            #expect(abs(share - 1.0 / 3) <= 0.1 / 3, "share \(share) is not 1/3 ± 10 %")
        }
        #expect(jain(sim.times(of: [1, 2, 3])) >= 0.95)
    }

    @Test(arguments: [1, 2])
    func fairnessIsInDeviceTimeNotSlices(depth: Int) {
        // Space 1's threads cost 20× space 2's per workgroup: equal time, not equal groups.
        var sim = Simulator(overhead: 5_000, depth: depth)
        sim.add(1, space: 1, cost: 200_000)
        sim.add(2, space: 2, cost: 10_000)
        sim.add(3, space: 2, cost: 10_000)
        sim.run(forNanos: 2 * second)
        for share in sim.shares(of: [1, 2]) { #expect(abs(share - 0.5) <= 0.05) }
    }

    // MARK: - Round-robin inside a space

    @Test func threadsOfASpaceTakeTurns() {
        var sim = Simulator(overhead: 20_000)
        sim.add(1, space: 1, cost: 10_000)
        let b = (0..<8).map { ThreadID(rawValue: 100 + UInt64($0)) }
        for t in b { sim.add(t.rawValue, space: 2, cost: 10_000) }
        sim.run(forNanos: 2 * second)

        let spaceTime = Double(sim.spaceNanos[SpaceID(rawValue: 2)]!)
        for t in b {
            let share = Double(sim.threadNanos[t] ?? 0) / spaceTime
            #expect(abs(share - 1.0 / 8) <= 0.15 / 8, "\(t) got \(share) of its space")
        }
        // Strict turns: in every window of 8 consecutive picks of space 2, each thread once.
        let order = sim.slices.filter { $0.pick.space.rawValue == 2 }.map(\.pick.thread)
        for start in stride(from: 0, to: order.count - 8, by: 8) {
            #expect(Set(order[start..<start + 8]).count == 8)
        }
    }

    // MARK: - Strict priority with a floor

    @Test func highAndLowKeepTheFloor() {
        let interval = 8
        var sim = Simulator(floorInterval: interval)
        sim.add(1, space: 1, priority: .high, cost: 10_000)
        sim.add(2, space: 2, priority: .low, cost: 10_000)
        let n = 900
        sim.run(picks: n)

        let low = sim.slices.filter { $0.pick.space.rawValue == 2 }.count
        let high = n - low
        #expect(low >= n / (interval + 1) - 1)
        #expect(low <= n / (interval + 1) + 1)
        #expect(high >= interval * low - interval)
        // The low class runs only after `interval` high slices in a row.
        #expect(longestRunsBefore(sim.slices.map { $0.pick.space.rawValue == 2 }).allSatisfy { $0 >= interval })
    }

    @Test func normalRunsUnderHighOnlyThroughTheFloor() {
        let interval = 5
        var sim = Simulator(floorInterval: interval)
        sim.add(1, space: 1, priority: .high, cost: 3_000)
        sim.add(2, space: 1, priority: .high, cost: 3_000)
        for t in 0..<4 { sim.add(10 + UInt64(t), space: 2, priority: .normal, cost: 3_000) }
        sim.run(picks: 600)
        let isNormal = sim.slices.map { $0.pick.space.rawValue == 2 }
        let runs = longestRunsBefore(isNormal)
        #expect(!runs.isEmpty)
        #expect(runs.allSatisfy { $0 == interval }, "normal ran after \(runs.filter { $0 != interval })")

        // High gone: normal gets everything.
        sim.queue.remove(ThreadID(rawValue: 1))
        sim.queue.remove(ThreadID(rawValue: 2))
        sim.queue.checkInvariants()
        let before = sim.slices.count
        sim.run(picks: 100)
        #expect(sim.slices[before...].allSatisfy { $0.pick.space.rawValue == 2 })
    }

    @Test func onlyLowRunnableGetsEverything() {
        var sim = Simulator()
        sim.add(1, space: 1, priority: .low, cost: 10_000)
        sim.add(2, space: 2, priority: .low, cost: 10_000)
        sim.run(forNanos: second)
        #expect(sim.slices.count > 100)
        #expect(sim.clock.now >= second)
        let total = sim.spaceNanos.values.reduce(0, +)
        #expect(total == sim.clock.now)
    }

    @Test func threeClassesServeTheFloorInAFixedOrder() {
        // Normal and low reach the interval together; the tie goes to the higher class, the same
        // in every process (a Set's order is not).
        for _ in 0..<3 {
            var sim = Simulator(floorInterval: 4)
            sim.add(1, space: 1, priority: .high, cost: 1_000)
            sim.add(2, space: 2, priority: .normal, cost: 1_000)
            sim.add(3, space: 3, priority: .low, cost: 1_000)
            sim.run(picks: 21)
            let classes = sim.slices.map { ["H", "N", "L"][Int($0.pick.space.rawValue) - 1] }.joined()
            #expect(classes == "HHHHNLHHHNLHHHNLHHHNL")
        }
    }

    // MARK: - FIFO for equal keys

    @Test func equalVirtualTimeGoesInArrivalOrder() {
        let arrival: [UInt64] = [7, 3, 11, 1, 5, 9]
        func sequence() -> [UInt64] {
            var sim = Simulator(overhead: 0)
            for space in arrival { sim.add(space, space: space, cost: 1_000) }
            sim.run(picks: arrival.count * 4)
            return sim.slices.map(\.pick.space.rawValue)
        }
        let first = sequence()
        // Equal costs keep the virtual times equal after each round: every round in arrival order.
        #expect(first == Array(repeating: arrival, count: 4).flatMap { $0 })
        for _ in 0..<5 { #expect(sequence() == first) }
    }

    @Test func arrivalOrderSurvivesAnIdleGap() {
        // Spaces that wake at the same minimum are ordered by first arrival, not by id.
        var q = RunQueue(quantumNanos: 1_000_000)
        q.add(ThreadID(rawValue: 1), space: SpaceID(rawValue: 9), priority: .normal, groups: 1, persistent: false)
        q.add(ThreadID(rawValue: 2), space: SpaceID(rawValue: 2), priority: .normal, groups: 1, persistent: false)
        q.checkInvariants()
        var order: [UInt64] = []
        while let p = q.pick() {
            q.checkInvariants()
            order.append(p.space.rawValue)
            #expect(q.account(p, nanos: 0) == .gridComplete)
            q.remove(p.thread)
            q.checkInvariants()
        }
        #expect(order == [9, 2])
    }

    // MARK: - Slice sizing

    @Test(arguments: [
        (UInt64(2_000_000), UInt64(1_000), UInt64(30_000)),
        (2_000_000, 50, 80_000),
        (500_000, 2_500, 10_000),
        (4_000_000, 20_000, 0),
    ])
    func slicesConvergeToTheQuantum(quantum: UInt64, cost: UInt64, overhead: UInt64) {
        // About 100 quanta of work.
        let groups = UInt32(100 * quantum / cost)
        var sim = Simulator(quantum: quantum, overhead: overhead)
        sim.add(1, space: 1, cost: cost, groups: groups, persistent: false)
        sim.runToCompletion(maxPicks: 20_000)

        let slices = sim.slices
        #expect(slices.first?.pick.groupCount == 1)
        expectExactCover(slices.map(\.pick), groups: groups)
        // No slice overshoots the quantum by much, warm-up included.
        for s in slices { #expect(s.nanos <= quantum * 3 / 2 || s.pick.groupCount == 1) }
        // After a short warm-up every slice but the last (cut to the remaining groups) lasts about
        // Q, even when the overhead dwarfs a group: the probe weighs one group in the estimate.
        let warm = slices.dropFirst(8).dropLast()
        #expect(warm.count >= 20)
        for s in warm {
            #expect(s.nanos >= quantum / 2 && s.nanos <= quantum * 3 / 2,
                    "slice of \(s.pick.groupCount) groups took \(s.nanos) ns, quantum \(quantum)")
        }
        // And settles on it: n·c + o → Q.
        for s in warm.suffix(10) {
            #expect(Double(s.nanos) >= 0.95 * Double(quantum) && Double(s.nanos) <= 1.05 * Double(quantum))
        }
        // The ramp only grows while slices are short.
        for (a, b) in zip(slices, slices.dropFirst()) where a.nanos < quantum / 2 && b.pick.groupBase != 0 {
            let growth: UInt32 = a.nanos < quantum / 4 ? 4 : 2
            #expect(b.pick.groupCount >= min(a.pick.groupCount * growth, groups - b.pick.groupBase))
        }
    }

    @Test func aGroupLongerThanTheQuantumRunsAlone() {
        var sim = Simulator(quantum: 1_000_000, overhead: 10_000)
        sim.add(1, space: 1, cost: 3_000_000, groups: 40, persistent: false)
        sim.runToCompletion(maxPicks: 1_000)
        // Doubling applies only after a short slice; a 3 ms group never is.
        #expect(sim.slices.allSatisfy { $0.pick.groupCount == 1 })
        expectExactCover(sim.slices.map(\.pick), groups: 40)
    }

    @Test func smallGridsNeverOverrun() {
        for groups: UInt32 in [1, 2, 3, 7, 64, 1000] {
            var sim = Simulator(quantum: 2_000_000, overhead: 1_000)
            sim.add(1, space: 1, cost: 1, groups: groups, persistent: false)
            sim.runToCompletion(maxPicks: 1_000)
            expectExactCover(sim.slices.map(\.pick), groups: groups)
            for s in sim.slices { #expect(s.pick.groupBase + s.pick.groupCount <= groups) }
        }
    }

    @Test func aSliceMeasuredAtZeroStillGrows() {
        // A clock too coarse for a tiny slice reads 0 ns; the ramp must still double.
        var sim = Simulator(quantum: 2_000_000, overhead: 0)
        sim.add(1, space: 1, cost: 0, groups: 1 << 20, persistent: false)
        sim.runToCompletion(maxPicks: 100)
        #expect(sim.slices.count <= 21)
        expectExactCover(sim.slices.map(\.pick), groups: 1 << 20)
    }

    @Test func aOneGroupThreadOfWorkItsSpaceRanBeforeHasItsCostKnown() throws {
        var queue = RunQueue(quantumNanos: 2_000_000)
        let space = SpaceID(rawValue: 1)
        func runOnce(_ id: UInt64, groups: UInt32, key: Int, nanosPerGroup: UInt64) throws {
            queue.add(ThreadID(rawValue: id), space: space, priority: .normal, groups: groups, persistent: false, costKey: key)
            while let pick = queue.pick() {
                if queue.account(pick, nanos: nanosPerGroup * UInt64(pick.groupCount)) == .gridComplete { break }
            }
            queue.remove(ThreadID(rawValue: id))
        }
        try runOnce(1, groups: 1, key: 7, nanosPerGroup: 3_000)
        queue.add(ThreadID(rawValue: 2), space: space, priority: .normal, groups: 1, persistent: false, costKey: 7)
        #expect(queue.nanosPerGroup(of: ThreadID(rawValue: 2)) == 3_000, "the same one-group work: its cost is known")
        queue.add(ThreadID(rawValue: 3), space: space, priority: .normal, groups: 1, persistent: false, costKey: 8)
        #expect(queue.nanosPerGroup(of: ThreadID(rawValue: 3)) == nil, "other work: unknown")
        // A grid that ran cheap on average still probes with one group next time: its first
        // groups may be the expensive ones.
        try runOnce(4, groups: 4096, key: 9, nanosPerGroup: 50)
        queue.add(ThreadID(rawValue: 5), space: space, priority: .normal, groups: 4096, persistent: false, costKey: 9)
        #expect(queue.nanosPerGroup(of: ThreadID(rawValue: 5)) == nil)
        queue.remove(ThreadID(rawValue: 2))
        queue.remove(ThreadID(rawValue: 3))
        #expect(queue.pick()?.groupCount == 1)
        queue.checkInvariants()
    }

    @Test func tinySlicesPayForHowLongTheyHeldTheDevice() throws {
        // Space 1's slices run 1 µs but keep the device 30 µs (the dispatch around them); space 2's
        // run 30 µs. Charged what they held, they alternate; charged 1 µs, space 1 would get ~30
        // slices for each of space 2's.
        var queue = RunQueue(quantumNanos: 2_000_000)
        queue.add(ThreadID(rawValue: 1), space: SpaceID(rawValue: 1), priority: .normal, groups: 1 << 20, persistent: true)
        queue.add(ThreadID(rawValue: 2), space: SpaceID(rawValue: 2), priority: .normal, groups: 1 << 20, persistent: true)
        var ofSpace1 = 0
        for _ in 0..<200 {
            let next = queue.pick()
            let pick = try #require(next)
            if pick.space == SpaceID(rawValue: 1) {
                ofSpace1 += 1
                queue.account(pick, nanos: 1_000, heldNanos: 30_000)
            } else {
                queue.account(pick, nanos: 30_000, heldNanos: 30_000)
            }
        }
        #expect((90...110).contains(ofSpace1), "space 1 got \(ofSpace1) of 200 slices")
        #expect(queue.deviceNanos(ofSpace: SpaceID(rawValue: 1)) == UInt64(ofSpace1) * 1_000, "device time stays what ran")
        queue.checkInvariants()
    }

    @Test func persistentThreadsStartEachRoundAtZero() {
        let groups: UInt32 = 5_000
        var sim = Simulator(quantum: 1_000_000, overhead: 10_000)
        sim.add(1, space: 1, cost: 3_000, groups: groups, persistent: true)
        sim.run(picks: 400)

        let picks = sim.slices.map(\.pick)
        let rounds = Dictionary(grouping: picks, by: \.round)
        #expect(rounds.count >= 5)
        for r in 0..<UInt32(rounds.count - 1) {
            expectExactCover(rounds[r]!, groups: groups)
            #expect(rounds[r + 1]!.first!.groupBase == 0)
        }
        // Rounds are consecutive and each starts where the previous one's grid completed.
        #expect(picks.map(\.round) == picks.map(\.round).sorted())
        #expect(Set(picks.map(\.round)) == Set(0..<UInt32(rounds.count)))
        #expect(sim.queue.contains(ThreadID(rawValue: 1)))
    }

    @Test func aCompletedGridIsNotRunAgainBeforeItsRemoval() {
        var q = RunQueue(quantumNanos: 1_000_000)
        let id = ThreadID(rawValue: 1)
        q.add(id, space: SpaceID(rawValue: 1), priority: .normal, groups: 3, persistent: false)
        var covered: UInt32 = 0
        while let p = q.pick() {
            q.checkInvariants()
            #expect(p.groupBase == covered)
            covered += p.groupCount
            #expect(covered <= 3)
            let progress = q.account(p, nanos: 1_000)
            q.checkInvariants()
            #expect(progress == (covered == 3 ? .gridComplete : .more))
            if covered > 3 { break }
        }
        #expect(covered == 3)
        #expect(q.contains(id))  // still queued until the worker removes it
        let removed = q.remove(id)
        #expect(removed)
        q.checkInvariants()
        #expect(q.isEmpty)
    }

    // MARK: - No burst credit

    @Test func aNewcomerGetsNoBurst() {
        var sim = Simulator()
        sim.add(1, space: 1, cost: 10_000)
        sim.run(forNanos: second)
        let a0 = sim.spaceNanos[SpaceID(rawValue: 1)]!
        sim.add(2, space: 2, cost: 10_000)
        sim.run(forNanos: second)
        let a = sim.spaceNanos[SpaceID(rawValue: 1)]! - a0
        let b = sim.spaceNanos[SpaceID(rawValue: 2)]!
        let share = Double(b) / Double(a + b)
        #expect(share <= 0.55 && share >= 0.45, "newcomer got \(share)")
        // And it gets no run of slices at its start either.
        let afterJoin = sim.slices.drop { $0.pick.space.rawValue != 2 }
        #expect(longestRun(afterJoin.prefix(50).map { $0.pick.space.rawValue == 2 }) <= 3)
    }

    @Test func aSpaceThatIdlesAndWakesGetsNoBurst() {
        var sim = Simulator()
        sim.add(1, space: 1, cost: 10_000)
        sim.add(2, space: 2, cost: 10_000)
        sim.run(forNanos: 200 * milli)
        let removed = sim.queue.remove(ThreadID(rawValue: 2))
        #expect(removed)
        sim.queue.checkInvariants()
        sim.run(forNanos: second)  // space 2 idles; space 1 runs alone
        let a0 = sim.spaceNanos[SpaceID(rawValue: 1)]!, b0 = sim.spaceNanos[SpaceID(rawValue: 2)]!
        sim.add(3, space: 2, cost: 10_000)
        sim.run(forNanos: second)
        let a = sim.spaceNanos[SpaceID(rawValue: 1)]! - a0, b = sim.spaceNanos[SpaceID(rawValue: 2)]! - b0
        let share = Double(b) / Double(a + b)
        #expect(share <= 0.55 && share >= 0.45, "waking space got \(share)")
    }

    @Test func aNewcomerWhileTheClassIsIdleGetsNoBurstEither() {
        // Space 1 runs alone for a second and goes idle (its thread finished); space 2 arrives in
        // the gap and space 1 submits its next thread right after: the two must share from then
        // on, not space 2 run alone until it has caught up with a second it never waited for.
        var sim = Simulator()
        sim.add(1, space: 1, cost: 10_000)
        sim.run(forNanos: second)
        let removed = sim.queue.remove(ThreadID(rawValue: 1))
        #expect(removed)
        sim.queue.checkInvariants()
        sim.add(2, space: 2, cost: 10_000)
        sim.run(picks: 3)
        sim.add(3, space: 1, cost: 10_000)
        let a0 = sim.spaceNanos[SpaceID(rawValue: 1)]!, b0 = sim.spaceNanos[SpaceID(rawValue: 2)]!
        sim.run(forNanos: second)
        let a = sim.spaceNanos[SpaceID(rawValue: 1)]! - a0, b = sim.spaceNanos[SpaceID(rawValue: 2)]! - b0
        let share = Double(a) / Double(a + b)
        #expect(share <= 0.55 && share >= 0.45, "returning space got \(share)")
    }

    @Test func changingClassBringsNoCredit() {
        // Space 2 ran at low priority on the floor (little virtual time); a high thread moves it
        // to the high class, where it must share with space 1 rather than catch up with it.
        var sim = Simulator(floorInterval: 8)
        sim.add(1, space: 1, priority: .high, cost: 10_000)
        sim.add(2, space: 2, priority: .low, cost: 10_000)
        sim.run(forNanos: second)
        sim.add(3, space: 2, priority: .high, cost: 10_000)
        let a0 = sim.spaceNanos[SpaceID(rawValue: 1)]!, b0 = sim.spaceNanos[SpaceID(rawValue: 2)]!
        sim.run(forNanos: second)
        let a = sim.spaceNanos[SpaceID(rawValue: 1)]! - a0, b = sim.spaceNanos[SpaceID(rawValue: 2)]! - b0
        let share = Double(b) / Double(a + b)
        #expect(share <= 0.55 && share >= 0.45, "space moved to high got \(share)")
    }

    // MARK: - remove / removeSpace

    @Test func removedThreadsAreNeverPickedAgain() {
        var sim = Simulator()
        for t in 1...6 { sim.add(UInt64(t), space: UInt64(t % 2 + 1), cost: 5_000) }
        sim.run(picks: 30)
        let first = sim.queue.remove(ThreadID(rawValue: 3))
        let again = sim.queue.remove(ThreadID(rawValue: 3))
        let unknown = sim.queue.remove(ThreadID(rawValue: 99))
        #expect(first && !again && !unknown)
        sim.queue.checkInvariants()
        let before = sim.slices.count
        sim.run(picks: 300)
        #expect(!sim.slices[before...].contains { $0.pick.thread.rawValue == 3 })
        #expect(sim.queue.threadCount == 5)
    }

    @Test func removingTheThreadInFlightDoesNotResurrectIt() {
        var q = RunQueue(quantumNanos: 1_000_000)
        for t: UInt64 in 1...3 {
            q.add(ThreadID(rawValue: t), space: SpaceID(rawValue: 1), priority: .normal, groups: 100, persistent: true)
        }
        q.checkInvariants()
        let p = q.pick()!
        q.checkInvariants()
        let removed = q.remove(p.thread)
        #expect(removed)
        q.checkInvariants()
        #expect(q.account(p, nanos: 50_000) == .gridComplete)
        q.checkInvariants()
        #expect(!q.contains(p.thread))
        #expect(q.threadCount == 2)
        // The time it used is still charged to its space.
        #expect(q.deviceNanos(ofSpace: SpaceID(rawValue: 1)) == 50_000)
        for _ in 0..<100 {
            let n = q.pick()!
            q.checkInvariants()
            #expect(n.thread != p.thread)
            q.account(n, nanos: 10_000)
            q.checkInvariants()
        }
    }

    @Test func removeSpaceWithASliceInFlight() {
        var q = RunQueue(quantumNanos: 1_000_000)
        for t: UInt64 in 1...4 {
            q.add(ThreadID(rawValue: t), space: SpaceID(rawValue: t <= 3 ? 5 : 6), priority: .normal,
                  groups: 100, persistent: true)
        }
        let p = q.pick()!
        #expect(p.space.rawValue == 5)
        q.checkInvariants()
        let removed = q.removeSpace(SpaceID(rawValue: 5))
        q.checkInvariants()
        #expect(removed.map(\.rawValue) == [1, 2, 3])
        #expect(q.account(p, nanos: 10_000) == .gridComplete)
        q.checkInvariants()
        #expect(q.deviceNanos(ofSpace: SpaceID(rawValue: 5)) == nil)
        #expect(q.threadCount == 1)
        for _ in 0..<20 {
            let n = q.pick()!
            #expect(n.thread.rawValue == 4)
            q.account(n, nanos: 10_000)
            q.checkInvariants()
        }
        #expect(q.removeSpace(SpaceID(rawValue: 5)).isEmpty)
        #expect(q.removeSpace(SpaceID(rawValue: 6)).map(\.rawValue) == [4])
        q.checkInvariants()
        #expect(q.isEmpty)
        #expect(q.pick() == nil)
    }

    @Test func threadsInFlightAreNotPickedTwice() {
        var q = RunQueue(quantumNanos: 1_000_000)
        q.add(ThreadID(rawValue: 1), space: SpaceID(rawValue: 1), priority: .normal, groups: 10, persistent: true)
        q.add(ThreadID(rawValue: 2), space: SpaceID(rawValue: 1), priority: .normal, groups: 10, persistent: true)
        let a = q.pick()!, b = q.pick()!
        q.checkInvariants()
        #expect(a.thread != b.thread)
        #expect(q.pick() == nil)
        q.account(b, nanos: 1_000)
        q.checkInvariants()
        #expect(q.pick()?.thread == b.thread)
    }

    // MARK: - Slices in flight

    @Test func aThreadQueuesItsNextSliceOnceItsCostIsKnown() {
        var q = RunQueue(quantumNanos: 1_000_000, slicesPerThread: 2)
        let id = ThreadID(rawValue: 1)
        q.add(id, space: SpaceID(rawValue: 1), priority: .normal, groups: 1_000, persistent: false)
        let probe = q.pick()!
        #expect(probe.groupCount == 1)
        #expect(q.pick() == nil, "a probing thread waits for its probe")
        q.account(probe, nanos: 10_000)
        q.checkInvariants()
        let a = q.pick()!, b = q.pick()!
        q.checkInvariants()
        #expect(q.pick() == nil, "at most two in flight")
        // Consecutive ranges, each sized from the one measurement.
        #expect(a.groupBase == 1 && b.groupBase == a.groupBase + a.groupCount)
        #expect(a.groupCount == b.groupCount)
        q.account(a, nanos: 400_000)
        #expect(q.pick()?.groupBase == b.groupBase + b.groupCount)
    }

    @Test func theLastSliceOfAGridCompletesItWhateverIsInFlight() {
        var q = RunQueue(quantumNanos: 1_000_000, slicesPerThread: 2)
        let id = ThreadID(rawValue: 1)
        q.add(id, space: SpaceID(rawValue: 1), priority: .normal, groups: 9, persistent: false)
        q.account(q.pick()!, nanos: 250_000)  // 1 group: 4 per quantum
        let a = q.pick()!, b = q.pick()!
        #expect((a.groupBase, a.groupCount, b.groupBase, b.groupCount) == (1, 4, 5, 4))
        #expect(q.pick() == nil, "the grid is all in flight")
        #expect(q.account(a, nanos: 1_000_000) == .more)
        #expect(q.pick() == nil)
        #expect(q.account(b, nanos: 1_000_000) == .gridComplete)
    }

    @Test func deepQueueSlotsGoRoundTheSpaces() {
        // Two spaces of equal virtual time and known cost: a slice in flight counts against its
        // space at once, so the second slot goes to the other space, not to the same one again.
        var q = RunQueue(quantumNanos: 1_000_000, slicesPerThread: 2)
        for t: UInt64 in 1...2 {
            q.add(ThreadID(rawValue: t), space: SpaceID(rawValue: t), priority: .normal, groups: 1_000_000, persistent: true)
        }
        q.account(q.pick()!, nanos: 10_000)
        q.account(q.pick()!, nanos: 10_000)
        var order: [UInt64] = []
        var inFlight: [RunQueue.Pick] = []
        for _ in 0..<40 {
            while inFlight.count < 2, let p = q.pick() { inFlight.append(p); order.append(p.space.rawValue) }
            let done = inFlight.removeFirst()
            q.account(done, nanos: done.estimateNanos)
            q.checkInvariants()
        }
        #expect(longestRun(order.map { $0 == 1 }) <= 1 && longestRun(order.map { $0 == 2 }) <= 1, "\(order)")
    }

    // MARK: - Against a reference model

    @Test(arguments: 1...24 as ClosedRange<UInt64>)
    func matchesTheReferenceModel(seed: UInt64) {
        var rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 17)
        let quantum = 200_000 + rng.next(below: 2_000_000)
        let interval = 1 + Int(rng.next(below: 10))
        let perThread = 1 + Int(rng.next(below: 3))
        var q = RunQueue(quantumNanos: quantum, floorInterval: interval, slicesPerThread: perThread)
        var model = Model(quantumNanos: quantum, floorInterval: interval, slicesPerThread: perThread)
        var costs: [ThreadID: UInt64] = [:]
        var live: [ThreadID] = []
        var done: [ThreadID] = []  // completed grids the "worker" has not removed yet
        var inFlight: [RunQueue.Pick] = []
        var spacePool: [UInt64] = [1]
        var nextSpace: UInt64 = 2  // ids are never reused, as in the daemon
        var usualPriority: [UInt64: PriorityClass] = [:]
        var nextThread: UInt64 = 1
        let maxInFlight = 1 + Int(rng.next(below: 4))
        var picks = 0

        for step in 0..<1_500 {
            let roll = rng.next(below: 100)
            if roll < 7 || live.isEmpty {
                // A new thread, often in an existing space, sometimes in a new one.
                if rng.next(below: 4) == 0 || spacePool.isEmpty {
                    spacePool.append(nextSpace)
                    nextSpace += 1
                }
                let space = SpaceID(rawValue: spacePool[Int(rng.next(below: UInt64(spacePool.count)))])
                let id = ThreadID(rawValue: nextThread)
                nextThread += 1
                // Mostly the space's usual class; sometimes another (the space changes class).
                let drawn = PriorityClass(rawValue: UInt8(rng.next(below: 3)))!
                let priority = rng.next(below: 5) == 0 ? drawn : usualPriority[space.rawValue, default: drawn]
                usualPriority[space.rawValue] = usualPriority[space.rawValue] ?? priority
                let groups = UInt32(1 + rng.next(below: rng.next(below: 4) == 0 ? 100_000 : 300))
                let persistent = rng.next(below: 5) == 0
                costs[id] = rng.next(below: 6) == 0 ? 0 : 1 + rng.next(below: 60_000)
                q.add(id, space: space, priority: priority, groups: groups, persistent: persistent)
                model.add(id, space: space, priority: priority, groups: groups, persistent: persistent)
                live.append(id)
            } else if roll < 10 {
                let id = live.remove(at: Int(rng.next(below: UInt64(live.count))))
                #expect(q.remove(id) == model.remove(id))
                done.removeAll { $0 == id }
            } else if roll < 11 && !spacePool.isEmpty {
                let space = SpaceID(rawValue: spacePool.remove(at: Int(rng.next(below: UInt64(spacePool.count)))))
                let removed = q.removeSpace(space)
                #expect(removed == model.removeSpace(space))
                live.removeAll { removed.contains($0) }
                done.removeAll { removed.contains($0) }
            } else if roll < 13 && !done.isEmpty {
                let id = done.removeFirst()
                live.removeAll { $0 == id }
                #expect(q.remove(id) == model.remove(id))
            } else if roll < 14 {
                let quantum = 100_000 + rng.next(below: 3_000_000)
                q.quantumNanos = quantum
                model.quantumNanos = quantum
            } else if roll < 60 && inFlight.count < maxInFlight {
                let got = q.pick()
                let expected = model.pick()
                #expect(got.map(Slice.init) == expected, "seed \(seed) step \(step) pick \(picks)")
                if got.map(Slice.init) != expected { break }
                if let got { inFlight.append(got); picks += 1 }
            } else if !inFlight.isEmpty {
                // Any thread's slice may end next, but a thread's own slices end in pick order.
                let drawn = inFlight[Int(rng.next(below: UInt64(inFlight.count)))].thread
                let p = inFlight.remove(at: inFlight.firstIndex { $0.thread == drawn }!)
                // The fake device: a per-slice overhead, the true per-group cost, some jitter.
                // Free threads sometimes read 0 ns (a clock too coarse for them).
                let cost = costs[p.thread] ?? 0
                let nanos = cost == 0 && rng.next(below: 2) == 0
                    ? 0 : 2_000 + UInt64(p.groupCount) * cost + rng.next(below: 3_000)
                let progress = q.account(p, nanos: nanos)
                #expect(progress == model.account(Slice(p), nanos: nanos), "seed \(seed) step \(step)")
                if progress == .gridComplete, live.contains(p.thread), !done.contains(p.thread),
                   !model.threads[p.thread]!.persistent {
                    // Usually removed at once, as Scheduler does; sometimes a little later.
                    if rng.next(below: 3) == 0 {
                        done.append(p.thread)
                    } else {
                        live.removeAll { $0 == p.thread }
                        #expect(q.remove(p.thread) == model.remove(p.thread))
                    }
                }
            }
            q.checkInvariants()
            #expect(q.threadCount == model.threads.count)
        }
        #expect(picks > 300, "seed \(seed): only \(picks) picks")
        for (id, t) in model.threads { #expect(q.deviceNanos(of: id) == t.deviceNanos) }
        for s in model.spaces { #expect(q.deviceNanos(ofSpace: s.id) == s.deviceNanos) }
    }

    @Test func theModelAgreesOnALongSteadyRun() {
        // Many picks without churn: the virtual times, the floor and the slice ramp over time.
        var q = RunQueue(quantumNanos: 1_000_000, floorInterval: 3)
        var model = Model(quantumNanos: 1_000_000, floorInterval: 3)
        var rng = SplitMix64(seed: 42)
        var costs: [ThreadID: UInt64] = [:]
        for t: UInt64 in 1...12 {
            let id = ThreadID(rawValue: t), space = SpaceID(rawValue: t % 5)
            let priority = PriorityClass(rawValue: UInt8(t % 3))!
            q.add(id, space: space, priority: priority, groups: 50_000, persistent: true)
            model.add(id, space: space, priority: priority, groups: 50_000, persistent: true)
            costs[id] = 500 * t
        }
        for i in 0..<3_000 {
            let p = q.pick()
            #expect(p.map(Slice.init) == model.pick(), "pick \(i)")
            guard let p else { break }
            let nanos = 10_000 + UInt64(p.groupCount) * costs[p.thread]! + rng.next(below: 500)
            #expect(q.account(p, nanos: nanos) == model.account(Slice(p), nanos: nanos))
            q.checkInvariants()
        }
    }
}

// MARK: - Simulator

private let milli: UInt64 = 1_000_000
private let second: UInt64 = 1_000_000_000

/// Time only moves when a simulated slice runs.
fileprivate struct ManualClock {
    private(set) var now: UInt64 = 0
    mutating func advance(by nanos: UInt64) { now += nanos }
}

/// A device that takes `overhead + groups × cost` for a slice, exactly.
fileprivate struct FakeBackend {
    var overheadNanos: UInt64
    var costPerGroup: [ThreadID: UInt64] = [:]

    func run(_ pick: RunQueue.Pick) -> UInt64 {
        overheadNanos + UInt64(pick.groupCount) * costPerGroup[pick.thread]!
    }
}

/// The worker loop of `Scheduler`: keep up to `depth` slices on the device, then the oldest runs
/// → account, removing threads whose grid is complete.
fileprivate struct Simulator {
    var queue: RunQueue
    var clock = ManualClock()
    var backend: FakeBackend
    var persistent: Set<ThreadID> = []
    var spaceNanos: [SpaceID: UInt64] = [:]
    var threadNanos: [ThreadID: UInt64] = [:]
    var slices: [(pick: RunQueue.Pick, nanos: UInt64)] = []

    /// Slices the device holds at once (it runs them one after another, in order).
    let depth: Int
    var inFlight: [RunQueue.Pick] = []

    init(quantum: UInt64 = 2_000_000, floorInterval: Int = 8, overhead: UInt64 = 20_000, depth: Int = 1) {
        queue = RunQueue(quantumNanos: quantum, floorInterval: floorInterval, slicesPerThread: depth)
        backend = FakeBackend(overheadNanos: overhead)
        self.depth = depth
    }

    mutating func add(_ thread: UInt64, space: UInt64, priority: PriorityClass = .normal, cost: UInt64,
                      groups: UInt32 = 4_000_000_000, persistent: Bool = true) {
        let id = ThreadID(rawValue: thread)
        backend.costPerGroup[id] = cost
        if persistent { self.persistent.insert(id) }
        queue.add(id, space: SpaceID(rawValue: space), priority: priority, groups: groups, persistent: persistent)
        queue.checkInvariants()
    }

    @discardableResult
    mutating func step() -> Bool {
        while inFlight.count < depth, let next = queue.pick() {
            inFlight.append(next)
            queue.checkInvariants()
        }
        guard !inFlight.isEmpty else { return false }
        let pick = inFlight.removeFirst()
        let nanos = backend.run(pick)
        clock.advance(by: nanos)
        let progress = queue.account(pick, nanos: nanos)
        queue.checkInvariants()
        spaceNanos[pick.space, default: 0] += nanos
        threadNanos[pick.thread, default: 0] += nanos
        slices.append((pick, nanos))
        if progress == .gridComplete && !persistent.contains(pick.thread) {
            queue.remove(pick.thread)
            queue.checkInvariants()
        }
        return true
    }

    mutating func run(forNanos nanos: UInt64) {
        let end = clock.now + nanos
        while clock.now < end, step() {}
    }

    mutating func run(picks: Int) {
        for _ in 0..<picks where !step() { break }
    }

    mutating func runToCompletion(maxPicks: Int) {
        for _ in 0..<maxPicks where !step() { return }
        Issue.record("did not complete in \(maxPicks) picks")
    }

    func times(of spaces: [UInt64]) -> [Double] {
        spaces.map { Double(spaceNanos[SpaceID(rawValue: $0)] ?? 0) }
    }

    func shares(of spaces: [UInt64]) -> [Double] {
        let t = times(of: spaces)
        let total = t.reduce(0, +)
        return t.map { $0 / total }
    }
}

/// Jain's fairness index: 1 when all equal, 1/n when one takes everything.
fileprivate func jain(_ x: [Double]) -> Double {
    let sum = x.reduce(0, +), squares = x.reduce(0) { $0 + $1 * $1 }
    return sum * sum / (Double(x.count) * squares)
}

/// For each `true`, how many `false` came right before it (since the previous `true`).
fileprivate func longestRunsBefore(_ flags: [Bool]) -> [Int] {
    var runs: [Int] = [], run = 0
    for f in flags {
        if f { runs.append(run); run = 0 } else { run += 1 }
    }
    return runs
}

fileprivate func longestRun(_ flags: [Bool]) -> Int {
    var best = 0, run = 0
    for f in flags {
        run = f ? run + 1 : 0
        best = max(best, run)
    }
    return best
}

/// The picks of one grid cover 0..<groups once each, in order, without a gap.
fileprivate func expectExactCover(_ picks: [RunQueue.Pick], groups: UInt32, sourceLocation: SourceLocation = #_sourceLocation) {
    var next: UInt32 = 0
    for p in picks {
        #expect(p.groupBase == next, "slice at \(p.groupBase), expected \(next)", sourceLocation: sourceLocation)
        #expect(p.groupCount >= 1, sourceLocation: sourceLocation)
        next = p.groupBase + p.groupCount
    }
    #expect(next == groups, "covered \(next) of \(groups) groups", sourceLocation: sourceLocation)
}

// MARK: - Reference model

/// A pick, as the model makes it (`RunQueue.Pick` has no public initializer).
fileprivate struct Slice: Hashable, CustomStringConvertible {
    var thread: ThreadID
    var space: SpaceID
    var groupBase: UInt32
    var groupCount: UInt32
    var round: UInt32

    init(thread: ThreadID, space: SpaceID, groupBase: UInt32, groupCount: UInt32, round: UInt32) {
        (self.thread, self.space, self.groupBase, self.groupCount, self.round) = (thread, space, groupBase, groupCount, round)
    }

    init(_ p: RunQueue.Pick) {
        self.init(thread: p.thread, space: p.space, groupBase: p.groupBase, groupCount: p.groupCount, round: p.round)
    }

    var description: String { "\(thread)@\(space)[\(groupBase)+\(groupCount) r\(round)]" }
}

/// The documented rules written plainly, with arrays and linear scans, to compare `RunQueue` with:
/// - classes are strict, except that a runnable lower class passed over `floorInterval` times in
///   a row gets the next slice (the most passed-over such class; a tie goes to the higher class);
/// - within the class, the runnable space with the least (virtual time + estimates of its slices
///   in flight, arrival) runs; an estimate is the slice's groups × the cost, or Q while unknown;
/// - a space joining, waking or changing class starts at the class minimum: the least virtual
///   time of the class's non-idle spaces, and never below what that minimum has been (so a class
///   that emptied does not hand a newcomer credit against the spaces that ran before);
/// - within the space, the first runnable thread in turn order runs and goes last; a thread is
///   runnable while groups remain to pick and it has no slice in flight, or fewer than
///   `slicesPerThread` once its cost is known;
/// - a slice is 1 group first, then ⌊Q / cost⌋, the cost per group being the ratio of the measured
///   time and groups, each summed with a decay of 0.7 per slice; at least double the last one if
///   that ran under Q/2 (×4 under Q/4), at most what remains of the grid;
/// - a non-persistent thread whose grid is complete waits for its removal and is not runnable.
fileprivate struct Model {
    struct Thread {
        var id: ThreadID
        var space: SpaceID
        var total: UInt32
        var next: UInt32 = 0
        var round: UInt32 = 0
        var persistent: Bool
        var nanos = 0.0, groups = 0.0  // decayed sums
        var cost: Double? { groups > 0 ? nanos / groups : nil }
        var lastCount: UInt32 = 0
        var lastNanos: UInt64 = 0
        var inFlight = 0
        var deviceNanos: UInt64 = 0
    }

    struct Space {
        var id: SpaceID
        var priority: PriorityClass
        var virtualNanos: UInt64
        var arrival: Int
        var turns: [ThreadID] = []
        var deviceNanos: UInt64 = 0
        var estimates: [UInt64] = []  // of its slices in flight
    }

    var quantumNanos: UInt64
    var floorInterval: Int
    var slicesPerThread: Int
    var estimates: [Slice: UInt64] = [:]
    var threads: [ThreadID: Thread] = [:]
    var spaces: [Space] = []  // in arrival order
    var passedOver = [0, 0, 0]
    var classFloor: [UInt64] = [0, 0, 0]
    var arrivals = 0

    init(quantumNanos: UInt64, floorInterval: Int, slicesPerThread: Int = 1) {
        self.quantumNanos = quantumNanos
        self.floorInterval = floorInterval
        self.slicesPerThread = slicesPerThread
    }

    func index(of space: SpaceID) -> Int? { spaces.firstIndex { $0.id == space } }

    func classMinimum(_ p: PriorityClass) -> UInt64 {
        var m: UInt64? = nil
        for s in spaces where s.priority == p && !s.turns.isEmpty {
            m = min(m ?? s.virtualNanos, s.virtualNanos)
        }
        return max(classFloor[Int(p.rawValue)], m ?? 0)
    }

    mutating func add(_ id: ThreadID, space: SpaceID, priority: PriorityClass, groups: UInt32, persistent: Bool) {
        threads[id] = Thread(id: id, space: space, total: max(groups, 1), persistent: persistent)
        if let i = index(of: space) {
            if spaces[i].priority != priority {
                spaces[i].virtualNanos = classMinimum(priority)
            } else if spaces[i].turns.isEmpty {
                spaces[i].virtualNanos = max(spaces[i].virtualNanos, classMinimum(priority))
            }
            spaces[i].priority = priority
            spaces[i].turns.append(id)
        } else {
            arrivals += 1
            spaces.append(Space(id: space, priority: priority, virtualNanos: classMinimum(priority),
                                arrival: arrivals, turns: [id]))
        }
    }

    mutating func remove(_ id: ThreadID) -> Bool {
        guard let t = threads.removeValue(forKey: id) else { return false }
        if let i = index(of: t.space) { spaces[i].turns.removeAll { $0 == id } }
        return true
    }

    mutating func removeSpace(_ space: SpaceID) -> [ThreadID] {
        let ids = threads.values.filter { $0.space == space }.map(\.id).sorted()
        for id in ids { threads[id] = nil }
        spaces.removeAll { $0.id == space }
        return ids
    }

    func runnable(_ id: ThreadID) -> Bool {
        let t = threads[id]!
        guard t.next < t.total else { return false }
        return t.inFlight == 0 || (t.inFlight < slicesPerThread && t.cost != nil)
    }

    mutating func pick() -> Slice? {
        var runnableClasses: [Int] = []
        for c in 0..<3 where spaces.contains(where: { $0.priority.rawValue == c && $0.turns.contains(where: runnable) }) {
            runnableClasses.append(c)
        }
        guard let top = runnableClasses.last else { return nil }
        var chosen = top
        var best = -1
        for c in runnableClasses where c < top && passedOver[c] >= floorInterval && passedOver[c] >= best {
            chosen = c  // ascending order: on a tie the higher class wins
            best = passedOver[c]
        }
        for c in runnableClasses where c != chosen { passedOver[c] += 1 }
        passedOver[chosen] = 0

        var si: Int? = nil
        for (i, s) in spaces.enumerated() where s.priority.rawValue == chosen && s.turns.contains(where: runnable) {
            let key = s.virtualNanos + s.estimates.reduce(0, +)
            if let j = si, (spaces[j].virtualNanos + spaces[j].estimates.reduce(0, +), spaces[j].arrival) <= (key, s.arrival) { continue }
            si = i
        }
        let i = si!
        let ti = spaces[i].turns.firstIndex(where: runnable)!
        let id = spaces[i].turns.remove(at: ti)
        spaces[i].turns.append(id)

        var t = threads[id]!
        let remaining = t.total - t.next
        var count: UInt32 = 1
        if let cost = t.cost {
            var estimate = cost > 0 ? (Double(quantumNanos) / cost).rounded(.down) : 0
            if t.lastNanos < quantumNanos / 4 {
                estimate = max(estimate, Double(t.lastCount) * 4)
            } else if t.lastNanos < quantumNanos / 2 {
                estimate = max(estimate, Double(t.lastCount) * 2)
            }
            count = UInt32(max(1, min(Double(remaining), estimate)))
        }
        let slice = Slice(thread: id, space: spaces[i].id, groupBase: t.next, groupCount: count, round: t.round)
        let estimate = t.cost.map { UInt64(($0 * Double(count)).rounded()) } ?? quantumNanos
        spaces[i].estimates.append(estimate)
        estimates[slice] = estimate
        t.inFlight += 1
        t.next += count
        if t.next >= t.total && t.persistent {
            t.next = 0
            t.round += 1
        }
        threads[id] = t
        return slice
    }

    mutating func account(_ pick: Slice, nanos: UInt64) -> RunQueue.Progress {
        let estimate = estimates.removeValue(forKey: pick)!
        if let i = index(of: pick.space) {
            spaces[i].estimates.remove(at: spaces[i].estimates.firstIndex(of: estimate)!)
            spaces[i].virtualNanos += nanos
            spaces[i].deviceNanos += nanos
            let p = spaces[i].priority
            classFloor[Int(p.rawValue)] = classMinimum(p)
        }
        guard var t = threads[pick.thread] else { return .gridComplete }
        t.inFlight -= 1
        t.deviceNanos += nanos
        t.nanos = t.nanos * 0.7 + Double(nanos)
        t.groups = t.groups * 0.7 + Double(pick.groupCount)
        t.lastCount = pick.groupCount
        t.lastNanos = nanos
        threads[pick.thread] = t
        return pick.groupBase + pick.groupCount >= t.total ? .gridComplete : .more
    }
}
