extension JSONValue {
    /// Compact serialization: members in order, numbers as their literal, strings with minimal
    /// escaping (`"`, `\`, control characters as `\n \r \t \b \f` or `\u00XX`; non-ASCII as raw
    /// UTF-8). A value parsed from compact input serializes back to the same bytes, except for
    /// strings whose escapes were not minimal.
    public func serialized() -> [UInt8] {
        var buffer: [UInt8] = []
        serialize(into: &buffer)
        return buffer
    }

    /// Appends the compact serialization to `buffer`.
    public func serialize(into buffer: inout [UInt8]) {
        JSONSerializer.append(self, to: &buffer)
    }
}
