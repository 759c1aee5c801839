#if canImport(Glibc)
    import Glibc
#endif

/// A settings file: `TOLLGATE_NAME=value` lines, `#` comments and blank lines. It can hold what
/// must stay out of argv (keys, the database URL) and, unlike the environment of a running
/// process, it can change: `tollgate serve` re-reads it on SIGHUP.
enum SettingsFile {
    static func read(_ path: String) throws(SettingsError) -> [String: String] {
        guard let file = fopen(path, "r") else {
            throw SettingsError(description: "TOLLGATE_SETTINGS_FILE: cannot read \(path)")
        }
        defer { fclose(file) }
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            text.append(contentsOf: buffer[0..<count])
        }
        return try parse(String(decoding: text, as: UTF8.self))
    }

    static func parse(_ text: String) throws(SettingsError) -> [String: String] {
        var entries: [String: String] = [:]
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.drop { $0 == " " || $0 == "\t" }
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "="), line.hasPrefix("TOLLGATE_") else {
                throw SettingsError(
                    description: "TOLLGATE_SETTINGS_FILE: line \(number + 1) is not TOLLGATE_NAME=value")
            }
            var value = line[line.index(after: equals)...]
            while let last = value.last, last == " " || last == "\t" || last == "\r" { value = value.dropLast() }
            entries[String(line[..<equals])] = String(value)
        }
        return entries
    }
}
