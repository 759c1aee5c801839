/// Compact JSON writer: no whitespace, members in order, numbers as their literal, strings with
/// minimal escaping (`"`, `\`, and control characters; non-ASCII written as raw UTF-8).
///
/// Recursion depth equals the value's nesting, which the parser caps; values built by hand
/// are trusted to be reasonable.
enum JSONSerializer {
    static func append(_ value: JSONValue, to buffer: inout [UInt8]) {
        switch value {
        case .null:
            buffer.append(contentsOf: "null".utf8)
        case .bool(let flag):
            buffer.append(contentsOf: flag ? "true".utf8 : "false".utf8)
        case .number(let literal):
            buffer.append(contentsOf: literal.utf8)
        case .string(let text):
            appendString(text, to: &buffer)
        case .array(let elements):
            buffer.append(UInt8(ascii: "["))
            for (position, element) in elements.enumerated() {
                if position > 0 { buffer.append(UInt8(ascii: ",")) }
                append(element, to: &buffer)
            }
            buffer.append(UInt8(ascii: "]"))
        case .object(let members):
            appendObject(members, to: &buffer)
        }
    }

    private static func appendObject(_ members: [JSONMember], to buffer: inout [UInt8]) {
        buffer.append(UInt8(ascii: "{"))
        for (position, member) in members.enumerated() {
            if position > 0 { buffer.append(UInt8(ascii: ",")) }
            appendString(member.key, to: &buffer)
            buffer.append(UInt8(ascii: ":"))
            append(member.value, to: &buffer)
        }
        buffer.append(UInt8(ascii: "}"))
    }

    /// Writes `text` as a quoted JSON string. Runs of bytes that need no escape are copied at once.
    static func appendString(_ text: String, to buffer: inout [UInt8]) {
        buffer.append(UInt8(ascii: "\""))
        var text = text
        text.withUTF8 { utf8 in
            var runStart = 0
            for position in 0..<utf8.count {
                let byte = utf8[position]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                buffer.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<position]))
                appendEscape(for: byte, to: &buffer)
                runStart = position + 1
            }
            buffer.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<utf8.count]))
        }
        buffer.append(UInt8(ascii: "\""))
    }

    private static func appendEscape(for byte: UInt8, to buffer: inout [UInt8]) {
        buffer.append(UInt8(ascii: "\\"))
        switch byte {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): buffer.append(byte)
        case 0x0A: buffer.append(UInt8(ascii: "n"))
        case 0x0D: buffer.append(UInt8(ascii: "r"))
        case 0x09: buffer.append(UInt8(ascii: "t"))
        case 0x08: buffer.append(UInt8(ascii: "b"))
        case 0x0C: buffer.append(UInt8(ascii: "f"))
        default:
            buffer.append(contentsOf: "u00".utf8)
            buffer.append(hexDigit(byte >> 4))
            buffer.append(hexDigit(byte & 0x0F))
        }
    }

    private static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
    }
}
