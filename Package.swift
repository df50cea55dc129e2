// swift-tools-version: 6.1
import PackageDescription

/// TETHER_ABI_VERSION in tether.h: the library's soname is libtether.so.<this>.
let cABIVersion = 1

// Layers point one way: TetherCore ← TetherSys ← TetherDevice ← TetherDaemon / Tether ← tether.
let package = Package(
    name: "Tether",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Tether", targets: ["Tether"]),
        .library(name: "TetherCore", targets: ["TetherCore"]),
        .executable(name: "tether", targets: ["tether"]),
        // The C interface (Sources/CTether/include/tether.h): .build/<config>/libTetherC.so, which
        // tools/install installs as libtether.so.1 (its soname) and libtether.so.
        .library(name: "TetherC", type: .dynamic, targets: ["TetherC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // Pure Swift: ids, errors, wire protocol, kernel ABI, workloads and CPU references, scheduler policy.
        .target(name: "TetherCore"),
        // What Swift cannot import: CMSG_* macros, variadic syscall(2), fork helpers.
        .target(name: "CTetherLinux"),
        // The exit notifier's BPF object and its loader; libbpf is dlopen()ed at run time.
        .target(name: "CTetherBPF", linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "TetherSys", dependencies: ["TetherCore", "CTetherLinux", "CTetherBPF"]),
        // Vulkan and libdrm headers with VK_NO_PROTOTYPES; both libraries are dlopen()ed at run time.
        .target(name: "CVulkan", cSettings: [.unsafeFlags(["-I/usr/include/libdrm"])],
                linkerSettings: [.linkedLibrary("dl")]),
        // SPIRV-Tools' validator and optimizer (specialization) and SPIRV-Cross's reflection, linked
        // statically (Debian ships archives).
        .target(name: "CSPIRV", linkerSettings: [
            .linkedLibrary("spirv-cross-c"), .linkedLibrary("spirv-cross-cpp"), .linkedLibrary("spirv-cross-reflect"),
            .linkedLibrary("spirv-cross-msl"), .linkedLibrary("spirv-cross-hlsl"), .linkedLibrary("spirv-cross-glsl"),
            .linkedLibrary("spirv-cross-util"), .linkedLibrary("spirv-cross-core"), .linkedLibrary("SPIRV-Tools-opt"), .linkedLibrary("SPIRV-Tools"),
            .linkedLibrary("stdc++"),
        ]),
        .target(name: "TetherDevice", dependencies: ["TetherCore", "TetherSys", "CVulkan", "CSPIRV"]),
        .target(name: "TetherDaemon", dependencies: [
            "TetherCore", "TetherSys", "TetherDevice",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "Tether", dependencies: ["TetherCore", "TetherSys"]),
        // The C interface: tether.h, the per-thread last error (C), and the @_cdecl functions over
        // the Swift library. The Swift runtime is linked statically into libtether.so (no Swift
        // toolchain needed where it runs) and kept private by the version script, so it cannot
        // clash with another Swift runtime in the same process.
        .target(name: "CTether"),
        .target(name: "TetherC", dependencies: ["CTether", "Tether"], exclude: ["exports.map"],
                linkerSettings: [.unsafeFlags([
                    "-static-stdlib",
                    "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/TetherC/exports.map",
                    "-Xlinker", "-soname=libtether.so.\(cABIVersion)",
                ])]),
        .executableTarget(name: "tether", dependencies: [
            "TetherCore", "TetherSys", "TetherDevice", "TetherDaemon", "Tether",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Histogram", package: "hdrhistogram-swift"),
        ]),
        // Compiles the GLSL of Tests/Shaders with glslc for the tests of user kernels.
        .target(name: "TetherTestSupport", path: "Tests/TetherTestSupport"),
        .testTarget(name: "TetherCoreTests", dependencies: ["TetherCore"]),
        .testTarget(name: "TetherDeviceTests", dependencies: ["TetherCore", "TetherSys", "TetherDevice", "CTetherBPF", "TetherTestSupport"]),
        .testTarget(name: "TetherIntegrationTests", dependencies: ["TetherCore", "TetherSys", "Tether", "TetherTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
