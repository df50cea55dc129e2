import Foundation

public struct ShaderCompileError: Error, CustomStringConvertible {
    public let name: String
    public var description: String { "could not build Tests/Shaders/\(name)" }
}

/// The path of `Tests/Shaders/NAME.comp`.
public func testShaderPath(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Shaders/\(name).comp").path
}

/// Compiles the GLSL of `Tests/Shaders/NAME.comp` with glslc (installed by tools/setup).
public func compileTestShader(_ name: String, defines: [String] = []) throws -> [UInt32] {
    try build(name) { ["glslc", "--target-env=vulkan1.2", "-o", $0, testShaderPath(name)] + defines.map { "-D\($0)" } }
}

/// Assembles `Tests/Shaders/NAME.spvasm` (SPIR-V that GLSL cannot express) with spirv-as.
public func assembleTestShader(_ name: String) throws -> [UInt32] {
    let source = testShaderPath(name).replacingOccurrences(of: ".comp", with: ".spvasm")
    return try build(name) { ["spirv-as", "--target-env", "vulkan1.2", "-o", $0, source] }
}

/// Runs the tool `command(output)` and reads the SPIR-V words it wrote.
private func build(_ name: String, _ command: (String) -> [String]) throws -> [UInt32] {
    // Unique per call: suites run in parallel and may build the same shader at once.
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("tether-\(UUID().uuidString)-\(name).spv").path
    defer { try? FileManager.default.removeItem(atPath: output) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = command(output)
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw ShaderCompileError(name: name) }
    let data = try Data(contentsOf: URL(fileURLWithPath: output))
    return data.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
}
