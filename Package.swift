// swift-tools-version:6.0
import PackageDescription

// Layers, from the wire inwards: the FastCGI transport (libfcgi) hands requests to the proxy
// service, which decides (admit, forward, settle) and reaches the upstream (libcurl) and the
// store (libpq) through small protocols. TollgateCore holds the pure logic and imports no C.
let package = Package(
    name: "Tollgate",
    products: [
        .executable(name: "tollgate", targets: ["tollgate"]),
        // For the fuzzers in Fuzz/, a package of their own that depends on this one.
        .library(name: "TollgateCore", targets: ["TollgateCore"]),
    ],
    targets: [
        .systemLibrary(name: "CFastCGI", pkgConfig: "fcgi", providers: [.apt(["libfcgi-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CPostgres", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CEventLoop"),
        .target(name: "TollgateCore"),
        .target(name: "TollgateLoop", dependencies: ["CEventLoop"]),
        .target(name: "TollgateProxy", dependencies: ["TollgateCore", "TollgateLoop"]),
        .target(name: "TollgateUpstream", dependencies: ["TollgateCore", "TollgateLoop", "TollgateProxy", "CCurl"]),
        .target(
            name: "TollgateFastCGI",
            dependencies: ["TollgateCore", "TollgateLoop", "TollgateProxy", "CFastCGI", "CEventLoop"]),
        .target(name: "TollgateStore", dependencies: ["TollgateCore", "TollgateLoop", "TollgateProxy", "CPostgres"]),
        .executableTarget(
            name: "tollgate",
            dependencies: [
                "TollgateCore", "TollgateLoop", "TollgateProxy", "TollgateUpstream", "TollgateFastCGI", "TollgateStore",
            ]
        ),
        .testTarget(name: "TollgateCoreTests", dependencies: ["TollgateCore"]),
        .testTarget(name: "TollgateProxyTests", dependencies: ["TollgateProxy", "TollgateCore", "TollgateLoop"]),
        .testTarget(name: "TollgateLoopTests", dependencies: ["TollgateLoop"]),
        .testTarget(name: "TollgateFastCGITests", dependencies: ["TollgateFastCGI"]),
        .testTarget(name: "TollgateStoreTests", dependencies: ["TollgateStore", "TollgateProxy", "TollgateCore"]),
    ],
    swiftLanguageModes: [.v6]
)
