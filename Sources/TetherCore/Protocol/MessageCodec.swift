/// Encodes and decodes whole messages (header + body).
public enum MessageCodec {
    public struct Header: Sendable, Equatable {
        public var op: UInt16
        public var requestID: UInt64
    }

    static func header(_ w: inout WireWriter, op: UInt16, requestID: UInt64) {
        w.u32(Wire.magic)
        w.u16(Wire.version)
        w.u16(op)
        w.u64(requestID)
    }

    public static func readHeader(_ r: inout WireReader) throws(TetherError) -> Header {
        guard r.remaining >= Wire.headerBytes else {
            throw TetherError(.malformedMessage, "message of \(r.remaining) bytes is shorter than the \(Wire.headerBytes)-byte header")
        }
        guard try r.u32() == Wire.magic else { throw TetherError(.malformedMessage, "bad magic: not a Tether message") }
        let version = try r.u16()
        guard version == Wire.version else {
            throw TetherError(.protocolVersion, "protocol version \(version) is not supported (this daemon speaks \(Wire.version)); use matching tether builds")
        }
        return Header(op: try r.u16(), requestID: try r.u64())
    }

    // MARK: Requests

    public static func encode(_ request: Request, id: UInt64) -> [UInt8] {
        var w = WireWriter()
        header(&w, op: request.op.rawValue, requestID: id)
        switch request {
        case .hello(let policy, let backend):
            w.u8(policy?.rawValue ?? 0xFF)
            w.u8(UInt8(BackendChoice.allCases.firstIndex(of: backend)!))
        case .mirror(let base, let size):
            w.u64(base)
            w.u64(size)
        case .unmirror(let r): w.u64(r.rawValue)
        case .loadModule(let words, let entry):
            w.string(entry)
            w.u32s(words)
        case .unloadModule(let m): w.u64(m.rawValue)
        case .attachRings(let sq, let cq):
            w.u32(sq)
            w.u32(cq)
        case .ringDoorbell: break
        case .spawn(let s), .run(let s):
            switch s.program {
            case .builtin(let k):
                w.u8(0)
                w.u8(UInt8(BuiltinKernel.allCases.firstIndex(of: k)!))
            case .spirv(let words, let invocations):
                w.u8(1)
                w.u32(invocations)
                w.u32s(words)
            case .module(let launch):
                w.u8(2)
                moduleLaunch(&w, launch)
            }
            w.u64s(s.args)
            w.u32(s.groups)
            w.u64(s.persistentNanos)
            w.u8(s.priority.rawValue)
        case .join(let t), .kill(let t), .status(let t), .killThread(let t): w.u64(t.rawValue)
        case .ps, .ping: break
        case .killProcess(let pid), .timelines(let pid): w.u32(UInt32(bitPattern: pid))
        case .awaitTeardown(let pid, let timeout):
            w.u32(UInt32(bitPattern: pid))
            w.u32(timeout)
        case .psPage(let space, let thread):
            w.u64(space)
            w.u64(thread)
        case .timelinesPage(let pid, let after):
            w.u32(UInt32(bitPattern: pid))
            w.u64(after)
        }
        return w.bytes
    }

    public static func decodeRequest(_ bytes: [UInt8]) throws(TetherError) -> (UInt64, Request) {
        guard bytes.count <= Wire.maxMessageBytes else {
            throw TetherError(.malformedMessage, "message of \(bytes.count) bytes exceeds \(Wire.maxMessageBytes)")
        }
        var r = WireReader(bytes)
        let h = try readHeader(&r)
        guard let op = Op(rawValue: h.op) else { throw TetherError(.malformedMessage, "unknown op \(h.op)") }
        let request: Request
        switch op {
        case .hello:
            let p = try r.u8()
            let policy: LifetimePolicy?
            if p == 0xFF { policy = nil } else if let v = LifetimePolicy(rawValue: p) { policy = v } else {
                throw TetherError(.malformedMessage, "unknown policy \(p)")
            }
            let b = Int(try r.u8())
            guard b < BackendChoice.allCases.count else { throw TetherError(.malformedMessage, "unknown backend \(b)") }
            request = .hello(policy: policy, backend: BackendChoice.allCases[b])
        case .mirror: request = .mirror(ownerBase: try r.u64(), size: try r.u64())
        case .unmirror: request = .unmirror(RegionID(rawValue: try r.u64()))
        case .loadModule:
            let entry = try r.string()
            guard entry.utf8.count <= Wire.maxEntryPointBytes else {
                throw TetherError(.malformedMessage, "an entry point name is at most \(Wire.maxEntryPointBytes) bytes")
            }
            request = .loadModule(words: try r.u32s(max: Wire.maxSpirvWords), entryPoint: entry)
        case .unloadModule: request = .unloadModule(ModuleID(rawValue: try r.u64()))
        case .attachRings: request = .attachRings(sqEntries: try r.u32(), cqEntries: try r.u32())
        case .ringDoorbell: request = .ringDoorbell
        case .spawn, .run:
            let program: SpawnRequest.Program
            switch try r.u8() {
            case 0:
                let k = Int(try r.u8())
                guard k < BuiltinKernel.allCases.count else {
                    throw TetherError(.unknownKernel, "unknown built-in kernel #\(k); known: \(BuiltinKernel.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                program = .builtin(BuiltinKernel.allCases[k])
            case 1:
                let invocations = try r.u32()
                program = .spirv(words: try r.u32s(max: Wire.maxSpirvWords), invocationsPerGroup: invocations)
            case 2: program = .module(try moduleLaunch(&r))
            case let v: throw TetherError(.malformedMessage, "unknown program kind \(v)")
            }
            let args = try r.u64s(max: KernelABI.maxArguments)
            let groups = try r.u32()
            let persistent = try r.u64()
            let p = try r.u8()
            guard let priority = PriorityClass(rawValue: p) else { throw TetherError(.malformedMessage, "unknown priority \(p)") }
            let spawn = SpawnRequest(program: program, args: args, groups: groups, persistentNanos: persistent, priority: priority)
            request = op == .run ? .run(spawn) : .spawn(spawn)
        case .join: request = .join(ThreadID(rawValue: try r.u64()))
        case .kill: request = .kill(ThreadID(rawValue: try r.u64()))
        case .status: request = .status(ThreadID(rawValue: try r.u64()))
        case .killThread: request = .killThread(ThreadID(rawValue: try r.u64()))
        case .ps: request = .ps
        case .ping: request = .ping
        case .killProcess: request = .killProcess(pid: Int32(bitPattern: try r.u32()))
        case .timelines: request = .timelines(pid: Int32(bitPattern: try r.u32()))
        case .awaitTeardown: request = .awaitTeardown(pid: Int32(bitPattern: try r.u32()), timeoutMillis: try r.u32())
        case .psPage: request = .psPage(afterSpace: try r.u64(), afterThread: try r.u64())
        case .timelinesPage: request = .timelinesPage(pid: Int32(bitPattern: try r.u32()), after: try r.u64())
        case .error: throw TetherError(.malformedMessage, "an error is not a request")
        }
        try r.expectEnd()
        return (h.requestID, request)
    }

    // MARK: Replies

    static func opOf(_ reply: Reply) -> Op {
        switch reply {
        case .hello: .hello
        case .mirrored: .mirror
        case .module: .loadModule
        case .done: .unmirror
        case .spawned: .spawn
        case .joined: .join
        case .killed: .kill
        case .status: .status
        case .ps: .ps
        case .killedProcess: .killProcess
        case .timelines: .timelines
        case .psPage: .psPage
        case .timelinesPage: .timelinesPage
        case .pong: .ping
        case .error: .error
        }
    }

    static func thread(_ w: inout WireWriter, _ t: ThreadReport) {
        w.u64(t.thread.rawValue)
        w.string(t.kernel)
        w.u8(t.state.rawValue)
        w.u64(t.deviceNanos)
        w.u8(t.priority.rawValue)
        w.bool(t.error != nil)
        if let e = t.error {
            w.u16(e.code.rawValue)
            w.string(e.message)
        }
    }

    static func thread(_ r: inout WireReader) throws(TetherError) -> ThreadReport {
        let id = ThreadID(rawValue: try r.u64())
        let kernel = try r.string()
        let s = try r.u8()
        guard let state = ThreadState(rawValue: s) else { throw TetherError(.malformedMessage, "unknown thread state \(s)") }
        let nanos = try r.u64()
        let p = try r.u8()
        guard let priority = PriorityClass(rawValue: p) else { throw TetherError(.malformedMessage, "unknown priority \(p)") }
        var error: TetherError?
        if try r.bool() { error = TetherError(TetherError.Code(rawValue: try r.u16()), try r.string()) }
        return ThreadReport(thread: id, kernel: kernel, state: state, deviceNanos: nanos, priority: priority, error: error)
    }

    public static func encode(_ reply: Reply, id: UInt64) -> [UInt8] {
        var w = WireWriter()
        header(&w, op: opOf(reply).rawValue | Wire.replyBit, requestID: id)
        switch reply {
        case .hello(let h):
            w.u64(h.space.rawValue)
            w.u32(UInt32(bitPattern: h.pid))
            w.u8(h.policy.rawValue)
            w.u8(UInt8(BackendKind.allCases.firstIndex(of: h.backend)!))
            w.string(h.deviceName)
        case .mirrored(let r): w.u64(r.rawValue)
        case .module(let id, let d):
            w.u64(id.rawValue)
            moduleDescription(&w, d)
        case .done, .pong: break
        case .spawned(let t): w.u64(t.rawValue)
        case .joined(let t), .status(let t): thread(&w, t)
        case .killed(let alive): w.bool(alive)
        case .killedProcess(let n): w.u32(n)
        case .psPage(let table, let next):
            processTable(&w, table)
            w.bool(next != nil)
            w.u64(next?.space ?? 0)
            w.u64(next?.thread ?? 0)
        case .timelinesPage(let list, let next):
            timelineList(&w, list)
            w.u64(next ?? 0)
        case .ps(let table):
            processTable(&w, table)
        case .timelines(let list):
            timelineList(&w, list)
        case .error(let e):
            w.u16(e.code.rawValue)
            w.string(e.message)
        }
        return w.bytes
    }

    static func processTable(_ w: inout WireWriter, _ table: ProcessTable) {
            w.u8(UInt8(BackendKind.allCases.firstIndex(of: table.backend)!))
            w.string(table.deviceName)
            w.u8(table.policy.rawValue)
            w.u32(UInt32(table.spaces.count))
            for s in table.spaces {
                w.u64(s.space.rawValue)
                w.u32(UInt32(bitPattern: s.pid))
                w.u32(s.uid)
                w.u8(s.policy.rawValue)
                w.bool(s.ownerAlive)
                w.u32(s.connections)
                w.u32(s.regions)
                w.u64(s.mirroredBytes)
                w.u64(s.deviceNanos)
                w.u32(UInt32(s.threads.count))
                for t in s.threads { thread(&w, t) }
            }
    }

    static func timelineList(_ w: inout WireWriter, _ list: [TeardownTimeline]) {
            w.u32(UInt32(list.count))
            for t in list {
                w.u64(t.space.rawValue)
                w.u32(UInt32(bitPattern: t.pid))
                w.string(t.reason)
                w.u64(t.noticeNanos)
                w.u64(t.quiescedNanos)
                w.u64(t.releasedNanos)
                w.u32(t.threadsKilled)
                w.u32(t.regionsFreed)
                w.u64(t.bytesFreed)
            }
    }

    public static func decodeReply(_ bytes: [UInt8]) throws(TetherError) -> (UInt64, Reply) {
        var r = WireReader(bytes)
        let h = try readHeader(&r)
        guard h.op & Wire.replyBit != 0, let op = Op(rawValue: h.op & ~Wire.replyBit) else {
            throw TetherError(.malformedMessage, "unknown reply op \(h.op)")
        }
        let reply: Reply
        switch op {
        case .hello:
            let space = SpaceID(rawValue: try r.u64())
            let pid = Int32(bitPattern: try r.u32())
            guard let policy = LifetimePolicy(rawValue: try r.u8()) else { throw TetherError(.malformedMessage, "bad policy") }
            let b = Int(try r.u8())
            guard b < BackendKind.allCases.count else { throw TetherError(.malformedMessage, "bad backend") }
            reply = .hello(HelloReply(space: space, pid: pid, policy: policy, backend: BackendKind.allCases[b], deviceName: try r.string()))
        case .mirror: reply = .mirrored(RegionID(rawValue: try r.u64()))
        case .loadModule: reply = .module(ModuleID(rawValue: try r.u64()), try moduleDescription(&r))
        case .unmirror, .unloadModule, .attachRings: reply = .done
        case .ping: reply = .pong
        case .spawn: reply = .spawned(ThreadID(rawValue: try r.u64()))
        case .join, .run: reply = .joined(try thread(&r))
        case .status: reply = .status(try thread(&r))
        case .kill, .killThread: reply = .killed(wasAlive: try r.bool())
        case .killProcess: reply = .killedProcess(threads: try r.u32())
        case .ps:
            reply = .ps(try processTable(&r))
        case .psPage:
            let table = try processTable(&r)
            let more = try r.bool()
            let cursor = PsCursor(space: try r.u64(), thread: try r.u64())
            reply = .psPage(table, next: more ? cursor : nil)
        case .timelines, .awaitTeardown:
            reply = .timelines(try timelineList(&r))
        case .timelinesPage:
            let list = try timelineList(&r)
            let next = try r.u64()
            reply = .timelinesPage(list, next: next == 0 ? nil : next)
        case .error: reply = .error(TetherError(TetherError.Code(rawValue: try r.u16()), try r.string()))
        case .ringDoorbell: throw TetherError(.malformedMessage, "ringDoorbell is never answered")
        }
        try r.expectEnd()
        return (h.requestID, reply)
    }

    static func processTable(_ r: inout WireReader) throws(TetherError) -> ProcessTable {
            let b = Int(try r.u8())
            guard b < BackendKind.allCases.count else { throw TetherError(.malformedMessage, "bad backend") }
            let name = try r.string()
            guard let policy = LifetimePolicy(rawValue: try r.u8()) else { throw TetherError(.malformedMessage, "bad policy") }
            let n = Int(try r.u32())
            var spaces: [SpaceReport] = []
            for _ in 0..<min(n, 1 << 16) {
                let space = SpaceID(rawValue: try r.u64())
                let pid = Int32(bitPattern: try r.u32())
                let uid = try r.u32()
                guard let p = LifetimePolicy(rawValue: try r.u8()) else { throw TetherError(.malformedMessage, "bad policy") }
                let alive = try r.bool()
                let connections = try r.u32()
                let regions = try r.u32()
                let bytes = try r.u64()
                let nanos = try r.u64()
                let tn = Int(try r.u32())
                var threads: [ThreadReport] = []
                for _ in 0..<min(tn, 1 << 16) { threads.append(try thread(&r)) }
                spaces.append(SpaceReport(space: space, pid: pid, uid: uid, policy: p, ownerAlive: alive, connections: connections,
                                          regions: regions, mirroredBytes: bytes, deviceNanos: nanos, threads: threads))
            }
            return ProcessTable(backend: BackendKind.allCases[b], deviceName: name, policy: policy, spaces: spaces)
    }

    static func timelineList(_ r: inout WireReader) throws(TetherError) -> [TeardownTimeline] {
            let n = Int(try r.u32())
            var list: [TeardownTimeline] = []
            for _ in 0..<min(n, 1 << 16) {
                list.append(TeardownTimeline(space: SpaceID(rawValue: try r.u64()), pid: Int32(bitPattern: try r.u32()),
                                             reason: try r.string(), noticeNanos: try r.u64(), quiescedNanos: try r.u64(),
                                             releasedNanos: try r.u64(), threadsKilled: try r.u32(), regionsFreed: try r.u32(),
                                             bytesFreed: try r.u64()))
            }
            return list
    }
}
