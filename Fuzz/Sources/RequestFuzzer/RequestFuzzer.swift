import FuzzSupport

/// libFuzzer's per-input entry point: client request bodies (corpus: Tests/Fuzz/corpus/request/).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzEntry.request(data, size)
}

/// The process entry point (see `FuzzEntry.runDriver`).
@_cdecl("RequestFuzzer_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    FuzzEntry.runDriver(argc, argv, fuzzTestOneInput)
}
