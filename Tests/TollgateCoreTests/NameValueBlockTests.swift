import Testing
import TollgateCore

#if canImport(Glibc)
    import Glibc
#endif

@Suite("NAME=value blocks")
struct NameValueBlockTests {
    /// Parses `entries` laid out as a null-terminated C array, as libfcgi hands them over.
    static func parse(_ entries: [[UInt8]]) -> [String: String] {
        var pointers: [UnsafeMutablePointer<CChar>?] = entries.map { bytes in
            let entry = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count + 1)
            for (index, byte) in bytes.enumerated() { entry[index] = CChar(bitPattern: byte) }
            entry[bytes.count] = 0
            return entry
        }
        pointers.append(nil)
        defer {
            for pointer in pointers { pointer?.deallocate() }
        }
        return pointers.withUnsafeMutableBufferPointer { NameValueBlock.parse($0.baseAddress) }
    }

    @Test("splits at the first '=', skips entries without one, and a later duplicate wins")
    func splitsEntries() {
        let parsed = Self.parse(
            ["REQUEST_METHOD=POST", "EMPTY=", "NO_EQUALS", "QUERY_STRING=a=b&c=d", "X=1", "X=2", "=anonymous"]
                .map { Array($0.utf8) })

        #expect(
            parsed == [
                "REQUEST_METHOD": "POST", "EMPTY": "", "QUERY_STRING": "a=b&c=d", "X": "2", "": "anonymous",
            ])
    }

    @Test("UTF-8 is kept and bytes that are not UTF-8 become U+FFFD")
    func decodesUTF8() {
        let parsed = Self.parse([Array("HTTP_X_NAME=Zoë".utf8), [0x48, 0x3D, 0xFF, 0x41]])

        #expect(parsed["HTTP_X_NAME"] == "Zoë")
        #expect(parsed["H"] == "\u{FFFD}A")
    }

    @Test("no block at all is no entries")
    func nilBlock() {
        #expect(NameValueBlock.parse(nil).isEmpty)
    }
}
