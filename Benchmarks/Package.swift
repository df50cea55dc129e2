// swift-tools-version: 6.1
// Micro-benchmarks for Tether's pure hot paths (wire protocol, scheduler policy, region lookup).
// A package of its own so that the root package, `tools/test` and CI never build it.
// Run: `tools/bench-micro` from the repository root (see README.md here).
import PackageDescription

let package = Package(
    name: "TetherBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Tether", path: ".."),
        // The MallocInterposer trait alone: allocation counts without jemalloc, and without the
        // default RuntimeInterposer trait (its package is not needed).
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "TetherBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TetherCore", package: "Tether"),
            ],
            path: "Benchmarks/TetherBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
