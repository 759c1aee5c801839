/// One-dimensional PostgreSQL array literals in text format (`{"a","b",NULL}`), so that a batch
/// travels as one parameter per column: element i of every array belongs to request i.
enum PostgresArray {
    /// The literal of `values`; nil is NULL. Every other element is quoted with `"` and `\`
    /// escaped, so any text, and a bytea's `\x…` form, arrives as it is. An element ends at its
    /// first NUL byte, as a single parameter does (libpq sends C strings; text holds no NUL).
    static func literal(_ values: [String?]) -> String {
        var bytes: [UInt8] = [UInt8(ascii: "{")]
        for (index, value) in values.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            guard let value else {
                bytes += "NULL".utf8
                continue
            }
            bytes.append(UInt8(ascii: "\""))
            for byte in value.utf8 {
                if byte == 0 { break }
                if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { bytes.append(UInt8(ascii: "\\")) }
                bytes.append(byte)
            }
            bytes.append(UInt8(ascii: "\""))
        }
        bytes.append(UInt8(ascii: "}"))
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The parameter lists of single calls (one row per call, equally long), turned into one array
    /// literal per parameter.
    static func columns(_ rows: [[String?]]) -> [String?] {
        guard let width = rows.first?.count else { return [] }
        return (0..<width).map { column in literal(rows.map { $0[column] }) }
    }
}
