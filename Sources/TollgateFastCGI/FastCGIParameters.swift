/// The name-value pairs of FastCGI PARAMS records (nginx's `fastcgi_param`s: the CGI variables
/// and `HTTP_*` request headers), decoded from their length-prefixed encoding.
enum FastCGIParameters {
    struct Malformed: Error, Equatable {}

    /// The pairs by name; a later duplicate wins. Bytes that are not UTF-8 become U+FFFD.
    static func decode(_ bytes: [UInt8]) throws(Malformed) -> [String: String] {
        var result: [String: String] = [:]
        var index = 0
        while index < bytes.count {
            let nameLength = try length(in: bytes, at: &index)
            let valueLength = try length(in: bytes, at: &index)
            guard nameLength <= bytes.count - index, valueLength <= bytes.count - index - nameLength else {
                throw Malformed()
            }
            let name = String(decoding: bytes[index..<index + nameLength], as: UTF8.self)
            index += nameLength
            result[name] = String(decoding: bytes[index..<index + valueLength], as: UTF8.self)
            index += valueLength
        }
        return result
    }

    /// A length of one byte (below 128) or four bytes with the high bit set.
    private static func length(in bytes: [UInt8], at index: inout Int) throws(Malformed) -> Int {
        guard index < bytes.count else { throw Malformed() }
        let first = bytes[index]
        guard first & 0x80 != 0 else {
            index += 1
            return Int(first)
        }
        guard bytes.count - index >= 4 else { throw Malformed() }
        let value =
            Int(first & 0x7F) << 24 | Int(bytes[index + 1]) << 16 | Int(bytes[index + 2]) << 8 | Int(bytes[index + 3])
        index += 4
        return value
    }

    /// Encodes pairs the way nginx does (for tests and GET_VALUES answers).
    static func encode(_ pairs: [(String, String)]) -> [UInt8] {
        var bytes: [UInt8] = []
        for (name, value) in pairs {
            for length in [name.utf8.count, value.utf8.count] {
                if length < 128 {
                    bytes.append(UInt8(length))
                } else {
                    bytes.append(contentsOf: [
                        UInt8(length >> 24 & 0x7F) | 0x80, UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF),
                        UInt8(length & 0xFF),
                    ])
                }
            }
            bytes.append(contentsOf: name.utf8)
            bytes.append(contentsOf: value.utf8)
        }
        return bytes
    }
}
