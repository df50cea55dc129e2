import Foundation
import Testing

/// The measurement commands run here and report sane numbers. Bounds are generous on purpose:
/// the targets are checked by the benchmarks themselves on a quiet machine, not by timed tests.
@Suite(.serialized) struct BenchCommandTests {
    func runJSON(_ args: [String]) throws -> [String: Any] {
        let run = try runTether(args)
        #expect(run.status == 0, "tether \(args.joined(separator: " ")): \(run.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
    }

    @Test("fairness: an address space with 8 threads does not get 8× the device of one with 1")
    func fairness() throws {
        let json = try runJSON(["bench", "fairness", "--backend", "software", "--seconds", "1", "--json"])
        let jain = try #require(json["jain"] as? Double)
        let shares = try #require(json["shares"] as? [[String: Any]])
        #expect(shares.count == 2)
        // Device threads run in SCHED_IDLE: while other work keeps the machine's cores busy they
        // get a few slices a second, and the shares of a handful of slices measure nothing.
        let deviceMillis = shares.compactMap { $0["deviceMillis"] as? Double }.reduce(0, +)
        guard deviceMillis >= 250 else {
            print("skipped the fairness bound: the device got \(Int(deviceMillis)) ms of CPU in the 1 s window (the machine is busy with other work)")
            return
        }
        // 8× would be 0.62; equal shares are 1.
        #expect(jain >= 0.9, "shares \(shares) over \(Int(deviceMillis)) device ms")
    }

    @Test("load: each flood's cell alternates the client alone and beside it --rounds times, and reports every round's ratios")
    func loadRounds() throws {
        let json = try runJSON(["bench", "load", "--backend", "software", "--floods", "paused-reader", "--rounds", "2",
                                "--runs", "20", "--saxpys", "3", "--saxpy-elements", "65536", "--warmup", "0.1", "--json"])
        #expect(json["rounds"] as? Int == 2)
        let cells = try #require(json["cells"] as? [[String: Any]])
        #expect(cells.map { $0["flood"] as? String } == ["none", "paused-reader"])
        let flood = try #require(cells.last)
        let ratios = try #require(flood["dispatchRatios"] as? [Double])
        #expect(ratios.count == 2 && ratios.allSatisfy { $0 > 0 })
        #expect((flood["saxpyRatios"] as? [Double])?.count == 2)
        // The reported ratio is the median of the rounds'.
        #expect(abs(try #require(flood["dispatchRatio"] as? Double) - (ratios[0] + ratios[1]) / 2) < 1e-9)
    }

    @Test("load: each flood reaches its limit, and the client is measured once the flooder's admitted threads are done")
    func loadFloodsReachTheirLimits() throws {
        let json = try runJSON(["bench", "load", "--backend", "software", "--floods", "ring-spawns", "waiters",
                                "--runs", "20", "--saxpys", "3", "--saxpy-elements", "65536", "--warmup", "0.2",
                                "--daemon-arg=--max-threads-per-space", "--daemon-arg=300", "--json"])
        let cells = try #require(json["cells"] as? [[String: Any]])
        #expect(cells.map { $0["flood"] as? String } == ["none", "ring-spawns", "waiters"])
        for cell in cells.dropFirst() {
            // Measured after the warm-up, once none of the flooder's threads was queued or running.
            let settled = try #require(cell["settleSeconds"] as? Double, "\(cell)")
            #expect(settled >= 0.2 && settled < 60)
        }
        #expect((cells[1]["flooderSaw"] as? String)?.contains("300 of at most 300 device threads") == true, "\(cells[1])")
        // The waiters flood has an address space: its waits are held until their cap, not answered at once.
        #expect((cells[2]["flooderSaw"] as? String)?.contains("teardown waiters per connection") == true, "\(cells[2])")
    }

    @Test("kill: a running spin is killed and reported dead, fast", arguments: ["software", "vulkan"])
    func kill(backend: String) throws {
        let json = try runJSON(["bench", "kill", "--backend", backend, "--runs", "5", "--json"])
        #expect(json["runs"] as? Int == 5)
        #expect(try #require(json["p99Micros"] as? Double) < 100_000)
    }

    @Test("teardown: every victim's timeline is recorded, ordered, and the JSON carries the target numbers")
    func teardown() throws {
        let file = "/tmp/tether-teardown-\(getpid()).json"
        defer { unlink(file) }
        _ = try? runJSON(["bench", "teardown", "--backend", "software", "--victims", "4", "--runs", "1", "--victim-mib", "1",
                          "--json", file, "--json-stdout"])
        let data = try Data(contentsOf: URL(fileURLWithPath: file))
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(json["daemonSideP99Micros"] as? Double != nil)
        #expect(json["endToEndP50Micros"] as? Double != nil)
        #expect(json["bareNoticeP50Micros"] as? Double != nil)
        let cells = try #require(json["cells"] as? [[String: Any]])
        #expect((cells.first?["released"] as? [Any])?.count == 4)
        #expect(cells.first?["missing"] as? Int == 0)
    }

    @Test("scale: 256 processes × 8 device threads killed at once; the daemon is left with no fd, mapping or entry of theirs")
    func scale() throws {
        let daemon = try TestDaemon()
        let control = try daemon.control()
        _ = try control.ps()
        let before = daemon.resources()
        let json = try runJSON(["bench", "teardown", "--socket", daemon.socketPath, "--victims", "256", "--threads", "8",
                                "--runs", "1", "--victim-mib", "0", "--mirror-mib", "1", "--json-stdout"])
        let cells = try #require(json["cells"] as? [[String: Any]])
        #expect(cells.first?["missing"] as? Int == 0)
        #expect((cells.first?["released"] as? [Any])?.count == 256)
        #expect(try control.ps().spaces.isEmpty)
        let after = daemon.resources()
        #expect(after.fds == before.fds)
        #expect(after.memfdMappings == before.memfdMappings)
    }

    @Test("dispatch: both paths measured in one run and a ratio printed")
    func dispatch() throws {
        let json = try runJSON(["bench", "dispatch", "--backend", "vulkan", "--runs", "20", "--json"])
        #expect(try #require(json["daemonP50Micros"] as? Double) > 0)
        #expect(try #require(json["directP50Micros"] as? Double) > 0)
        #expect(json["ratio"] as? Double != nil)
        // Rings (the default path) and the socket, each against direct, and the spawn streams.
        #expect(try #require(json["ringRatio"] as? Double) == json["ratio"] as? Double)
        #expect(try #require(json["socketRatio"] as? Double) > 0)
        #expect(try #require(json["streamOneClientPerSecond"] as? Double) > 0)
        #expect(try #require(json["streamFourClientsPerSecond"] as? Double) > 0)
        #expect(json["neighbourDeviceShare"] is [String: Any])
    }
}
