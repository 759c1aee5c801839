/// The arguments of an admin command: positionals, `--name value` / `--name=value` options and
/// bare flags, checked against what the command accepts.
struct AdminArguments {
    private(set) var positionals: [String] = []
    private(set) var options: [String: String] = [:]
    private(set) var flags: Set<String> = []

    /// Whether `--help` or `-h` appears anywhere.
    static func wantsHelp(_ arguments: [String]) -> Bool {
        arguments.contains("--help") || arguments.contains("-h")
    }

    init(_ arguments: [String], options known: Set<String> = [], flags knownFlags: Set<String> = [])
        throws(AdminFailure)
    {
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            guard argument.hasPrefix("--"), argument.count > 2 else {
                positionals.append(argument)
                continue
            }
            var name = String(argument.dropFirst(2))
            var value: String?
            if let equals = name.firstIndex(of: "=") {
                value = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            if knownFlags.contains(name), value == nil {
                flags.insert(name)
                continue
            }
            guard known.contains(name) else { throw .usage("unknown option --\(name)") }
            if value == nil {
                guard index < arguments.count else { throw .usage("--\(name) needs a value") }
                value = arguments[index]
                index += 1
            }
            options[name] = value
        }
    }

    /// Exactly `count` positionals, named in the error when they are not there.
    func positionals(_ count: Int, naming names: String) throws(AdminFailure) -> [String] {
        guard positionals.count == count else {
            throw .usage(positionals.count < count ? "missing \(names)" : "unexpected argument '\(positionals[count])'")
        }
        return positionals
    }
}

/// Why an admin command failed: `usage` (exit status 2) for arguments it cannot take, `failed`
/// (exit status 1) for anything else. The message is one line, free of secrets.
enum AdminFailure: Error {
    case usage(String)
    case failed(String)
}
