import CPostgres

#if canImport(Glibc)
    import Glibc
#endif

/// One libpq connection (`PGconn`), owned by this object and freed in `deinit`.
///
/// Not thread-safe: one thread uses it at a time (the `ConnectionPool` guarantees that). Every
/// call blocks for a round trip to the server. Statements use the text format for parameters and
/// results. The connection string is kept only to reconnect; it is never logged, and neither are
/// parameters (they carry key hashes, and BYOK keys or the secret in admin commands).
public final class PostgresConnection {
    private var handle: OpaquePointer?
    private let conninfo: String
    private let database: String?
    private let statementTimeout: Duration?
    /// Names of the statements prepared on the current server session.
    private var prepared: Set<String> = []

    /// Connects at once. `conninfo` is a libpq connection string or URI; unless it says otherwise,
    /// connecting gives up after 5 s and the session is named "tollgate". `database`, when set,
    /// replaces the database the string names. `statementTimeout`, when set, makes the server
    /// cancel any statement that runs longer (an error with code `timeout`).
    public init(conninfo: String, database: String? = nil, statementTimeout: Duration? = nil) throws(StoreError) {
        self.conninfo = conninfo
        self.database = database
        self.statementTimeout = statementTimeout
        try Self.validate(conninfo)
        try open()
    }

    deinit {
        if let handle { PQfinish(handle) }
    }

    /// Whether libpq considers the connection usable. A server that went away unnoticed is only
    /// found out by the next call, which then fails with `connectionLost`.
    public var isHealthy: Bool {
        guard let handle else { return false }
        return PQstatus(handle) == CONNECTION_OK && PQtransactionStatus(handle) == PQTRANS_IDLE
    }

    /// Drops the session and opens a new one with the same settings; prepared statements are lost.
    public func reconnect() throws(StoreError) {
        close()
        try open()
    }

    /// Runs one statement with `$1...` parameters (nil is NULL) and returns its rows.
    public func execute(_ sql: String, parameters: [String?] = []) throws(StoreError) -> QueryResult {
        let connection = try liveHandle()
        let result = Self.withCStrings(parameters) { values in
            PQexecParams(connection, sql, Int32(values.count), nil, values, nil, nil, 0)
        }
        return try consume(result)
    }

    /// Runs a statement prepared once per session under `name`: the server plans it once, and
    /// each call then sends only the parameters.
    public func executePrepared(_ name: String, sql: String, parameters: [String?]) throws(StoreError) -> QueryResult {
        let connection = try liveHandle()
        if !prepared.contains(name) {
            _ = try consume(PQprepare(connection, name, sql, Int32(parameters.count), nil))
            prepared.insert(name)
        }
        let result = Self.withCStrings(parameters) { values in
            PQexecPrepared(connection, name, Int32(values.count), values, nil, nil, 0)
        }
        return try consume(result)
    }

    /// Runs a script of several statements separated by semicolons, without parameters (a
    /// migration file). Inside a transaction, the first failing statement aborts the rest.
    public func executeScript(_ sql: String) throws(StoreError) {
        _ = try consume(PQexec(try liveHandle(), sql))
    }

    /// Runs `body` between BEGIN and COMMIT; any error rolls back and is rethrown.
    public func transaction<T>(_ body: () throws(StoreError) -> T) throws(StoreError) -> T {
        _ = try execute("BEGIN")
        do {
            let value = try body()
            _ = try execute("COMMIT")
            return value
        } catch {
            _ = try? execute("ROLLBACK")
            throw error
        }
    }

    private func open() throws(StoreError) {
        // Defaults come first: the connection string, expanded in place of dbname, overrides them.
        // Only the first dbname is expanded as a connection string; a second one names the database.
        var keywords = ["connect_timeout", "application_name", "dbname"]
        var values = ["5", "tollgate", conninfo]
        if let database {
            keywords.append("dbname")
            values.append(database)
        }
        let connection = Self.withCStrings(keywords) { keywordPointers in
            Self.withCStrings(values) { valuePointers in
                PQconnectdbParams(keywordPointers + [nil], valuePointers + [nil], 1)
            }
        }
        guard let connection else { throw StoreError(.connectionFailed, "libpq could not allocate a connection") }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = Self.firstLine(PQerrorMessage(connection))
            PQfinish(connection)
            throw StoreError(.connectionFailed, message)
        }
        PQsetNoticeProcessor(connection, tollgate_pq_ignore_notice, nil)
        handle = connection
        prepared = []
        try applyStatementTimeout()
    }

    private func applyStatementTimeout() throws(StoreError) {
        guard let statementTimeout else { return }
        let (seconds, attoseconds) = statementTimeout.components
        let milliseconds = max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        _ = try execute("SET statement_timeout = \(milliseconds)")
    }

    private func close() {
        if let handle { PQfinish(handle) }
        handle = nil
        prepared = []
    }

    private func liveHandle() throws(StoreError) -> OpaquePointer {
        guard let handle else { throw StoreError(.connectionLost, "the connection is closed") }
        return handle
    }

    /// Turns a libpq result into rows or an error, and frees it.
    private func consume(_ result: OpaquePointer?) throws(StoreError) -> QueryResult {
        guard let result else { throw failureWithoutResult() }
        defer { PQclear(result) }

        let status = PQresultStatus(result)
        guard status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK else { throw failure(of: result) }

        let columnCount = PQnfields(result)
        let columns = (0..<columnCount).map { String(cString: PQfname(result, $0)) }
        let rows = (0..<PQntuples(result)).map { row in
            (0..<columnCount).map { column -> String? in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            }
        }
        return QueryResult(columns: columns, rows: rows, affectedRows: Int(String(cString: PQcmdTuples(result))) ?? 0)
    }

    private func failure(of result: OpaquePointer) -> StoreError {
        let sqlState = tollgate_pq_sqlstate(result).map { String(cString: $0) }
        let primary = tollgate_pq_primary_message(result).map { String(cString: $0) }
        let message = primary ?? handle.map { Self.firstLine(PQerrorMessage($0)) } ?? "unknown failure"
        if let handle, PQstatus(handle) != CONNECTION_OK {
            return StoreError(.connectionLost, message, sqlState: sqlState)
        }
        switch sqlState {
        case "57014": return StoreError(.timeout, message, sqlState: sqlState)
        case .some(let state) where state.hasPrefix("08") || state.hasPrefix("57P"):
            return StoreError(.connectionLost, message, sqlState: sqlState)
        default: return StoreError(.queryFailed, message, sqlState: sqlState)
        }
    }

    private func failureWithoutResult() -> StoreError {
        guard let handle else { return StoreError(.connectionLost, "the connection is closed") }
        let message = Self.firstLine(PQerrorMessage(handle))
        return PQstatus(handle) == CONNECTION_OK
            ? StoreError(.queryFailed, message) : StoreError(.connectionLost, message)
    }

    /// Parse errors are not quoted: libpq's text may echo a piece of the string, password included.
    private static func validate(_ conninfo: String) throws(StoreError) {
        var parseError: UnsafeMutablePointer<CChar>?
        let options = PQconninfoParse(conninfo, &parseError)
        if let parseError { PQfreemem(parseError) }
        guard let options else {
            throw StoreError(.invalidSetting, "the database connection string is not valid libpq syntax")
        }
        PQconninfoFree(options)
    }

    private static func firstLine(_ text: UnsafePointer<CChar>?) -> String {
        guard let text else { return "unknown failure" }
        let line = String(cString: text).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        return line.isEmpty ? "unknown failure" : line
    }

    /// Calls `body` with C copies of `strings` (nil stays NULL), valid only during the call.
    private static func withCStrings<R>(_ strings: [String?], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
        let copies = strings.map { $0.flatMap { strdup($0) } }
        defer { for copy in copies { free(copy) } }
        return body(copies.map { $0.map { UnsafePointer($0) } })
    }
}
