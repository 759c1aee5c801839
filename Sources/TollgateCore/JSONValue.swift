/// A JSON value that keeps what a client sent: member order, duplicates, number literals.
///
/// Tollgate forwards bodies it did not write, so nothing is normalised: `.number` holds the
/// literal exactly as written (`"1e3"`, `"-0"`, `"12.50"`), and `.object` keeps every member in
/// source order, duplicates included. Equality is therefore literal: `.number("1")` is not
/// `.number("1.0")`.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The literal exactly as written. Values built by hand must hold a valid JSON number literal,
    /// because serialization writes it verbatim.
    case number(String)
    case string(String)
    case array([JSONValue])
    /// Members in source order, duplicates kept.
    case object([JSONMember])
}

/// One `"key": value` pair of a JSON object.
public struct JSONMember: Sendable, Equatable {
    public var key: String
    public var value: JSONValue

    public init(_ key: String, _ value: JSONValue) {
        self.key = key
        self.value = value
    }
}

extension JSONValue {
    /// The value of the first member named `key`; nil when absent or when this is not an object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for member in members where member.key == key {
            return member.value
        }
        return nil
    }

    public var stringValue: String? {
        guard case .string(let text) = self else { return nil }
        return text
    }

    public var boolValue: Bool? {
        guard case .bool(let flag) = self else { return nil }
        return flag
    }

    public var arrayValue: [JSONValue]? {
        guard case .array(let elements) = self else { return nil }
        return elements
    }

    public var objectMembers: [JSONMember]? {
        guard case .object(let members) = self else { return nil }
        return members
    }

    /// Integer value of a number literal with no fraction or exponent that fits in `Int`; else nil.
    /// `"-0"` is 0. Never traps, whatever the literal.
    public var intValue: Int? {
        guard case .number(let literal) = self else { return nil }
        return Self.integer(fromLiteral: literal)
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// Objects only (no effect otherwise): replaces the value of the first member named `key`,
    /// or appends the member when there is none. Later duplicates are left as they are.
    public mutating func setMember(_ key: String, to value: JSONValue) {
        guard case .object(var members) = self else { return }
        self = .null  // Drops the second reference so `members` is mutated in place.
        if let index = members.firstIndex(where: { $0.key == key }) {
            members[index].value = value
        } else {
            members.append(JSONMember(key, value))
        }
        self = .object(members)
    }

    /// Objects only (no effect otherwise): removes every member named `key`.
    public mutating func removeMembers(named key: String) {
        guard case .object(var members) = self else { return }
        self = .null
        members.removeAll { $0.key == key }
        self = .object(members)
    }

    /// Parses `-?[0-9]+` with overflow checks; anything else (fraction, exponent, sign only) is nil.
    static func integer(fromLiteral literal: String) -> Int? {
        var utf8 = literal.utf8[...]
        let negative = utf8.first == UInt8(ascii: "-")
        if negative { utf8 = utf8.dropFirst() }
        guard !utf8.isEmpty else { return nil }

        var result = 0
        for byte in utf8 {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let digit = Int(byte &- UInt8(ascii: "0"))
            let (shifted, overflowA) = result.multipliedReportingOverflow(by: 10)
            // Accumulate towards the sign so that Int.min is representable.
            let (next, overflowB) =
                negative ? shifted.subtractingReportingOverflow(digit) : shifted.addingReportingOverflow(digit)
            guard !overflowA, !overflowB else { return nil }
            result = next
        }
        return result
    }
}
