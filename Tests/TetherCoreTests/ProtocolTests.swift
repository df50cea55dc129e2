import Testing
import TetherCore

/// The wire protocol: every message survives a round trip, and no input — truncated, padded,
/// from another version, or random — makes a decoder trap. The daemon decodes whatever any
/// local process sends it, so "throws a TetherError" is the only acceptable failure.
@Suite("Protocol")
struct ProtocolTests {
    // MARK: - Samples

    static let report = ThreadReport(thread: ThreadID(rawValue: 7), kernel: "saxpy", state: .finished,
                                     deviceNanos: 123_456_789, priority: .high)
    static let faulted = ThreadReport(thread: ThreadID(rawValue: .max), kernel: "listwalk", state: .faulted, deviceNanos: 0,
                                      priority: .low, error: TetherError(.addressFault, "address 0xdead is outside every mirrored region"))
    static let timeline = TeardownTimeline(space: SpaceID(rawValue: 3), pid: 4242, reason: "ownerExit", noticeNanos: 1_000,
                                           quiescedNanos: 2_000, releasedNanos: 3_000, threadsKilled: 2, regionsFreed: 5,
                                           bytesFreed: 1 << 30)

    /// At least one of every request, with edge values.
    static let requests: [Request] = {
        var list: [Request] = []
        for policy in [nil] + LifetimePolicy.allCases.map(Optional.some) {
            for backend in BackendChoice.allCases { list.append(.hello(policy: policy, backend: backend)) }
        }
        list += [
            .mirror(ownerBase: 0x7F12_3456_7000, size: 1 << 20),
            .mirror(ownerBase: .max, size: 0),
            .unmirror(RegionID(rawValue: 9)),
            .join(ThreadID(rawValue: 1)),
            .kill(ThreadID(rawValue: .max)),
            .status(ThreadID(rawValue: 0)),
            .ps,
            .killProcess(pid: 31337),
            .killProcess(pid: -1),
            .killThread(ThreadID(rawValue: 12)),
            .timelines(pid: 0),
            .timelines(pid: .min),
            .ping,
            .awaitTeardown(pid: 55, timeoutMillis: 2_500),
            .awaitTeardown(pid: 0, timeoutMillis: .max),
            .psPage(afterSpace: 0, afterThread: 0),
            .psPage(afterSpace: .max, afterThread: 7),
            .timelinesPage(pid: 0, after: 0),
            .timelinesPage(pid: -3, after: .max),
        ]
        for kernel in BuiltinKernel.allCases {
            for priority in PriorityClass.allCases {
                list.append(.spawn(SpawnRequest(program: .builtin(kernel), args: Array(0..<UInt64(kernel.argumentCount)),
                                                groups: 65_536, persistentNanos: 0, priority: priority)))
            }
        }
        list += [
            .spawn(SpawnRequest(program: .builtin(.spin), args: [65_535], groups: .max, persistentNanos: .max, priority: .low)),
            .spawn(SpawnRequest(program: .builtin(.saxpy), args: [], groups: 0)),
            .spawn(SpawnRequest(program: .builtin(.matmul), args: Array(repeating: .max, count: KernelABI.maxArguments), groups: 1)),
            .spawn(SpawnRequest(program: .spirv(words: [0x0723_0203, 0x0001_0500, 0, 1, 2, 3], invocationsPerGroup: 64),
                                args: [1, 2, 3], groups: 4, persistentNanos: 5_000_000, priority: .high)),
            .spawn(SpawnRequest(program: .spirv(words: [], invocationsPerGroup: 0), args: [], groups: 1)),
            .run(SpawnRequest(program: .builtin(.reduce), args: [1 << 20, 0x1000, 0x2000], groups: 512, priority: .high)),
            .run(SpawnRequest(program: .spirv(words: [0x0723_0203, 7], invocationsPerGroup: 32), args: [9], groups: 2,
                              persistentNanos: 1, priority: .low)),
            .loadModule(words: [0x0723_0203, 0x0001_0500, 0, 9, 0], entryPoint: ""),
            .loadModule(words: [], entryPoint: "reduce_ünïcødé"),
            .unloadModule(ModuleID(rawValue: .max)),
            .attachRings(sqEntries: 256, cqEntries: .max),
            .ringDoorbell,
            .spawn(SpawnRequest(program: .module(ModuleLaunch(module: ModuleID(rawValue: 3), bindings: [
                BufferBinding(set: 0, binding: 0, address: 0x7F00_0000_1000, bytes: 4096),
                BufferBinding(set: 7, binding: .max, address: .max, bytes: 0),
            ], pushConstants: Array(0..<128), specialization: [.uint(0, 64), .double(9, -1.5), .bool(2, true)],
            grid: Grid(65_535, 3, 1))), args: [], groups: 196_605, priority: .high)),
            .run(SpawnRequest(program: .module(ModuleLaunch(module: ModuleID(rawValue: 1), bindings: [], grid: Grid(0, 0, 0))),
                              args: [], groups: 0)),
        ]
        return list
    }()

    /// At least one of every reply, with edge values.
    static let replies: [Reply] = {
        var list: [Reply] = []
        for backend in BackendKind.allCases {
            for policy in LifetimePolicy.allCases {
                list.append(.hello(HelloReply(space: SpaceID(rawValue: 1), pid: 100, policy: policy, backend: backend,
                                              deviceName: "llvmpipe (LLVM 15.0.6, 256 bits) — ünïcødé")))
            }
        }
        list += [
            .hello(HelloReply(space: SpaceID(rawValue: .max), pid: -5, policy: .exit, backend: .software, deviceName: "")),
            .mirrored(RegionID(rawValue: 77)),
            .module(ModuleID(rawValue: 5), ModuleDescription(
                entryPoint: "main", localSize: [64, 1, 1], localSizeSpecIDs: [0, nil, nil], pushConstantBytes: 16,
                bindings: [.init(set: 0, binding: 1, kind: .uniform, minBytes: 12, runtimeStride: 0, name: "Params"),
                           .init(set: 2, binding: 0, kind: .storage, minBytes: 0, runtimeStride: 4, name: "")],
                specConstants: [.init(id: 0, type: .uint32, defaultBits: 64, name: "GROUP"),
                                .init(id: 3, type: .float64, defaultBits: 0x3FF0_0000_0000_0000, name: "scale")],
                usesNumWorkgroups: true)),
            .done,
            .spawned(ThreadID(rawValue: 99)),
            .joined(report),
            .joined(faulted),
            .killed(wasAlive: true),
            .killed(wasAlive: false),
            .status(report),
            .status(ThreadReport(thread: ThreadID(rawValue: 2), kernel: "", state: .queued, deviceNanos: 0, priority: .normal)),
            .ps(ProcessTable(backend: .vulkan, deviceName: "NVIDIA H100", policy: .release, spaces: [])),
            .psPage(ProcessTable(backend: .vulkan, deviceName: "gpu", policy: .exit, spaces: []), next: nil),
            .psPage(ProcessTable(backend: .software, deviceName: "software", policy: .exit, spaces: [
                SpaceReport(space: SpaceID(rawValue: 1), pid: 10, uid: 1000, policy: .exit, ownerAlive: true, connections: 1,
                            regions: 0, mirroredBytes: 0, deviceNanos: 5, threads: [report]),
            ]), next: PsCursor(space: 1, thread: 9)),
            .ps(ProcessTable(backend: .software, deviceName: "software", policy: .exit, spaces: [
                SpaceReport(space: SpaceID(rawValue: 1), pid: 10, uid: 1000, policy: .exit, ownerAlive: true, connections: 2,
                            regions: 3, mirroredBytes: 1 << 24, deviceNanos: 5, threads: [report, faulted]),
                SpaceReport(space: SpaceID(rawValue: 2), pid: 11, uid: 0, policy: .release, ownerAlive: false, connections: 0,
                            regions: 0, mirroredBytes: 0, deviceNanos: 0, threads: []),
            ])),
            .killedProcess(threads: 4),
            .timelines([]),
            .timelinesPage([], next: nil),
            .timelinesPage([timeline], next: 42),
            .timelines([timeline, TeardownTimeline(space: SpaceID(rawValue: 4), pid: 1, reason: "kill", noticeNanos: .max,
                                                   quiescedNanos: 0, releasedNanos: 0, threadsKilled: 0, regionsFreed: 0, bytesFreed: 0)]),
            .pong,
            .error(TetherError(.notOwner, "pid 12 does not own this connection (it belongs to pid 11); open a new Device")),
            .error(TetherError(TetherError.Code(rawValue: 999), "a code this build does not know")),
        ]
        return list
    }()

    static func encodedRequests() -> [[UInt8]] { requests.enumerated().map { MessageCodec.encode($1, id: UInt64($0) &* 0x9E37_79B9) } }
    static func encodedReplies() -> [[UInt8]] { replies.enumerated().map { MessageCodec.encode($1, id: UInt64($0) &* 0x9E37_79B9) } }

    // MARK: - Round trips

    @Test func samplesCoverEveryOp() {
        let requestOps = Set(Self.requests.map(\.op))
        #expect(requestOps == Set(Op.allCases).subtracting([.error]), "add a sample for the new request")
        // Replies: every op except those answered with another op's reply (run → joined,
        // killThread → killed, awaitTeardown → timelines, unloadModule and attachRings → done;
        // ringDoorbell is never answered).
        var replyOps = Set<UInt16>()
        for bytes in Self.encodedReplies() { replyOps.insert(UInt16(bytes[6]) | UInt16(bytes[7]) << 8) }
        let unshared = Op.allCases.filter { ![.run, .killThread, .awaitTeardown, .unloadModule, .attachRings, .ringDoorbell].contains($0) }
        #expect(replyOps == Set(unshared.map { $0.rawValue | Wire.replyBit }), "add a sample for the new reply")
    }

    @Test func everyRequestRoundTrips() throws {
        for (i, request) in Self.requests.enumerated() {
            for id: UInt64 in [0, UInt64(i), .max] {
                let bytes = MessageCodec.encode(request, id: id)
                #expect(bytes.count <= Wire.maxMessageBytes)
                let (decodedID, decoded) = try MessageCodec.decodeRequest(bytes)
                #expect(decodedID == id)
                #expect(decoded == request)
            }
        }
    }

    @Test func everyReplyRoundTrips() throws {
        for (i, reply) in Self.replies.enumerated() {
            for id: UInt64 in [0, UInt64(i), .max] {
                let (decodedID, decoded) = try MessageCodec.decodeReply(MessageCodec.encode(reply, id: id))
                #expect(decodedID == id)
                #expect(decoded == reply)
            }
        }
    }

    @Test func opsAnsweredWithAnotherOpsReplyDecodeToIt() throws {
        // run is answered like join, killThread like kill, awaitTeardown like timelines: the
        // reply's op picks the body's shape, and both ops of a pair decode to the same case.
        let pairs: [(Op, Reply)] = [
            (.join, .joined(Self.faulted)), (.run, .joined(Self.faulted)),
            (.kill, .killed(wasAlive: true)), (.killThread, .killed(wasAlive: true)),
            (.timelines, .timelines([Self.timeline])), (.awaitTeardown, .timelines([Self.timeline])),
        ]
        for (op, reply) in pairs {
            let body = MessageCodec.encode(reply, id: 3)[Wire.headerBytes...]
            let (id, decoded) = try MessageCodec.decodeReply(message(op: op.rawValue | Wire.replyBit, id: 3, body: Array(body)))
            #expect(id == 3)
            #expect(decoded == reply, "\(op)")
        }
    }

    @Test func theLargestSpirvKernelFitsOneMessage() throws {
        let words = (0..<Wire.maxSpirvWords).map { UInt32(truncatingIfNeeded: $0 &* 2_654_435_761) }
        let request = Request.spawn(SpawnRequest(program: .spirv(words: words, invocationsPerGroup: 256),
                                                 args: Array(repeating: 1, count: KernelABI.maxArguments), groups: 1))
        let bytes = MessageCodec.encode(request, id: 5)
        #expect(bytes.count <= Wire.maxMessageBytes)
        #expect(try MessageCodec.decodeRequest(bytes).1 == request)
    }

    @Test func theLargestModuleWithTheLongestEntryNameFitsOneMessage() throws {
        let words = (0..<Wire.maxSpirvWords).map { UInt32(truncatingIfNeeded: $0 &* 2_654_435_761) }
        let request = Request.loadModule(words: words, entryPoint: String(repeating: "e", count: Wire.maxEntryPointBytes))
        let bytes = MessageCodec.encode(request, id: 5)
        #expect(bytes.count <= Wire.maxMessageBytes)
        #expect(try MessageCodec.decodeRequest(bytes).1 == request)
    }

    @Test func stringsAreCappedAtTheProtocolLimit() throws {
        let exact = String(repeating: "a", count: Wire.maxStringBytes)
        let long = exact + "overflow"
        func name(_ s: String) throws -> String {
            let reply = Reply.hello(HelloReply(space: SpaceID(rawValue: 1), pid: 1, policy: .exit, backend: .software, deviceName: s))
            guard case .hello(let h) = try MessageCodec.decodeReply(MessageCodec.encode(reply, id: 1)).1 else {
                Issue.record("not a hello")
                return ""
            }
            return h.deviceName
        }
        #expect(try name(exact) == exact)
        #expect(try name(long) == exact)
    }

    // MARK: - Malformed input

    private func expectCode(_ code: TetherError.Code, _ what: Comment, _ body: () throws(TetherError) -> Void) {
        do throws(TetherError) {
            try body()
            Issue.record("decoded without an error: \(what)")
        } catch {
            #expect(error.code == code, "\(what): \(error)")
        }
    }

    private func request(_ bytes: [UInt8], _ what: Comment) {
        expectCode(.malformedMessage, what) { () throws(TetherError) in _ = try MessageCodec.decodeRequest(bytes) }
    }

    private func reply(_ bytes: [UInt8], _ what: Comment) {
        expectCode(.malformedMessage, what) { () throws(TetherError) in _ = try MessageCodec.decodeReply(bytes) }
    }

    /// A message with a valid header for `op` and the given body.
    private func message(op: UInt16, version: UInt16 = Wire.version, id: UInt64 = 1, body: [UInt8] = []) -> [UInt8] {
        var w = WireWriter()
        w.u32(Wire.magic)
        w.u16(version)
        w.u16(op)
        w.u64(id)
        return w.bytes + body
    }

    @Test func emptyAndTruncatedHeadersAreMalformed() {
        let header = message(op: Op.ping.rawValue)
        #expect(header.count == Wire.headerBytes)
        for n in 0..<Wire.headerBytes {
            request(Array(header.prefix(n)), "request header of \(n) bytes")
            reply(Array(header.prefix(n)), "reply header of \(n) bytes")
        }
    }

    @Test func badMagicIsMalformed() {
        for flip in 0..<4 {
            var bytes = MessageCodec.encode(.ping, id: 1)
            bytes[flip] ^= 0x20
            request(bytes, "magic byte \(flip) flipped")
            var r = MessageCodec.encode(.pong, id: 1)
            r[flip] ^= 0x20
            reply(r, "reply magic byte \(flip) flipped")
        }
    }

    @Test func anotherVersionIsAProtocolVersionError() {
        for version: UInt16 in [0, Wire.version + 1, .max] {
            let req = message(op: Op.ping.rawValue, version: version)
            expectCode(.protocolVersion, "request v\(version)") { () throws(TetherError) in _ = try MessageCodec.decodeRequest(req) }
            let rep = message(op: Op.ping.rawValue | Wire.replyBit, version: version)
            expectCode(.protocolVersion, "reply v\(version)") { () throws(TetherError) in _ = try MessageCodec.decodeReply(rep) }
        }
        // The sentence tells the user what to do.
        do throws(TetherError) {
            _ = try MessageCodec.decodeRequest(message(op: Op.ping.rawValue, version: 9))
        } catch {
            #expect(error.message.contains("matching tether builds"))
        }
    }

    @Test func everyStrictPrefixOfASpawnIsMalformed() {
        let spawns = Self.requests.filter { $0.op == .spawn || $0.op == .run }
        #expect(spawns.count > 2)
        for spawn in spawns {
            let bytes = MessageCodec.encode(spawn, id: 42)
            for n in 0..<bytes.count {
                request(Array(bytes.prefix(n)), "\(n) of \(bytes.count) bytes of \(spawn)")
            }
        }
    }

    @Test func everyStrictPrefixOfAReplyWithABodyIsMalformed() {
        for (reply, bytes) in zip(Self.replies, Self.encodedReplies()) where bytes.count > Wire.headerBytes {
            for n in 0..<bytes.count {
                self.reply(Array(bytes.prefix(n)), "\(n) of \(bytes.count) bytes of \(reply)")
            }
        }
    }

    @Test func trailingBytesAreMalformed() {
        for (request, bytes) in zip(Self.requests, Self.encodedRequests()) {
            self.request(bytes + [0], "\(request) + 1 byte")
            self.request(bytes + Array(repeating: 0xFF, count: 9), "\(request) + 9 bytes")
        }
        for (reply, bytes) in zip(Self.replies, Self.encodedReplies()) {
            self.reply(bytes + [0], "\(reply) + 1 byte")
        }
    }

    @Test func unknownOpsAreMalformed() {
        let known = Set(Op.allCases.map(\.rawValue))
        for op in [UInt16(0), 8, 19, 26, 99, 0x7FFE, 0x7FFF - 1].filter({ !known.contains($0) }) {
            request(message(op: op), "request op \(op)")
            reply(message(op: op | Wire.replyBit), "reply op \(op)")
        }
        // An error is never a request, a reply is never a request, a request is never a reply.
        request(message(op: Op.error.rawValue, body: [0, 0, 0, 0, 0, 0]), "error as a request")
        for bytes in Self.encodedReplies() { request(bytes, "a reply decoded as a request") }
        for bytes in Self.encodedRequests() { reply(bytes, "a request decoded as a reply") }
    }

    @Test func oversizedArraysAreMalformed() {
        // 12 kernel arguments: one more than the ABI has room for.
        var w = WireWriter()
        w.u8(0)
        w.u8(0)
        w.u64s(Array(repeating: 1, count: KernelABI.maxArguments + 1))
        w.u32(1)
        w.u64(0)
        w.u8(1)
        request(message(op: Op.spawn.rawValue, body: w.bytes), "12 arguments")

        // A count that claims more elements than the message holds (and more than memory would).
        for count: UInt32 in [1, 2, UInt32(KernelABI.maxArguments), 0x7FFF_FFFF, .max] {
            var a = WireWriter()
            a.u8(0)
            a.u8(0)
            a.u32(count)
            request(message(op: Op.spawn.rawValue, body: a.bytes), "args count \(count) with no elements")
            var s = WireWriter()
            s.u8(1)
            s.u32(64)
            s.u32(count)
            request(message(op: Op.spawn.rawValue, body: s.bytes), "spirv count \(count) with no words")
        }

        // More SPIR-V words than one message may carry, even if they are all there.
        var big = WireWriter()
        big.u8(1)
        big.u32(64)
        big.u32s(Array(repeating: 0, count: Wire.maxSpirvWords + 1))
        big.u64s([])
        big.u32(1)
        big.u64(0)
        big.u8(1)
        request(message(op: Op.spawn.rawValue, body: big.bytes), "maxSpirvWords + 1 words")

        // Whole messages over the limit are refused before parsing.
        request(MessageCodec.encode(.ping, id: 1) + Array(repeating: 0, count: Wire.maxMessageBytes), "oversized message")

        // Replies whose counts overrun the message: spaces, threads, timelines, strings.
        var ps = WireWriter()
        ps.u8(0)
        ps.string("gpu")
        ps.u8(0)
        ps.u32(.max)
        reply(message(op: Op.ps.rawValue | Wire.replyBit, body: ps.bytes), "ps with 2^32-1 spaces and none present")
        reply(message(op: Op.timelines.rawValue | Wire.replyBit, body: [0xFF, 0xFF, 0xFF, 0xFF]), "2^32-1 timelines")
        var longString = WireWriter()
        longString.u64(1)
        longString.u32(1)
        longString.u8(0)
        longString.u8(0)
        longString.u32(UInt32(Wire.maxStringBytes + 1))
        reply(message(op: Op.hello.rawValue | Wire.replyBit, body: longString.bytes + Array(repeating: 0x61, count: Wire.maxStringBytes + 1)),
              "device name over maxStringBytes")
    }

    @Test func unknownEnumValuesAreMalformed() {
        request(message(op: Op.hello.rawValue, body: [7, 0]), "unknown policy")
        request(message(op: Op.hello.rawValue, body: [0xFF, UInt8(BackendChoice.allCases.count)]), "unknown backend")
        request(message(op: Op.spawn.rawValue, body: [2]), "unknown program kind")
        var prio = WireWriter()
        prio.u8(0)
        prio.u8(0)
        prio.u64s([])
        prio.u32(1)
        prio.u64(0)
        prio.u8(UInt8(PriorityClass.allCases.count))
        request(message(op: Op.spawn.rawValue, body: prio.bytes), "unknown priority")
        reply(message(op: Op.kill.rawValue | Wire.replyBit, body: [2]), "boolean 2")
        var state = WireWriter()
        state.u64(1)
        state.string("k")
        state.u8(6)
        state.u64(0)
        state.u8(0)
        state.bool(false)
        reply(message(op: Op.status.rawValue | Wire.replyBit, body: state.bytes), "unknown thread state")
    }

    @Test func anUnknownBuiltinKernelNamesTheKnownOnes() {
        var w = WireWriter()
        w.u8(0)
        w.u8(UInt8(BuiltinKernel.allCases.count))
        w.u64s([])
        w.u32(1)
        w.u64(0)
        w.u8(1)
        let bytes = message(op: Op.spawn.rawValue, body: w.bytes)
        do throws(TetherError) {
            _ = try MessageCodec.decodeRequest(bytes)
            Issue.record("decoded an unknown kernel")
        } catch {
            #expect(error.code == .unknownKernel)
            #expect(error.message.contains("saxpy"))
        }
    }

    // MARK: - Fuzz

    /// Random mutations of valid messages, with fixed seeds so a failure reproduces. A decoder
    /// must either return a value that survives its own round trip, or throw one of the
    /// protocol's decoding errors; trapping would end the test process.
    @Test(arguments: [1, 2, 3, 0xC0FFEE] as [UInt64])
    func randomMutationsNeverTrap(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let corpus = Self.encodedRequests() + Self.encodedReplies()
        let decodingCodes: Set<TetherError.Code> = [.malformedMessage, .protocolVersion, .unknownKernel]
        var decoded = 0
        var refused = 0
        for _ in 0..<2_000 {
            var bytes = corpus[Int(rng.next(below: UInt64(corpus.count)))]
            mutate(&bytes, &rng)
            for asRequest in [true, false] {
                do throws(TetherError) {
                    if asRequest {
                        let (id, request) = try MessageCodec.decodeRequest(bytes)
                        let again = try MessageCodec.decodeRequest(MessageCodec.encode(request, id: id))
                        #expect(again.0 == id && again.1 == request, "request round trip after decoding \(bytes)")
                    } else {
                        let (id, reply) = try MessageCodec.decodeReply(bytes)
                        let again = try MessageCodec.decodeReply(MessageCodec.encode(reply, id: id))
                        #expect(again.0 == id && again.1 == reply, "reply round trip after decoding \(bytes)")
                    }
                    decoded += 1
                } catch {
                    #expect(decodingCodes.contains(error.code), "unexpected \(error) for \(bytes)")
                    refused += 1
                }
            }
        }
        // Both outcomes must occur, or the mutations are too timid (or too wild) to test much.
        #expect(decoded > 50, "only \(decoded) mutated messages decoded")
        #expect(refused > 50, "only \(refused) mutated messages were refused")
    }

    private func mutate(_ bytes: inout [UInt8], _ rng: inout SplitMix64) {
        let rounds = 1 + Int(rng.next(below: 3))
        for _ in 0..<rounds {
            // Mostly the body: a header mutation is refused at once and tests little.
            let start = bytes.count > Wire.headerBytes && rng.next(below: 4) != 0 ? Wire.headerBytes : 0
            let span = UInt64(max(bytes.count - start, 1))
            func position(_ rng: inout SplitMix64) -> Int { start + Int(rng.next(below: span)) }
            switch rng.next(below: 7) {
            case 0 where !bytes.isEmpty:  // flip one bit
                let i = min(position(&rng), bytes.count - 1)
                bytes[i] ^= UInt8(1) << UInt8(rng.next(below: 8))
            case 1 where !bytes.isEmpty:  // a random byte
                let i = min(position(&rng), bytes.count - 1)
                bytes[i] = UInt8(truncatingIfNeeded: rng.next())
            case 2:  // truncate
                bytes.removeLast(Int(rng.next(below: UInt64(bytes.count + 1))))
            case 3:  // insert bytes
                let i = min(position(&rng), bytes.count)
                bytes.insert(contentsOf: (0..<1 + rng.next(below: 8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: i)
            case 4 where bytes.count >= 4:  // a length-like field set to an extreme
                let i = min(position(&rng), bytes.count - 4)
                let v: UInt32 = [0, 1, 0xFF, 0xFFFF, 0x7FFF_FFFF, .max, UInt32(Wire.maxSpirvWords + 1)][Int(rng.next(below: 7))]
                for k in 0..<4 { bytes[i + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) }
            case 5 where !bytes.isEmpty:  // delete a run
                let i = min(position(&rng), bytes.count - 1)
                bytes.removeSubrange(i..<min(bytes.count, i + 1 + Int(rng.next(below: 8))))
            default:  // pure random bytes, sometimes behind a valid header
                let n = Int(rng.next(below: 96))
                let body = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                bytes = rng.next(below: 2) == 0 ? body : Array(bytes.prefix(Wire.headerBytes)) + body
            }
        }
    }
}

/// The ring layout's arithmetic: what the daemon and the library check before trusting an index.
struct RingLayoutTests {
    @Test func entriesMustBePowersOfTwoInRange() throws {
        for bad: UInt32 in [0, 1, 3, 6, 8192, .max] {
            #expect(throws: TetherError.self) { try RingLayout(sqEntries: bad, cqEntries: 4) }
            #expect(throws: TetherError.self) { try RingLayout(sqEntries: 4, cqEntries: bad) }
        }
        let layout = try RingLayout(sqEntries: 2, cqEntries: 4096)
        #expect(layout.sqOffset == RingLayout.controlBytes)
        #expect(layout.cqOffset == RingLayout.controlBytes + 2 * RingLayout.slotBytes)
        #expect(layout.bytes == layout.cqOffset + 4096 * RingLayout.slotBytes)
        // Slots wrap at the ring's size, for any free-running index, the u32 wrap included.
        #expect(layout.sqSlot(0) == layout.sqSlot(2))
        #expect(layout.sqSlot(UInt32.max) == layout.sqOffset + RingLayout.slotBytes)
        #expect(layout.cqSlot(UInt32.max &+ 1) == layout.cqOffset)
    }

    @Test func pendingAndFreeRefuseImpossibleIndices() {
        #expect(RingLayout.pending(head: 5, tail: 5, entries: 8) == 0)
        #expect(RingLayout.pending(head: 5, tail: 13, entries: 8) == 8)
        #expect(RingLayout.pending(head: 5, tail: 14, entries: 8) == nil)  // more than the ring holds
        #expect(RingLayout.pending(head: 5, tail: 4, entries: 8) == nil)   // behind the head
        #expect(RingLayout.pending(head: .max - 1, tail: 2, entries: 8) == 4)  // across the u32 wrap
        #expect(RingLayout.free(head: 0, tail: 8, entries: 8) == 0)
        #expect(RingLayout.free(head: 3, tail: 8, entries: 8) == 3)
        #expect(RingLayout.free(head: 9, tail: 8, entries: 8) == nil)       // a head ahead of the tail
        // Every (head, tail) pair either names a count within the ring or is refused.
        var rng = SplitMix64(seed: 7)
        for _ in 0..<10_000 {
            let head = UInt32(truncatingIfNeeded: rng.next()), tail = UInt32(truncatingIfNeeded: rng.next())
            if let n = RingLayout.pending(head: head, tail: tail, entries: 64) { #expect(n <= 64 && head &+ n == tail) }
        }
    }

    @Test("a doorbell is excused once per submission, consumed or pending; at most `backlog` consumed without one count; the u32 wrap and a mark 2^31 behind included")
    func doorbellExcuses() {
        func excuse(_ head: UInt32, _ pending: UInt32, _ mark: UInt32) -> (excused: Bool, mark: UInt32) {
            RingLayout.excuseDoorbell(head: head, pending: pending, mark: mark, entries: 8, backlog: 64)
        }
        // One pending submission excuses one doorbell, not two.
        #expect(excuse(5, 1, 5) == (true, 6))
        #expect(excuse(5, 1, 6) == (false, 6))
        // Consumed before its doorbell was read: still excused, once.
        #expect(excuse(6, 0, 5) == (true, 6))
        #expect(excuse(6, 0, 6) == (false, 6))
        // Three consumed without a doorbell excuse three doorbells rung together.
        var mark: UInt32 = 10
        var excused = 0
        for _ in 0..<5 { let e = excuse(13, 0, mark); mark = e.mark; if e.excused { excused += 1 } }
        #expect(excused == 3)
        // A thousand consumed without one: only the last 64 count.
        mark = 0
        excused = 0
        for _ in 0..<100 { let e = excuse(1_000, 0, mark); mark = e.mark; if e.excused { excused += 1 } }
        #expect(excused == 64)
        // Across the u32 wrap, and with the mark 2^31 and more behind (a long stream without doorbells).
        #expect(excuse(2, 0, .max - 1) == (true, .max))
        #expect(excuse(2, 1, 2) == (true, 3))
        #expect(excuse(1 << 31 &+ 100, 1, 0).excused)
        #expect(excuse(.max - 100, 0, 0).excused)
        // (2^32 − 4 behind is 4 ahead: a mark is never more than `entries` ahead, so that reads as ahead.)
        #expect(!excuse(.max - 3, 0, 0).excused)
        // A mark ahead of the head (pending submissions excused already) excuses nothing more.
        #expect(excuse(5, 2, 7) == (false, 7))
        #expect(excuse(5, 0, 7) == (false, 7))
        // Any (head, pending, mark) the invariants allow: excused at most once per submission.
        var rng = SplitMix64(seed: 11)
        for _ in 0..<10_000 {
            let head = UInt32(truncatingIfNeeded: rng.next()), pending = UInt32(rng.next() % 9)
            let m = head &+ UInt32(truncatingIfNeeded: rng.next() % 200) &- 100
            let e = excuse(head, pending, m)
            if e.excused { #expect(e.mark &- 1 &- head < pending || head &- e.mark < 64) }
            #expect(e.mark &- head <= 8 || head &- e.mark <= 64 || e.mark == m)
        }
    }

    @Test func slotsRoundTripAndRefuseBadLengths() throws {
        let slot = UnsafeMutableRawPointer.allocate(byteCount: RingLayout.slotBytes, alignment: 8)
        defer { slot.deallocate() }
        let request = MessageCodec.encode(.run(SpawnRequest(program: .builtin(.saxpy), args: [1, 2, 3, 4], groups: 8)), id: RingRequestID.bit | 3)
        #expect(RingSlot.write(request, to: slot))
        #expect(try RingSlot.read(from: slot) == request)
        #expect(try MessageCodec.decodeRequest(RingSlot.read(from: slot)).0 == RingRequestID.bit | 3)
        #expect(!RingSlot.write([UInt8](repeating: 1, count: RingLayout.maxPacketBytes + 1), to: slot))
        #expect(RingSlot.write([], to: slot))
        #expect(try RingSlot.read(from: slot) == [])
        slot.storeBytes(of: UInt32(RingLayout.maxPacketBytes + 1).littleEndian, as: UInt32.self)
        #expect(throws: TetherError.self) { try RingSlot.read(from: slot) }
        slot.storeBytes(of: UInt32.max, as: UInt32.self)
        #expect(throws: TetherError.self) { try RingSlot.read(from: slot) }
        // The largest built-in spawn fits a slot.
        let largest = MessageCodec.encode(.spawn(SpawnRequest(program: .builtin(.matmul), args: Array(repeating: .max, count: KernelABI.maxArguments),
                                                              groups: 1, persistentNanos: 1)), id: .max)
        #expect(largest.count <= RingLayout.maxPacketBytes)
    }

    @Test func completionsSpanSlotsAcrossTheWrapAndAreBoundedByTheTail() throws {
        let layout = try RingLayout(sqEntries: 2, cqEntries: 8)
        let base = UnsafeMutableRawPointer.allocate(byteCount: layout.bytes, alignment: 64)
        defer { base.deallocate() }
        // A reply of three slots written at index 6 of 8: slots 6, 7, 0 (and the u32 wrap).
        let reply = (0..<(2 * RingLayout.maxPacketBytes + 7)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(RingSlot.count(forMessageBytes: reply.count) == 3)
        #expect(RingSlot.count(forMessageBytes: 0) == 1)
        #expect(RingSlot.count(forMessageBytes: RingLayout.maxPacketBytes) == 1)
        for start: UInt32 in [6, .max - 1] {
            RingSlot.writeCompletion(reply, at: start, layout: layout, base: base)
            let read = try RingSlot.readCompletion(at: start, available: 3, layout: layout, base: base)
            #expect(read.bytes == reply && read.slots == 3)
            // A message that runs past what the producer published is refused, not read on.
            #expect(throws: TetherError.self) { try RingSlot.readCompletion(at: start, available: 2, layout: layout, base: base) }
        }
        // A count a slot cannot hold, with or without the continuation bit.
        base.storeBytes(of: (UInt32(RingLayout.maxPacketBytes + 1) | RingSlot.moreBit).littleEndian, toByteOffset: layout.cqSlot(0), as: UInt32.self)
        #expect(throws: TetherError.self) { try RingSlot.readCompletion(at: 0, available: 8, layout: layout, base: base) }
        // A submission slot never spans: the continuation bit makes its count impossible.
        let slot = base + layout.sqSlot(0)
        slot.storeBytes(of: (UInt32(4) | RingSlot.moreBit).littleEndian, as: UInt32.self)
        #expect(throws: TetherError.self) { try RingSlot.read(from: slot) }
    }
}
