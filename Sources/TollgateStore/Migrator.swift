#if canImport(Glibc)
    import Glibc
#endif

/// Brings a database's `tollgate` schema up to the newest migration: applies, in order, each
/// `sql/NNN_*.sql` not yet recorded in `tollgate.schema_version`, each in its own transaction.
///
/// Safe to run twice (nothing happens) and from two machines at once: every transaction first
/// takes a transaction-scoped advisory lock, so a second migrator waits, then finds the version
/// recorded and skips it. The files are read from a directory at run time (not embedded), so an
/// operator can read exactly what will run.
public struct Migrator {
    /// Key of the advisory lock all Tollgate migrators share (an arbitrary fixed number).
    static let lockKey = "7340117001"

    let connection: PostgresConnection

    public init(connection: PostgresConnection) {
        self.connection = connection
    }

    /// Applies what is missing; returns the migrations applied now (empty when up to date).
    /// Fails if an applied migration's file has changed since.
    @discardableResult
    public func migrate(_ migrations: [Migration]) throws(StoreError) -> [Migration] {
        var applied: [Migration] = []
        for migration in migrations.sorted(by: { $0.version < $1.version }) {
            if try apply(migration) { applied.append(migration) }
        }
        return applied
    }

    /// The newest version recorded, 0 for a database never migrated.
    public func currentVersion() throws(StoreError) -> Int {
        let result = try connection.execute(
            "SELECT CASE WHEN to_regclass('tollgate.schema_version') IS NULL THEN 0 "
                + "ELSE (SELECT coalesce(max(version), 0) FROM tollgate.schema_version) END AS version")
        return result.integer("version") ?? 0
    }

    private func apply(_ migration: Migration) throws(StoreError) -> Bool {
        try connection.transaction { () throws(StoreError) -> Bool in
            _ = try connection.execute("SELECT pg_advisory_xact_lock(\(Self.lockKey))")
            try connection.executeScript(Self.bookkeeping)
            let recorded = try connection.execute(
                "SELECT checksum FROM tollgate.schema_version WHERE version = $1",
                parameters: [String(migration.version)])
            if let checksum = recorded.rows.first {
                guard checksum.first == migration.checksum else {
                    throw StoreError(
                        .migrationFailed,
                        "\(migration.name) changed after it was applied; add a new migration instead of editing it")
                }
                return false
            }
            do throws(StoreError) {
                try connection.executeScript(migration.sql)
            } catch {
                throw StoreError(.migrationFailed, "\(migration.name): \(error.message)", sqlState: error.sqlState)
            }
            _ = try connection.execute(
                "INSERT INTO tollgate.schema_version (version, name, checksum) VALUES ($1, $2, $3)",
                parameters: [String(migration.version), migration.name, migration.checksum])
            return true
        }
    }

    static let bookkeeping = """
        CREATE SCHEMA IF NOT EXISTS tollgate;
        CREATE TABLE IF NOT EXISTS tollgate.schema_version (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        );
        """

    /// Where the SQL files are: TOLLGATE_SQL_DIR if set; otherwise the first `sql/` directory
    /// holding migrations found next to the executable or up to four levels above it (the
    /// repository's `sql/` for `.build/release/tollgate`), then `<prefix>/share/tollgate/sql`.
    /// `executable` defaults to this process's own (resolved through /proc/self/exe).
    public static func defaultDirectory(environment: [String: String], executable: String? = nil) -> String? {
        if let directory = environment["TOLLGATE_SQL_DIR"], !directory.isEmpty { return directory }
        guard let executable = executable ?? executablePath() else { return nil }
        var directory = parent(of: executable)
        var candidates: [String] = []
        for _ in 0..<5 {
            candidates.append(directory + "/sql")
            directory = parent(of: directory)
        }
        candidates.append(parent(of: parent(of: executable)) + "/share/tollgate/sql")
        return candidates.first { (try? Migration.load(directory: $0)) != nil }
    }

    private static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }
}
