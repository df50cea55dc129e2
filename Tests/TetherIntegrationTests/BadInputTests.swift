import CTetherLinux
import Glibc
import Tether
import TetherCore
import TetherSys
import Testing

/// Bad input gets a clear error and loses nothing: the daemon stays up and other clients go on.
@Suite(.serialized) struct BadInputTests {
    @Test("malformed, truncated, oversized and unknown messages get error replies; the daemon and other clients carry on")
    func malformedMessages() throws {
        let daemon = try TestDaemon()
        let bystander = try Device(daemon.options())
        let memory = try bystander.mirror(bytes: 4096)
        let fd = try daemon.rawConnection()
        let valid = MessageCodec.encode(.status(ThreadID(rawValue: 1)), id: 7)
        var badVersion = valid
        badVersion[4] = 9
        var unknownOp = valid
        unknownOp[6] = 0x33
        let cases: [([UInt8], TetherError.Code)] = [
            ([], .malformedMessage),
            ([1, 2, 3], .malformedMessage),
            (Array(valid.prefix(20)), .malformedMessage),
            (valid + [0], .malformedMessage),
            ([UInt8](repeating: 0xAB, count: 64), .malformedMessage),
            (badVersion, .protocolVersion),
            (unknownOp, .malformedMessage),
            ([UInt8](repeating: 0, count: Wire.maxMessageBytes + 100), .malformedMessage),
        ]
        for (bytes, code) in cases {
            try SeqPacketSocket.send(fd.raw, bytes)
            #expect(errorCode(rawReply(fd.raw)) == code, "for \(bytes.count) bytes")
        }
        // Still the same connection, still answered.
        #expect(errorCode(rawRequest(fd.raw, .status(ThreadID(rawValue: 1)))) == .noSuchThread)
        // The bystander was untouched.
        let x = memory.base.bindMemory(to: Float.self, capacity: 512)
        for i in 0..<512 { x[i] = 1 }
        let t = try bystander.spawn(.saxpy, args: [256, UInt64(Float(1).bitPattern), memory.address, memory.address + 1024], groups: 1)
        #expect(try bystander.wait(t, timeoutSeconds: 10).state == .finished)
        #expect(x[300] == 2)
    }

    @Test("pointers outside every region, unknown kernels, wrong argument counts and absurd grids are refused clearly")
    func badSpawns() throws {
        let daemon = try TestDaemon()
        let device = try Device(daemon.options())
        let memory = try device.mirror(bytes: 8192)
        let inside = memory.address
        func code(_ body: () throws -> Void) -> TetherError.Code? {
            do { try body(); return nil } catch let e as TetherError { return e.code } catch { return nil }
        }
        #expect(code { _ = try device.spawn(.saxpy, args: [16, 0, inside, 0xdead_0000], groups: 1) } == .addressFault)
        #expect(code { _ = try device.spawn(.saxpy, args: [16, 0, inside], groups: 1) } == .invalidArgument)
        #expect(code { _ = try device.spawn(.spin, args: [1], groups: 0) } == .gridTooLarge)
        #expect(code { _ = try device.spawn(.spin, args: [1], groups: UInt32.max) } == .gridTooLarge)
        // Unknown kernel number, straight on the wire.
        let fd = try daemon.rawConnection()
        var bytes = MessageCodec.encode(.spawn(SpawnRequest(program: .builtin(.spin), args: [1], groups: 1)), id: 5)
        bytes[Wire.headerBytes + 1] = 200
        try SeqPacketSocket.send(fd.raw, bytes)
        #expect(errorCode(rawReply(fd.raw)) == .unknownKernel)
        // A user module on the software backend: a clear "needs Vulkan"; the pointer-ABI SPIR-V path
        // is refused before that, without --allow-raw-pointers.
        #expect(code { _ = try device.loadModule(spirv: [0x0723_0203, 0x0001_0500, 0, 1, 0]) } == .unsupported)
        #expect(code { _ = try device.spawn(spirv: [0x0723_0203, 0], invocationsPerGroup: 1, args: [], groups: 1) } == .permissionDenied)
    }

    @Test("an access that runs past its region faults on the device: an error for the thread, never a crash")
    func deviceFault() throws {
        let daemon = try TestDaemon()
        let device = try Device(daemon.options())
        let memory = try device.mirror(bytes: 4096)
        // n = 100,000 floats from the region's base: the pointers are inside, the arrays are not.
        let t = try device.spawn(.saxpy, args: [100_000, 0, memory.address, memory.address], groups: 391)
        let r = try device.wait(t, timeoutSeconds: 10)
        #expect(r.state == .faulted)
        #expect(r.error?.code == .addressFault)
        // The daemon is fine.
        let ok = try device.spawn(.spin, args: [1], groups: 1)
        #expect(try device.wait(ok, timeoutSeconds: 10).state == .finished)
    }

    @Test("mirror refuses a missing fd, an unsealed memfd, a non-memfd and misaligned ranges")
    func badMirrors() throws {
        let daemon = try TestDaemon()
        let fd = try daemon.rawConnection()
        #expect(errorCode(rawRequest(fd.raw, .mirror(ownerBase: 0x10000, size: 4096))) == .invalidArgument)
        let unsealed = tether_memfd_create("x", 0)
        ftruncate(unsealed, 4096)
        #expect(errorCode(rawRequest(fd.raw, .mirror(ownerBase: 0x10000, size: 4096), fds: [unsealed])) == .invalidArgument)
        close(unsealed)
        let sealed = try Memfd.create(name: "t", size: 8192)
        #expect(errorCode(rawRequest(fd.raw, .mirror(ownerBase: 0x10001, size: 4096), fds: [sealed.raw])) == .invalidArgument)
        #expect(errorCode(rawRequest(fd.raw, .mirror(ownerBase: 0x10000, size: 1 << 20), fds: [sealed.raw])) == .invalidArgument)
        let good = rawRequest(fd.raw, .mirror(ownerBase: 0x10000, size: 8192), fds: [sealed.raw])
        if case .mirrored? = good {} else {
            Issue.record("a good mirror was refused: \(String(describing: good))")
        }
        #expect(errorCode(rawRequest(fd.raw, .mirror(ownerBase: 0x11000, size: 4096), fds: [sealed.raw])) == .invalidArgument,
                "overlapping regions")
    }

    @Test("a client asking for a backend the daemon does not serve gets backendUnavailable")
    func wrongBackend() throws {
        let daemon = try TestDaemon(backend: "software")
        #expect(throws: TetherError.self) { try Device(DeviceOptions(socketPath: daemon.socketPath, backend: .vulkan)) }
    }

    @Test("no daemon at the socket: a clear deviceLost, at once")
    func noDaemon() {
        let start = monotonicNanos()
        do {
            _ = try Device(DeviceOptions(socketPath: "/tmp/tether-no-such-daemon.sock"))
            Issue.record("connected to nothing")
        } catch {
            #expect(error.code == .deviceLost)
            #expect(error.message.contains("/tmp/tether-no-such-daemon.sock"))
        }
        #expect(monotonicNanos() - start < 1_000_000_000)
    }

    @Test("kill: a thread killed through the library or tether kill is reported killed; others' work is untouched")
    func kills() throws {
        let daemon = try TestDaemon()
        let device = try Device(daemon.options())
        let a = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        let b = try device.spawn(.spin, args: [60_000], groups: 64, persistentSeconds: 600)
        #expect(try device.kill(a))
        #expect(try device.kill(a) == false, "a second kill finds it dead")
        #expect(try device.wait(a, timeoutSeconds: 5).state == .killed)
        #expect(try daemon.control().killThread(b.id))
        #expect(try device.wait(b, timeoutSeconds: 5).state == .killed)
        // A joined thread is reaped, like a waited-for process.
        #expect(throws: TetherError.self) { try device.status(a) }
        let c = try device.spawn(.spin, args: [1], groups: 1)
        #expect(try device.wait(c, timeoutSeconds: 5).state == .finished)
    }
}
