import Foundation

public struct ShaderCompileError: Error, CustomStringConvertible {
    public let name: String
    public var description: String { "glslc could not compile Tests/Shaders/\(name).comp" }
}

/// Compiles a GLSL shader of `Tests/Shaders` with glslc (installed by tools/setup) into SPIR-V words.
public func compileTestShader(_ name: String, defines: [String] = []) throws -> [UInt32] {
    let source = testShaderPath(name)
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("tether-\(getpid())-\(name).spv").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["glslc", "--target-env=vulkan1.2", "-o", output, source] + defines.map { "-D\($0)" }
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw ShaderCompileError(name: name) }
    let data = try Data(contentsOf: URL(fileURLWithPath: output))
    try? FileManager.default.removeItem(atPath: output)
    return data.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
}


/// The path of `Tests/Shaders/NAME.comp`.
public func testShaderPath(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Shaders/\(name).comp").path
}
