import TollgateProxy
import TollgateStore

#if canImport(Glibc)
    import Glibc
#endif

/// The admin commands of `tollgate`: `migrate`, `user`, `key`, `byok` and `usage`. They work on
/// the database named by TOLLGATE_DATABASE_URL, print results on standard output, and report a
/// failure as one line on standard error with exit status 1 (2 for a usage error).
enum AdminCommand {
    /// Lines for the `tollgate help` text.
    static let summary = """
          migrate    create or update the metering schema in the database (tollgate migrate --help)
          user       add users, set their quota, disable them (tollgate user --help)
          key        issue and revoke API keys (tollgate key --help)
          byok       store or remove a user's own provider key (tollgate byok --help)
          usage      token totals per user and model from the ledger (tollgate usage --help)

        """

    /// Runs `command` with the arguments after it; nil when `command` is not an admin command.
    static func run(_ command: String, _ arguments: [String]) -> Int32? {
        let handler: ([String]) throws(AdminFailure) -> Void
        switch command {
        case "migrate": handler = migrate
        case "user": handler = user
        case "key": handler = key
        case "byok": handler = byok
        case "usage": handler = usageTotals
        default: return nil
        }
        do throws(AdminFailure) {
            try handler(arguments)
            return 0
        } catch {
            switch error {
            case .usage(let message): return printError("\(message) (see tollgate \(command) --help)", status: 2)
            case .failed(let message): return printError(message, status: 1)
            }
        }
    }

    /// A connection to TOLLGATE_DATABASE_URL, for one command.
    static func connect() throws(AdminFailure) -> PostgresConnection {
        guard let url = ProcessEnvironment.current()["TOLLGATE_DATABASE_URL"], !url.isEmpty else {
            throw .failed(
                "TOLLGATE_DATABASE_URL is not set "
                    + "(a libpq connection string, e.g. 'host=/run/postgresql dbname=tollgate')")
        }
        do {
            return try PostgresConnection(conninfo: url)
        } catch {
            throw .failed("cannot connect to the database: \(error.message)")
        }
    }

    /// Runs a store call, turning its error into a failure line.
    static func store<T>(_ body: () throws(StoreError) -> T) throws(AdminFailure) -> T {
        do {
            return try body()
        } catch {
            throw .failed(error.message)
        }
    }

    /// Prints help and returns true when the arguments ask for it.
    static func helped(_ arguments: [String], _ text: String) -> Bool {
        guard AdminArguments.wantsHelp(arguments) else { return false }
        print(text, terminator: "")
        return true
    }

    static func printError(_ message: String, status: Int32) -> Int32 {
        printError(message)
        return status
    }

    /// One line on standard error, prefixed like every other tollgate error.
    static func printError(_ message: String) {
        var line = Array("tollgate: \(message)\n".utf8)
        _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }

    private static let migrateUsage = """
        usage: tollgate migrate

        Creates or updates the metering schema ('tollgate') in the database named by
        TOLLGATE_DATABASE_URL: applies, in order, each sql/NNN_*.sql file not yet recorded in
        tollgate.schema_version, each in its own transaction. Running it again changes nothing;
        two machines may run it at once. The files are read from TOLLGATE_SQL_DIR, or else from
        the sql/ directory found next to (or above) the executable, or <prefix>/share/tollgate/sql.

        """

    private static func migrate(_ arguments: [String]) throws(AdminFailure) {
        if helped(arguments, migrateUsage) { return }
        _ = try AdminArguments(arguments).positionals(0, naming: "")
        guard let directory = Migrator.defaultDirectory(environment: ProcessEnvironment.current()) else {
            throw .failed("cannot find the sql/ migrations directory; set TOLLGATE_SQL_DIR")
        }
        let migrations = try store { () throws(StoreError) in try Migration.load(directory: directory) }
        let migrator = Migrator(connection: try connect())
        let applied = try store { () throws(StoreError) in try migrator.migrate(migrations) }
        for migration in applied { print("applied \(migration.name)") }
        let version = try store { () throws(StoreError) in try migrator.currentVersion() }
        print(applied.isEmpty ? "schema already at version \(version)" : "schema at version \(version)")
    }
}
