import ArgumentParser
import Tether
import TetherCore

struct Ps: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List address spaces with device work: pid, policy, regions, mirrored bytes, device threads (your own; root sees all).")
    @OptionGroup var socket: SocketOption
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let snapshot: ProcessTable
        do { snapshot = try DaemonControl(socketPath: socket.path).ps() } catch { throw fail(error.message) }
        if json { return try printJSON(snapshot) }
        print("device: \(snapshot.deviceName) (\(snapshot.backend.rawValue)), default policy \(snapshot.policy)")
        if snapshot.spaces.isEmpty { return print("no address spaces") }
        var rows: [[String]] = []
        for s in snapshot.spaces {
            rows.append(["\(s.pid)", "\(s.space)", s.policy.description, s.ownerAlive ? "alive" : "exited", "\(s.connections)",
                         "\(s.regions)", bytes(s.mirroredBytes), millis(s.deviceNanos), "", "", ""])
            for t in s.threads {
                rows.append(["", "", "", "", "", "", "", "", "\(t.thread) \(t.kernel)", t.state.description, millis(t.deviceNanos)])
            }
        }
        print(table(["PID", "SPACE", "POLICY", "OWNER", "CONNS", "REGIONS", "MIRRORED", "DEVICE-TIME", "THREAD", "STATE", "THREAD-TIME"], rows))
    }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Kill the device work of a process (all its threads, its regions released) or one device thread.",
        discussion: "Only your own user's work, unless you are root.")
    @OptionGroup var socket: SocketOption
    @Option(help: "Tear down every address space of this process.") var pid: Int32?
    @Option(help: "Kill one device thread (an id from `tether ps`, like t3.17, with or without the t).") var thread: String?

    func validate() throws {
        guard (pid == nil) != (thread == nil) else { throw ValidationError("give exactly one of --pid and --thread") }
    }

    func run() throws {
        do {
            let control = try DaemonControl(socketPath: socket.path)
            if let pid {
                let n = try control.killProcess(pid: pid)
                print("pid \(pid): address space torn down, \(n) device thread(s) killed")
            } else if let thread {
                guard let id = ThreadID(parsing: thread) else {
                    throw TetherError(.invalidArgument, "\(thread) is not a thread id (like t3.17, as `tether ps` shows them)")
                }
                let alive = try control.killThread(id)
                print(alive ? "\(id): killed" : "\(id): had already ended")
            }
        } catch let error as TetherError {
            throw fail(error.message)
        }
    }
}

func bytes(_ b: UInt64) -> String {
    if b >= 1 << 30 { return formatDouble(Double(b) / Double(1 << 30), 1) + " GiB" }
    if b >= 1 << 20 { return formatDouble(Double(b) / Double(1 << 20), 1) + " MiB" }
    if b >= 1 << 10 { return formatDouble(Double(b) / Double(1 << 10), 1) + " KiB" }
    return "\(b) B"
}

func millis(_ nanos: UInt64) -> String { formatDouble(Double(nanos) / 1e6, 3) + " ms" }
