import Testing

@testable import TollgateStore

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Migration files")
struct MigrationFileTests {
    @Test("the repository's migrations load in order, numbered from 1 without gaps")
    func repository() throws {
        let migrations = try Migration.load(directory: TestDatabase.sqlDirectory)
        #expect(migrations.map(\.version) == Array(1...migrations.count))
        #expect(migrations.first?.name == "001_schema.sql")
        #expect(migrations.allSatisfy { $0.checksum.count == 64 && !$0.sql.isEmpty })
    }

    @Test("no migration opens or ends its own transaction (the migrator owns it)")
    func noTransactionControl() throws {
        for migration in try Migration.load(directory: TestDatabase.sqlDirectory) {
            let statements = migration.sql.uppercased().split(separator: "\n").map { $0.trimmingCharacters() }
            #expect(
                !statements.contains { $0.hasPrefix("BEGIN;") || $0.hasPrefix("COMMIT") || $0.hasPrefix("ROLLBACK") })
        }
    }

    @Test("file names: three or more digits, an underscore, .sql")
    func fileNames() {
        #expect(Migration.version(ofFileName: "001_schema.sql") == 1)
        #expect(Migration.version(ofFileName: "0042_more.sql") == 42)
        #expect(Migration.version(ofFileName: "01_short.sql") == nil)
        #expect(Migration.version(ofFileName: "001_schema.sql.orig") == nil)
        #expect(Migration.version(ofFileName: "abc_schema.sql") == nil)
        #expect(Migration.version(ofFileName: "000_zero.sql") == nil)
        #expect(Migration.version(ofFileName: "README.md") == nil)
    }

    @Test("two files with one number, or no files, are refused")
    func badDirectories() throws {
        let directory = try temporaryDirectory()
        defer { removeTree(directory) }
        #expect(throws: StoreError.self) { try Migration.load(directory: directory) }
        try writeFile(directory + "/001_a.sql", "SELECT 1;")
        try writeFile(directory + "/001_b.sql", "SELECT 2;")
        #expect {
            try Migration.load(directory: directory)
        } throws: { error in
            (error as? StoreError)?.message.contains("same number") == true
        }
        #expect(throws: StoreError.self) { try Migration.load(directory: directory + "/missing") }
    }

    private func temporaryDirectory() throws -> String {
        var template = Array(("/tmp/tollgate-migrations-" + String(repeating: "X", count: 6)).utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func writeFile(_ path: String, _ text: String) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        var bytes = Array(text.utf8)
        #expect(bytes.withUnsafeMutableBytes { write(descriptor, $0.baseAddress, $0.count) } == bytes.count)
    }

    private func removeTree(_ directory: String) {
        for name in ["001_a.sql", "001_b.sql"] { unlink(directory + "/" + name) }
        rmdir(directory)
    }
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        String(drop { $0.isWhitespace })
    }
}

@Suite("Finding the migrations directory")
struct MigrationDirectoryTests {
    static let repository = String(TestDatabase.sqlDirectory.dropLast("/sql".count))

    @Test("TOLLGATE_SQL_DIR wins")
    func override() {
        #expect(Migrator.defaultDirectory(environment: ["TOLLGATE_SQL_DIR": "/opt/sql"]) == "/opt/sql")
    }

    @Test(
        "a build's executable finds the repository's sql/",
        arguments: ["/.build/release/tollgate", "/.build/x86_64-unknown-linux-gnu/release/tollgate"])
    func fromBuild(relative: String) {
        #expect(
            Migrator.defaultDirectory(environment: [:], executable: Self.repository + relative)
                == Self.repository + "/sql")
    }

    @Test("an executable far from any sql/ finds nothing")
    func nothing() {
        #expect(Migrator.defaultDirectory(environment: [:], executable: "/nonexistent/a/b/c/d/e/f/tollgate") == nil)
    }
}
