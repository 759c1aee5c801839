import TollgateCore

#if canImport(Glibc)
    import Glibc
#endif

/// One file `sql/NNN_name.sql`: its number is its schema version.
public struct Migration: Sendable, Equatable {
    public let version: Int
    /// The file name, e.g. `001_schema.sql`.
    public let name: String
    public let sql: String

    public init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
    }

    /// SHA-256 of the file, recorded when it is applied: an applied migration must not change.
    public var checksum: String {
        SHA256.hex(SHA256.hash(sql))
    }

    /// Every `NNN_*.sql` of `directory`, ordered by version. Two files with one number, or none
    /// at all, is an error.
    public static func load(directory: String) throws(StoreError) -> [Migration] {
        let names = try fileNames(in: directory)
        var migrations: [Migration] = []
        for name in names {
            guard let version = version(ofFileName: name) else { continue }
            migrations.append(Migration(version: version, name: name, sql: try readFile("\(directory)/\(name)")))
        }
        migrations.sort { $0.version < $1.version }
        guard !migrations.isEmpty else { throw StoreError(.migrationFailed, "no NNN_*.sql files in \(directory)") }
        for (earlier, later) in zip(migrations, migrations.dropFirst()) where earlier.version == later.version {
            throw StoreError(.migrationFailed, "\(earlier.name) and \(later.name) have the same number")
        }
        return migrations
    }

    /// The version of `NNN_anything.sql` (three digits or more, then `_`); nil for other names.
    static func version(ofFileName name: String) -> Int? {
        guard name.hasSuffix(".sql"), let underscore = name.firstIndex(of: "_") else { return nil }
        let digits = name[..<underscore]
        guard digits.count >= 3, digits.allSatisfy(\.isASCII), let number = Int(digits), number > 0 else { return nil }
        return number
    }

    private static func fileNames(in directory: String) throws(StoreError) -> [String] {
        guard let stream = opendir(directory) else {
            throw StoreError(.migrationFailed, "cannot read the migrations directory \(directory)")
        }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            names.append(name)
        }
        return names
    }

    private static func readFile(_ path: String) throws(StoreError) -> String {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw StoreError(.migrationFailed, "cannot open \(path)") }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard count >= 0 else { throw StoreError(.migrationFailed, "cannot read \(path)") }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
