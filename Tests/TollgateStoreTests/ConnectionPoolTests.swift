import Testing

@testable import TollgateStore

@Suite(
    "Connections and the pool in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct ConnectionPoolTests {
    @Test("a pooled connection killed by the server is replaced, and the call still succeeds")
    func reconnects() throws {
        let url = try #require(TestDatabase.url)
        let pool = ConnectionPool(conninfo: url, size: 1)
        let first = try pool.withConnection { connection throws(StoreError) in
            try connection.execute("SELECT pg_backend_pid()").scalar
        }
        let killer = try PostgresConnection(conninfo: url)
        #expect(try TestDatabase.scalar(killer, "SELECT pg_terminate_backend($1::int)", [first]) == "t")

        let second = try pool.withConnection { connection throws(StoreError) in
            try connection.execute("SELECT pg_backend_pid()").scalar
        }

        #expect(second != nil)
        #expect(second != first)
    }

    @Test("a borrower finding every connection busy gives up at its deadline")
    func waitsWithDeadline() throws {
        let pool = ConnectionPool(conninfo: try #require(TestDatabase.url), size: 1, waitLimit: .milliseconds(200))
        let started = ContinuousClock.now

        let inner: StoreError? = try pool.withConnection { _ throws(StoreError) in
            do throws(StoreError) {
                _ = try pool.withConnection { connection throws(StoreError) in try connection.execute("SELECT 1") }
                return nil
            } catch {
                return error
            }
        }

        #expect(inner?.code == .timeout)
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        // The permit came back: the pool serves again.
        #expect(
            try pool.withConnection { connection throws(StoreError) in try connection.execute("SELECT 7").scalar }
                == "7")
    }

    @Test("a statement over the statement timeout is cancelled with code timeout")
    func statementTimeout() throws {
        let connection = try PostgresConnection(
            conninfo: try #require(TestDatabase.url), statementTimeout: .milliseconds(100))
        #expect {
            try connection.execute("SELECT pg_sleep(5)")
        } throws: { error in
            (error as? StoreError)?.code == .timeout
        }
        #expect(connection.isHealthy)
    }

    @Test("parameters travel as text, NULL as nil; failed statements carry their SQLSTATE")
    func parametersAndErrors() throws {
        let connection = try PostgresConnection(conninfo: try #require(TestDatabase.url))
        let result = try connection.execute(
            "SELECT $1::text AS a, $2::text AS b, $3::int + 1 AS c", parameters: ["it's \"quoted\"", nil, "41"])
        #expect(result.columns == ["a", "b", "c"])
        #expect(result.rows == [["it's \"quoted\"", nil, "42"]])
        #expect {
            try connection.execute("SELECT * FROM no_such_table")
        } throws: { error in
            let storeError = error as? StoreError
            return storeError?.code == .queryFailed && storeError?.sqlState == "42P01"
        }
        #expect(try connection.execute("SELECT 1").scalar == "1")
    }
}
