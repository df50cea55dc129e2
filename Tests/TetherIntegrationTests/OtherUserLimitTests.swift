import CTetherLinux
import Foundation
import Glibc
import Tether
import TetherCore
import TetherSys
import TetherTestSupport
import Testing

/// A second user on a daemon whose socket was opened up on purpose (docs/ownership.md, "Another
/// user"): what it spends is charged to its own uid's limits, never to the first user's, and its
/// owner requests name none of the first user's threads.
@Suite(.serialized) struct OtherUserLimitTests {
    /// Raw requests for `uid`'s process: spawns until refused, then waiters until refused.
    /// Returns "SPAWNED REFUSAL-FLAG WAITERS REFUSAL-FLAG", a flag being the `--max-…` named by
    /// the refusal's sentence (or the sentence itself when it names none).
    static func spend(_ fd: borrowing OwnedDescriptor, threadLimit: Int, waiterLimit: Int) -> String {
        func flag(_ reply: Reply?) -> String {
            guard case .error(let e)? = reply, e.code == .resourceExhausted else { return "unexpected \(String(describing: reply))" }
            return e.message.split(separator: " ").first { $0.hasPrefix("(--max-") }.map { String($0.dropFirst().dropLast(2)) } ?? e.message
        }
        var spawned = 0
        var reply: Reply?
        // Short threads, never joined: each stays charged until reaped.
        let spawn = SpawnRequest(program: .builtin(.spin), args: [1], groups: 1)
        for _ in 0...threadLimit {
            reply = rawRequest(fd.raw, .spawn(spawn))
            guard case .spawned? = reply else { break }
            spawned += 1
        }
        let threadRefusal = flag(reply)
        // Waiters on its own live pid are never answered: send them, then a ping; a refusal
        // would come before the pong.
        var waiters = 0
        for i in 0...waiterLimit {
            _ = try? SeqPacketSocket.send(fd.raw, MessageCodec.encode(.awaitTeardown(pid: getpid(), timeoutMillis: 600_000), id: 1000 + UInt64(i)))
            reply = rawRequest(fd.raw, .ping, id: 2000 + UInt64(i))
            guard case .pong? = reply else {
                _ = rawReply(fd.raw)  // the ping's pong, after the refusal
                break
            }
            waiters += 1
        }
        return "\(spawned) \(threadRefusal) \(waiters) \(flag(reply))"
    }

    @Test("another user's threads and waiters are charged to its own uid's limits, and its owner requests cannot name root's threads")
    func chargedToItsOwnUid() throws {
        guard geteuid() == 0 else {
            print("skipped: a second user needs root")
            return
        }
        let dir = "/tmp/tether-otheruser-\(getpid())"
        mkdir(dir, 0o755)
        chmod(dir, 0o755)
        defer { rmdir(dir) }
        let daemon = try TestDaemon(extra: ["--max-threads-per-user", "4", "--max-threads-per-space", "100",
                                            "--max-waiters-per-user", "2", "--max-waiters-per-connection", "100"],
                                    socketPath: dir + "/tether.sock")
        defer { daemon.stop(); unlink(daemon.socketPath); unlink(dir + "/generation") }
        // The socket is owner-only; open it to the second user on purpose.
        chmod(daemon.socketPath, 0o777)

        // Root spends its whole share first.
        let rootConnection = try daemon.rawConnection()
        guard case .spawned(let rootThread)? = rawRequest(rootConnection.raw, .spawn(SpawnRequest(program: .builtin(.spin), args: [1], groups: 1))) else {
            Issue.record("root's spawn failed")
            return
        }
        // On a connection it keeps: its waiters go with their connection.
        let rootSpender = try daemon.rawConnection()
        let rootSpent = Self.spend(rootSpender, threadLimit: 3, waiterLimit: 2)
        #expect(rootSpent == "3 --max-threads-per-user 2 --max-waiters-per-user")

        let h = Handshake()
        defer { h.close() }
        let other = forkChild {
            guard setgid(65534) == 0, setuid(65534) == 0 else { return 1 }
            // Root's thread, named from this user's own address space and from a tool connection.
            guard let own = try? daemon.rawConnection(), let tool = try? SeqPacketSocket.connect(path: daemon.socketPath) else { return 2 }
            let spent = Self.spend(own, threadLimit: 4, waiterLimit: 2)
            let reached = [rawRequest(own.raw, .status(rootThread)), rawRequest(own.raw, .kill(rootThread)),
                           rawRequest(own.raw, .join(rootThread)), rawRequest(tool.raw, .killThread(rootThread))]
                .map { errorCode($0).map { "\($0)" } ?? "answered" }
            h.send("\(spent) | \(reached.joined(separator: " "))")
            return 0
        }
        #expect(h.receive() == "4 --max-threads-per-user 2 --max-waiters-per-user | noSuchThread noSuchThread noSuchThread noSuchThread")
        #expect(waitChild(other) == 0)
        // Root's thread was not reaped or killed by the other user: root still joins it.
        guard case .joined(let report)? = rawRequest(rootConnection.raw, .join(rootThread)) else {
            Issue.record("root could not join its own thread")
            return
        }
        #expect(report.state == .finished)
    }
}
