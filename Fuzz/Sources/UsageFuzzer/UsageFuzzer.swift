import FuzzSupport

/// libFuzzer's per-input entry point: usage objects (corpus: Tests/Fuzz/corpus/usage/).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzEntry.usage(data, size)
}

/// The process entry point (see `FuzzEntry.runDriver`).
@_cdecl("UsageFuzzer_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    FuzzEntry.runDriver(argc, argv, fuzzTestOneInput)
}
