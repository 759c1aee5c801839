/// A parsed request body that can be rewritten by splicing bytes, so that everything Tollgate
/// does not change stays byte-for-byte what the client sent.
public struct JSONDocument: Sendable {
    public let bytes: [UInt8]
    /// The parsed value (may be any JSON type).
    public let root: JSONValue
    /// For each member of a top-level object, in order, the byte range of its value in `bytes`.
    private let memberValueRanges: [Range<Int>]
    /// Offset of the closing brace when the root is an object.
    private let closingBraceOffset: Int?

    /// Parses `bytes` strictly (see `JSONValue.init(parsing:maxDepth:)`) and records where each
    /// top-level member's value lies.
    public init(bytes: [UInt8], maxDepth: Int = 128) throws(JSONError) {
        let parsed = try bytes.withUnsafeBufferPointer { buffer throws(JSONError) in
            var parser = JSONParser(buffer, maxDepth: maxDepth, recordsTopLevel: true)
            let value = try parser.parseDocument()
            return (value, parser.topLevelValueRanges, parser.rootObjectEnd)
        }
        self.bytes = bytes
        self.root = parsed.0
        self.memberValueRanges = parsed.1
        self.closingBraceOffset = parsed.2
    }

    /// The byte range in `bytes` of the value of the first top-level member named `key`.
    public func valueRange(ofMember key: String) -> Range<Int>? {
        guard let members = root.objectMembers,
            let position = members.firstIndex(where: { $0.key == key }),
            memberValueRanges.indices.contains(position)
        else { return nil }
        return memberValueRanges[position]
    }

    /// Returns `bytes` with the value of the first top-level member `key` replaced by
    /// `value.serialized()`, or, when there is no such member, with `,"key":value` inserted just
    /// before the closing brace (no comma when the object is empty). Whitespace and every other
    /// byte are kept. If the root is not an object, returns `bytes` unchanged.
    public func replacingMember(_ key: String, with value: JSONValue) -> [UInt8] {
        guard let members = root.objectMembers, let closing = closingBraceOffset else { return bytes }

        var output: [UInt8] = []
        output.reserveCapacity(bytes.count + 64)
        if let range = valueRange(ofMember: key) {
            output.append(contentsOf: bytes[..<range.lowerBound])
            value.serialize(into: &output)
            output.append(contentsOf: bytes[range.upperBound...])
            return output
        }

        output.append(contentsOf: bytes[..<closing])
        if !members.isEmpty { output.append(UInt8(ascii: ",")) }
        JSONSerializer.appendString(key, to: &output)
        output.append(UInt8(ascii: ":"))
        value.serialize(into: &output)
        output.append(contentsOf: bytes[closing...])
        return output
    }
}
