// swift-tools-version:6.0
import PackageDescription

// libFuzzer targets for the TollgateCore code that reads untrusted bytes: client request
// bodies, upstream event streams, usage objects. A package of its own, so the main manifest
// carries no fuzz-only targets; it takes TollgateCore from the main package (`..`).
// scripts/fuzz.sh (`make fuzz`) builds it with `-sanitize=fuzzer,address -parse-as-library`
// and runs each fuzzer on its corpus in Tests/Fuzz/corpus/.
//
// FuzzSupport compiles Tests/TollgateCoreTests/FuzzCorpusTests.swift through a symbolic link,
// so the fuzzers and the corpus replay in `make test` check the very same invariants.
let fuzzers = ["RequestFuzzer", "SSEFuzzer", "UsageFuzzer"]

let package = Package(
    name: "TollgateFuzz",
    products: fuzzers.map { .executable(name: $0, targets: [$0]) },
    dependencies: [.package(name: "Tollgate", path: "..")],
    targets: [
        // Header only: declares libFuzzer's driver, which -sanitize=fuzzer links in.
        .systemLibrary(name: "CLibFuzzer"),
        .target(
            name: "FuzzSupport",
            dependencies: ["CLibFuzzer", .product(name: "TollgateCore", package: "Tollgate")],
            swiftSettings: [.define("TOLLGATE_FUZZER")]
        ),
    ] + fuzzers.map { .executableTarget(name: $0, dependencies: ["FuzzSupport"]) },
    swiftLanguageModes: [.v6]
)
