import Testing

@testable import TollgateStore

@Suite(
    "Migrations in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct MigratorTests {
    @Test("migrating twice changes nothing")
    func twice() throws {
        let connection = try TestDatabase.migrated()
        let migrations = try Migration.load(directory: TestDatabase.sqlDirectory)
        let catalog = """
            SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'tollgate') || '/' ||
                   (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname = 'tollgate') || '/' ||
                   (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = 'tollgate.ledger'::regclass) || '/' ||
                   (SELECT string_agg(version || ':' || checksum, ',' ORDER BY version) FROM tollgate.schema_version)
            """
        let before = try TestDatabase.scalar(connection, catalog)

        let applied = try Migrator(connection: connection).migrate(migrations)

        #expect(applied.isEmpty)
        #expect(try TestDatabase.scalar(connection, catalog) == before)
        #expect(try Migrator(connection: connection).currentVersion() == migrations.count)
    }

    @Test("two migrators on a fresh database apply each migration exactly once")
    func concurrentFresh() throws {
        let admin = try PostgresConnection(conninfo: try #require(TestDatabase.url))
        let database = TestDatabase.uniqueName("tollgate_test").replacing("-", with: "_")
        _ = try admin.execute("CREATE DATABASE \(database)")
        defer { _ = try? admin.execute("DROP DATABASE \(database) WITH (FORCE)") }
        let migrations = try Migration.load(directory: TestDatabase.sqlDirectory)
        let url = try #require(TestDatabase.url)
        let applied = Collected<[Int]>()
        let failures = Collected<String>()

        ThreadGroup.run(2) { _ in
            do {
                let connection = try PostgresConnection(conninfo: url, database: database)
                applied.append(try Migrator(connection: connection).migrate(migrations).map(\.version))
            } catch {
                failures.append("\(error)")
            }
        }

        #expect(failures.all.isEmpty)
        #expect(applied.all.flatMap { $0 }.sorted() == migrations.map(\.version))
        let fresh = try PostgresConnection(conninfo: url, database: database)
        #expect(
            try TestDatabase.scalar(fresh, "SELECT count(*) FROM tollgate.schema_version") == String(migrations.count))
    }

    @Test("a migration edited after it was applied is refused")
    func editedMigration() throws {
        let connection = try TestDatabase.migrated()
        var migrations = try Migration.load(directory: TestDatabase.sqlDirectory)
        migrations[0] = Migration(version: 1, name: migrations[0].name, sql: migrations[0].sql + "\n-- edited\n")
        #expect {
            try Migrator(connection: connection).migrate(migrations)
        } throws: { error in
            let storeError = error as? StoreError
            return storeError?.code == .migrationFailed && storeError?.message.contains("changed after") == true
        }
    }
}
