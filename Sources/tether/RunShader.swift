import ArgumentParser
import Foundation
import Glibc
import Tether
import TetherCore
import TetherDevice
import TetherSys

/// `tether run --spirv` options.
struct ShaderOptions: ParsableArguments {
    @Option(help: "Your compute shader: SPIR-V (.spv) or GLSL (compiled with glslc where installed).")
    var spirv: String?
    @Option(help: "The compute entry point to run (default: the module's only one).") var entry: String = ""
    @Option(help: ArgumentHelp("A buffer binding: SET.BINDING=@FILE (its bytes) or SET.BINDING=zeros:BYTES. Repeat for each binding.",
                               valueName: "binding"))
    var buffer: [String] = []
    @Option(help: ArgumentHelp("Push-constant bytes from a file: @FILE.", valueName: "@file")) var push: String?
    @Option(help: ArgumentHelp("A specialization constant: ID=VALUE (bool, integer or float, by the module's type). Repeatable.",
                               valueName: "id=value"))
    var spec: [String] = []
    @Option(help: ArgumentHelp("Workgroups: X[,Y[,Z]].", valueName: "x,y,z")) var groups: String = "1"
    @Option(help: ArgumentHelp("Write a binding's bytes after the run: SET.BINDING=FILE. Repeatable.", valueName: "binding=file"))
    var output: [String] = []
}

/// What `tether run --spirv --json` prints.
struct ShaderRunReport: Encodable {
    struct BindingReport: Encodable {
        var binding: String
        var kind: String
        var bytes: Int
        var source: String
        var output: String?
    }
    var state: String
    var error: String?
    var seconds: Double
    var groups: [UInt32]
    var localSize: [UInt32]
    var entryPoint: String
    var bindings: [BindingReport]
    var backend: String
    var device: String

    /// `error` is always present (null when the thread finished), so tools can test for it.
    func encode(to encoder: any Encoder) throws {
        enum Key: String, CodingKey { case state, error, seconds, groups, localSize, entryPoint, bindings, backend, device }
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(state, forKey: .state)
        if let error { try c.encode(error, forKey: .error) } else { try c.encodeNil(forKey: .error) }
        try c.encode(seconds, forKey: .seconds)
        try c.encode(groups, forKey: .groups)
        try c.encode(localSize, forKey: .localSize)
        try c.encode(entryPoint, forKey: .entryPoint)
        try c.encode(bindings, forKey: .bindings)
        try c.encode(backend, forKey: .backend)
        try c.encode(device, forKey: .device)
    }
}

/// Runs a user's compute shader through the daemon: loads the module, lays every buffer out in one
/// mirrored region (each at a 256-byte boundary, the largest offset alignment Vulkan allows),
/// runs it and writes the requested bindings back to files.
struct ShaderRun {
    let options: ShaderOptions
    let socketPath: String?
    let backend: BackendChoice?
    let json: Bool

    struct Buffer {
        var set: UInt32
        var binding: UInt32
        var source: String
        var bytes: [UInt8]?
        var size: Int
        var offset = 0
        var name: String { "\(set).\(binding)" }
    }

    func run() throws {
        let report: ShaderRunReport
        do { report = try execute() } catch { throw fail(error.message) }
        if json {
            try printJSON(report)
        } else {
            print("\(options.spirv!) (\(report.entryPoint), \(report.groups.map(String.init).joined(separator: "×")) groups of "
                + "\(report.localSize.map { $0 == 0 ? "?" : String($0) }.joined(separator: "×"))) on \(report.device): \(report.state)"
                + (report.error.map { " — \($0)" } ?? "") + ", \(formatDouble(report.seconds * 1000, 3)) ms")
            for b in report.bindings where b.output != nil { print("  \(b.binding) → \(b.output!)") }
        }
        if report.state != ThreadState.finished.description { throw ExitCode(2) }
    }

    func execute() throws(TetherError) -> ShaderRunReport {
        let words = try loadSPIRV(options.spirv!)
        let grid = try parseGrid(options.groups)
        var buffers = try options.buffer.map(parseBuffer)
        let push = try options.push.map(readAt) ?? []
        var outputs: [(String, String)] = []
        for o in options.output {
            let parts = o.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, try parseBinding(parts[0]) != nil, !parts[1].isEmpty else {
                throw TetherError(.invalidArgument, "--output \(o): expected SET.BINDING=FILE")
            }
            guard buffers.contains(where: { $0.name == parts[0] }) else {
                throw TetherError(.invalidArgument, "--output \(parts[0]): no --buffer \(parts[0]) was given")
            }
            outputs.append((parts[0], parts[1]))
        }
        let choice = try BackendFactory.resolve(backend)
        let (device, privateDaemon) = try openDevice(socketPath: socketPath, backend: choice)
        defer {
            device.close()
            privateDaemon?.stop()
        }
        let module = try device.loadModule(spirv: words, entryPoint: options.entry)
        let d = module.description
        // The module's reflection says what it needs; say what is missing in the command's terms.
        for b in buffers where d.binding(set: b.set, binding: b.binding) == nil {
            throw TetherError(.invalidArgument, "binding \(b.name) is not in the module (it uses: \(d.bindings.map(\.description).joined(separator: ", ")))")
        }
        if let missing = d.bindings.first(where: { m in !buffers.contains { $0.set == m.set && $0.binding == m.binding } }) {
            throw TetherError(.invalidArgument, "the module uses \(missing.kind) binding \(missing)\(missing.name.isEmpty ? "" : " (\(missing.name))"), at least \(max(missing.minBytes, 1)) byte(s): give it with --buffer \(missing)=@FILE or --buffer \(missing)=zeros:BYTES")
        }
        guard push.count == Int(d.pushConstantBytes) else {
            throw TetherError(.invalidArgument, d.pushConstantBytes == 0
                ? "the module has no push constants; drop --push"
                : "the module's push-constant block is \(d.pushConstantBytes) bytes: give them with --push @FILE (got \(push.count))")
        }
        let spec = try options.spec.map { (text) throws(TetherError) -> SpecValue in try parseSpec(text, d) }
        var total = 0
        for i in buffers.indices {
            buffers[i].offset = total
            total += (buffers[i].size + 255) / 256 * 256
        }
        let memory = try device.mirror(bytes: max(total, 1))
        for b in buffers {
            let target = memory.base + b.offset
            if let bytes = b.bytes { bytes.withUnsafeBytes { target.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        }
        let bindings = buffers.map { BufferBinding(set: $0.set, binding: $0.binding, memory: memory, offset: $0.offset, bytes: $0.size) }
        let start = monotonicNanos()
        let report = try device.run(module, bindings: bindings, pushConstants: push, specialization: spec, grid: grid,
                                    timeoutSeconds: 600)
        let seconds = Double(monotonicNanos() - start) / 1e9
        for (name, path) in outputs {
            let b = buffers.first { $0.name == name }!
            let data = Data(bytes: memory.base + b.offset, count: b.size)
            do { try data.write(to: URL(fileURLWithPath: path)) } catch {
                throw TetherError(.invalidArgument, "cannot write \(path): \(error.localizedDescription)")
            }
        }
        let hello = device.hello
        return ShaderRunReport(
            state: report.state.description, error: report.error?.message, seconds: seconds, groups: [grid.x, grid.y, grid.z],
            localSize: d.localSize(with: spec), entryPoint: d.entryPoint,
            bindings: buffers.map { b in
                .init(binding: b.name, kind: d.binding(set: b.set, binding: b.binding)!.kind.description, bytes: b.size,
                      source: b.source, output: outputs.first { $0.0 == b.name }?.1)
            },
            backend: hello.backend.rawValue, device: hello.deviceName)
    }

    func loadSPIRV(_ path: String) throws(TetherError) -> [UInt32] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TetherError(.invalidArgument, "cannot read \(path): no such file, or not readable")
        }
        var bytes = [UInt8](data)
        let magic: [UInt8] = [0x03, 0x02, 0x23, 0x07]
        if Array(bytes.prefix(4)) != magic {
            bytes = try Self.compile(glsl: path).withUnsafeBytes { Array($0) }
        }
        guard bytes.count % 4 == 0, bytes.count >= 20 else {
            throw TetherError(.invalidArgument, "\(path) is not SPIR-V (its size is not a whole number of 32-bit words)")
        }
        return bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
    }

    /// GLSL through glslc, into a temporary file.
    static func compile(glsl path: String) throws(TetherError) -> [UInt32] {
        // A directory of our own (mkdtemp, mode 0700): a fixed name in a shared /tmp could be a
        // symlink another user planted.
        var template = Array((FileManager.default.temporaryDirectory.path + "/tether-run-XXXXXX").utf8CString)
        guard let dir = mkdtemp(&template) else {
            throw TetherError(.resourceExhausted, "cannot make a temporary directory for glslc's output")
        }
        let directory = String(cString: dir)
        let output = directory + "/shader.spv"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["glslc", "-fshader-stage=compute", "--target-env=vulkan1.2", "-o", output, path]
        let errors = Pipe()
        process.standardError = errors
        do { try process.run() } catch {
            throw TetherError(.invalidArgument, "\(path) is not SPIR-V, and glslc could not be started to compile it as GLSL: \(error.localizedDescription)")
        }
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0, let data = FileManager.default.contents(atPath: output) else {
            if process.terminationStatus == 127 {
                throw TetherError(.invalidArgument, "\(path) is not SPIR-V and glslc is not installed to compile it as GLSL (tools/setup installs it)")
            }
            throw TetherError(.invalidArgument, "glslc could not compile \(path): \(message.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return data.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
    }

    func parseGrid(_ text: String) throws(TetherError) -> Grid {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { UInt32($0.trimmingCharacters(in: .whitespaces)) }
        guard (1...3).contains(parts.count), parts.allSatisfy({ ($0 ?? 0) > 0 }) else {
            throw TetherError(.invalidArgument, "--groups \(text): expected X[,Y[,Z]], each a positive number of workgroups")
        }
        let v = parts.map { $0! } + [1, 1]
        return Grid(v[0], v[1], v[2])
    }

    func parseBinding(_ text: String) throws(TetherError) -> (UInt32, UInt32)? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let set = UInt32(parts[0]), let binding = UInt32(parts[1]) else { return nil }
        return (set, binding)
    }

    func parseBuffer(_ text: String) throws(TetherError) -> Buffer {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let (set, binding) = try parseBinding(parts[0]) else {
            throw TetherError(.invalidArgument, "--buffer \(text): expected SET.BINDING=@FILE or SET.BINDING=zeros:BYTES")
        }
        let value = parts[1]
        if value.hasPrefix("zeros:") {
            guard let n = Int(value.dropFirst(6)), n > 0, n <= 1 << 32 else {
                throw TetherError(.invalidArgument, "--buffer \(text): zeros: takes a positive number of bytes, at most 4 GiB")
            }
            return Buffer(set: set, binding: binding, source: value, bytes: nil, size: n)
        }
        guard value.hasPrefix("@") else {
            throw TetherError(.invalidArgument, "--buffer \(text): the contents are @FILE or zeros:BYTES")
        }
        let bytes = try readAt(value)
        guard !bytes.isEmpty else { throw TetherError(.invalidArgument, "--buffer \(text): \(value.dropFirst()) is empty") }
        return Buffer(set: set, binding: binding, source: value, bytes: bytes, size: bytes.count)
    }

    /// The bytes of `@FILE`.
    func readAt(_ text: String) throws(TetherError) -> [UInt8] {
        guard text.hasPrefix("@"), text.count > 1 else { throw TetherError(.invalidArgument, "expected @FILE, got \(text)") }
        let path = String(text.dropFirst())
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TetherError(.invalidArgument, "cannot read \(path): no such file, or not readable")
        }
        return [UInt8](data)
    }

    func parseSpec(_ text: String, _ d: ModuleDescription) throws(TetherError) -> SpecValue {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let id = UInt32(parts[0]) else {
            throw TetherError(.invalidArgument, "--spec \(text): expected ID=VALUE")
        }
        guard let constant = d.specConstant(id: id) else {
            let known = d.specConstants.map { "\($0.id) (\($0.type)\($0.name.isEmpty ? "" : " \($0.name)"))" }.joined(separator: ", ")
            throw TetherError(.invalidArgument, "--spec \(text): the module has no specialization constant \(id) (it has: \(known.isEmpty ? "none" : known))")
        }
        guard let bits = constant.parse(parts[1]) else {
            throw TetherError(.invalidArgument, "--spec \(text): \(parts[1]) is not a \(constant.type)")
        }
        return SpecValue(id: id, bits: bits)
    }
}
