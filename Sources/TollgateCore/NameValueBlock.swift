/// A C array of `NAME=value` strings ending with a null pointer, as `environ` holds the
/// environment.
public enum NameValueBlock {
    /// The entries by name; an entry without `=` is skipped, a later duplicate wins. Bytes that
    /// are not UTF-8 become U+FFFD.
    public static func parse(_ block: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> [String: String] {
        var result: [String: String] = [:]
        guard var entry = block else { return result }
        while let pair = entry.pointee {
            entry += 1
            let bytes = UnsafeRawPointer(pair).assumingMemoryBound(to: UInt8.self)
            var length = 0
            var equals = -1
            while bytes[length] != 0 {
                if equals < 0 && bytes[length] == UInt8(ascii: "=") { equals = length }
                length += 1
            }
            guard equals >= 0 else { continue }
            let name = String(decoding: UnsafeBufferPointer(start: bytes, count: equals), as: UTF8.self)
            result[name] = String(
                decoding: UnsafeBufferPointer(start: bytes + equals + 1, count: length - equals - 1), as: UTF8.self)
        }
        return result
    }
}
