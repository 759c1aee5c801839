import CLibFuzzer

/// What the fuzzer executables call: runs one input through the harness and traps on the
/// first broken invariant, so libFuzzer saves the input as a crash.
public enum FuzzEntry {
    /// The signature of `LLVMFuzzerTestOneInput`.
    public typealias TestOneInput = @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32

    /// Client request bodies: JSON parser, JSONDocument splicing, RequestInspector.
    public static func request(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        check(.request, data, size)
    }

    /// Upstream event streams: SSEParser at every kind of split point, StreamRelay.
    public static func sse(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        check(.sse, data, size)
    }

    /// Usage objects: UsageExtractor, and StreamRelay reading usage from stream events.
    public static func usage(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        check(.usage, data, size)
    }

    /// Runs libFuzzer's driver (flags from the command line) on `testOneInput`.
    ///
    /// SwiftPM links debug executables with `main` defined as `<module>_main`, so libFuzzer's
    /// own `main` is never linked in; each fuzzer defines `<module>_main` to call this instead.
    public static func runDriver(
        _ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, _ testOneInput: TestOneInput
    ) -> Int32 {
        var argc = argc
        var argv = argv
        return LLVMFuzzerRunDriver(&argc, &argv, testOneInput)
    }

    private static func check(_ target: FuzzHarness.Target, _ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
        let violations = FuzzHarness.violations(of: target, in: bytes)
        if !violations.isEmpty {
            fatalError("\(target.rawValue) invariant broken: \(violations.joined(separator: "; "))")
        }
        return 0
    }
}
