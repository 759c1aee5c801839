extension RequestInspector {
    /// For chat: whether the client asked for usage itself, and the body to forward, with
    /// stream_options.include_usage forced to true on streams so the upstream reports usage.
    static func usageInjection(_ document: JSONDocument, stream: Bool) throws(OpenAIError) -> (Bool, [UInt8]) {
        var options: JSONValue
        switch document.root["stream_options"] {
        case nil, .null?: options = .object([])
        case let value? where value.objectMembers != nil: options = value
        default: throw invalidType("stream_options", expected: "an object")
        }

        // The upstream reads the last of duplicate members, so that is the one that counts.
        let flags = (options.objectMembers ?? []).filter { $0.key == "include_usage" }.map(\.value)
        var clientWantsUsage = false
        for flag in flags {
            guard let wanted = try optionalBool(flag, param: "stream_options.include_usage") else { continue }
            clientWantsUsage = wanted
        }

        guard stream, !(clientWantsUsage && flags.count == 1) else { return (clientWantsUsage, document.bytes) }
        options.setMember("include_usage", to: .bool(true))
        options = .object(Self.droppingLaterDuplicates(of: "include_usage", in: options.objectMembers ?? []))
        return (clientWantsUsage, document.replacingMember("stream_options", with: options))
    }

    /// `members` without the occurrences of `key` after the first.
    static func droppingLaterDuplicates(of key: String, in members: [JSONMember]) -> [JSONMember] {
        var seen = false
        return members.filter { member in
            guard member.key == key else { return true }
            defer { seen = true }
            return !seen
        }
    }

    /// nil when absent or null; the flag when a bool; otherwise an invalid_type error.
    static func optionalBool(_ value: JSONValue?, param: String) throws(OpenAIError) -> Bool? {
        switch value {
        case nil, .null?: return nil
        case .bool(let flag)?: return flag
        default: throw invalidType(param, expected: "a boolean")
        }
    }

    /// nil when absent or null; an integer in 0...Int.max; otherwise an invalid_value error.
    static func tokenCount(_ value: JSONValue?, param: String) throws(OpenAIError) -> Int? {
        guard let value, !value.isNull else { return nil }
        guard let count = value.intValue, count >= 0 else {
            throw OpenAIError.invalidRequest(
                "Invalid value for '\(param)': expected a non-negative integer.", param: param, code: "invalid_value")
        }
        return count
    }

    static func missing(_ param: String) -> OpenAIError {
        OpenAIError.invalidRequest(
            "Missing required parameter: '\(param)'.", param: param, code: "missing_required_parameter")
    }

    static func invalidType(_ param: String, expected: String) -> OpenAIError {
        OpenAIError.invalidRequest(
            "Invalid type for '\(param)': expected \(expected).", param: param, code: "invalid_type")
    }
}
