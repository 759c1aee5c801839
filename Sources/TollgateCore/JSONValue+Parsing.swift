extension JSONValue {
    /// Strict RFC 8259 parse of a whole document (surrounding whitespace allowed).
    ///
    /// Rejects invalid UTF-8, raw control characters in strings, NaN and Infinity, leading
    /// zeros, trailing commas, a byte-order mark, and nesting deeper than `maxDepth` containers
    /// (capped at 1,000 whatever is asked). Escaped lone surrogates are replaced by U+FFFD.
    /// Never traps; the work is linear in the input size.
    public init(parsing bytes: [UInt8], maxDepth: Int = 128) throws(JSONError) {
        self = try bytes.withUnsafeBufferPointer { buffer throws(JSONError) in
            var parser = JSONParser(buffer, maxDepth: maxDepth)
            return try parser.parseDocument()
        }
    }

    /// As `init(parsing:maxDepth:)`; error offsets count from the slice's first byte.
    public init(parsing bytes: ArraySlice<UInt8>, maxDepth: Int = 128) throws(JSONError) {
        self = try bytes.withUnsafeBufferPointer { buffer throws(JSONError) in
            var parser = JSONParser(buffer, maxDepth: maxDepth)
            return try parser.parseDocument()
        }
    }

    /// Parses the UTF-8 of `text` without copying it when the string is stored contiguously;
    /// nil when it is not a JSON document.
    init?(parsingText text: String, maxDepth: Int = 128) {
        var text = text
        let result = text.withUTF8 { buffer -> Result<JSONValue, JSONError> in
            var parser = JSONParser(buffer, maxDepth: maxDepth)
            return Result { () throws(JSONError) in try parser.parseDocument() }
        }
        guard case .success(let value) = result else { return nil }
        self = value
    }
}
