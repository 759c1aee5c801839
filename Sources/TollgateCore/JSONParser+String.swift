extension JSONParser {
    /// Parses a string starting at its opening quote and leaves `index` after the closing quote.
    /// Strings without escapes are decoded straight from the input, without a scratch copy.
    mutating func parseString() throws(JSONError) -> String {
        index += 1
        let start = index

        while index < input.count {
            let byte = input[index]
            if byte == UInt8(ascii: "\"") {
                let text = String(decoding: UnsafeBufferPointer(rebasing: input[start..<index]), as: UTF8.self)
                index += 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            try consumeStringByte(byte)
        }
        guard index < input.count else { throw failure(.unexpectedEnd) }

        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: UnsafeBufferPointer(rebasing: input[start..<index]))
        return try parseEscapedRemainder()
    }

    /// The slow path, from the first backslash: decodes into `scratch`, copying runs of plain
    /// bytes at once.
    private mutating func parseEscapedRemainder() throws(JSONError) -> String {
        while index < input.count {
            let runStart = index
            while index < input.count, input[index] != UInt8(ascii: "\""), input[index] != UInt8(ascii: "\\") {
                try consumeStringByte(input[index])
            }
            if runStart < index {
                scratch.append(contentsOf: UnsafeBufferPointer(rebasing: input[runStart..<index]))
            }
            guard index < input.count else { break }

            if input[index] == UInt8(ascii: "\"") {
                index += 1
                return String(decoding: scratch, as: UTF8.self)
            }
            try parseEscape()
        }
        throw failure(.unexpectedEnd)
    }

    /// Steps over one unescaped character (one to four bytes), validating it.
    private mutating func consumeStringByte(_ byte: UInt8) throws(JSONError) {
        if byte < 0x20 { throw failure(.controlCharacter) }
        if byte < 0x80 {
            index += 1
        } else {
            try consumeUTF8Sequence(lead: byte)
        }
    }

    /// Validates a multi-byte UTF-8 sequence (Unicode 15, table 3-7) and steps over it.
    private mutating func consumeUTF8Sequence(lead: UInt8) throws(JSONError) {
        let length: Int
        var secondRange: ClosedRange<UInt8> = 0x80...0xBF
        switch lead {
        case 0xC2...0xDF:
            length = 2
        case 0xE0:
            length = 3
            secondRange = 0xA0...0xBF
        case 0xE1...0xEC, 0xEE...0xEF:
            length = 3
        case 0xED:
            length = 3
            secondRange = 0x80...0x9F
        case 0xF0:
            length = 4
            secondRange = 0x90...0xBF
        case 0xF1...0xF3:
            length = 4
        case 0xF4:
            length = 4
            secondRange = 0x80...0x8F
        default: throw failure(.invalidUTF8)
        }

        for offset in 1..<length {
            guard index + offset < input.count else { throw JSONError(code: .unexpectedEnd, offset: input.count) }
            let allowed = offset == 1 ? secondRange : 0x80...0xBF
            guard allowed.contains(input[index + offset]) else { throw failure(.invalidUTF8) }
        }
        index += length
    }

    /// Decodes one escape sequence at a backslash into `scratch`.
    private mutating func parseEscape() throws(JSONError) {
        guard index + 1 < input.count else { throw JSONError(code: .unexpectedEnd, offset: input.count) }
        let decoded: UInt8
        switch input[index + 1] {
        case UInt8(ascii: "\""): decoded = UInt8(ascii: "\"")
        case UInt8(ascii: "\\"): decoded = UInt8(ascii: "\\")
        case UInt8(ascii: "/"): decoded = UInt8(ascii: "/")
        case UInt8(ascii: "b"): decoded = 0x08
        case UInt8(ascii: "f"): decoded = 0x0C
        case UInt8(ascii: "n"): decoded = 0x0A
        case UInt8(ascii: "r"): decoded = 0x0D
        case UInt8(ascii: "t"): decoded = 0x09
        case UInt8(ascii: "u"):
            try parseUnicodeEscape()
            return
        default:
            throw failure(.invalidEscape)
        }
        scratch.append(decoded)
        index += 2
    }

    /// Decodes a `\u` escape of four hex digits, pairing surrogates; a lone surrogate becomes U+FFFD.
    private mutating func parseUnicodeEscape() throws(JSONError) {
        let unit = try hexQuad(at: index + 2)
        index += 6

        var scalar = Unicode.Scalar(unit)
        if (0xD800...0xDBFF).contains(unit), let low = lowSurrogate(at: index) {
            let combined = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
            scalar = Unicode.Scalar(combined)
            index += 6
        }
        UTF8.encode(scalar ?? "\u{FFFD}") { scratch.append($0) }
    }

    /// The low surrogate escaped at `position`, if the bytes there are `\uDC00`...`\uDFFF`.
    private func lowSurrogate(at position: Int) -> UInt32? {
        guard position + 6 <= input.count,
            input[position] == UInt8(ascii: "\\"), input[position + 1] == UInt8(ascii: "u")
        else { return nil }

        var value: UInt32 = 0
        for offset in 2..<6 {
            guard let digit = hexDigit(input[position + offset]) else { return nil }
            value = value << 4 | digit
        }
        return (0xDC00...0xDFFF).contains(value) ? value : nil
    }

    /// Four hex digits starting at `position`; `index` still points at the backslash.
    private func hexQuad(at position: Int) throws(JSONError) -> UInt32 {
        var value: UInt32 = 0
        for offset in 0..<4 {
            guard position + offset < input.count else {
                throw JSONError(code: .unexpectedEnd, offset: input.count)
            }
            guard let digit = hexDigit(input[position + offset]) else { throw failure(.invalidEscape) }
            value = value << 4 | digit
        }
        return value
    }

    private func hexDigit(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(byte - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }
}
