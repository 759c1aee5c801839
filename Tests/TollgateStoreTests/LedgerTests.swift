import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite(
    "The ledger and the roles in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct LedgerTests {
    /// A user with one settled request; returns the request id.
    private func settledRequest(_ connection: PostgresConnection) throws -> String {
        let (_, key) = try TestDatabase.userWithKey(connection)
        let metering = try TestDatabase.metering()
        let request = generationRequest(key: key)
        let ticket = try #require(metering.admit(request).ticket)
        metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 5, outputTokens: 5)))
        return request.requestID
    }

    @Test(
        "the ledger refuses UPDATE, DELETE and TRUNCATE, even from its owner",
        arguments: [
            "UPDATE tollgate.ledger SET total_tokens = 0 WHERE request_id = $1",
            "DELETE FROM tollgate.ledger WHERE request_id = $1", "TRUNCATE tollgate.ledger",
        ])
    func appendOnly(statement: String) throws {
        let connection = try TestDatabase.migrated()
        let requestID = try settledRequest(connection)

        #expect {
            _ = try connection.execute(statement, parameters: statement.contains("$1") ? [requestID] : [])
        } throws: { error in
            (error as? StoreError)?.sqlState == "42501"
        }
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT total_tokens FROM tollgate.ledger WHERE request_id = $1", [requestID])
                == "10")
    }

    @Test("tollgate_worker may insert and read the ledger and call admit, and may not update it or read keys")
    func workerRole() throws {
        let connection = try TestDatabase.migrated()
        let requestID = try settledRequest(connection)

        try connection.transaction { () throws(StoreError) in
            _ = try connection.execute("SET LOCAL ROLE tollgate_worker")
            #expect(
                try connection.execute("SELECT 1 FROM tollgate.ledger WHERE request_id = $1", parameters: [requestID])
                    .rows.count == 1)
            let outcome = try connection.execute(
                "SELECT outcome FROM tollgate.admit(gen_random_uuid(), '\\x00'::bytea, NULL, 1, 1, 'responses', 'm', "
                    + "false, 'w', NULL)")
            #expect(outcome.scalar == "unknown_key")
            _ = try connection.execute("SAVEPOINT probe")
            #expect(throws: StoreError.self) {
                try connection.execute(
                    "UPDATE tollgate.ledger SET model = 'x' WHERE request_id = $1", parameters: [requestID])
            }
            _ = try connection.execute("ROLLBACK TO SAVEPOINT probe")
            #expect(throws: StoreError.self) { try connection.execute("SELECT key_hash FROM tollgate.api_keys") }
            _ = try connection.execute("ROLLBACK TO SAVEPOINT probe")
        }
    }

    @Test("tollgate_reporter reads the ledger, users and views, but not key hashes or BYOK ciphertext")
    func reporterRole() throws {
        let connection = try TestDatabase.migrated()
        _ = try settledRequest(connection)

        try connection.transaction { () throws(StoreError) in
            _ = try connection.execute("SET LOCAL ROLE tollgate_reporter")
            for view in ["ledger", "users", "usage_per_user_day", "usage_per_model_day", "quota_standing"] {
                _ = try connection.execute("SELECT * FROM tollgate.\(view) LIMIT 1")
            }
            _ = try connection.execute("SELECT id, prefix, revoked_at FROM tollgate.api_keys LIMIT 1")
            _ = try connection.execute("SELECT user_id, hint FROM tollgate.byok_keys LIMIT 1")
            _ = try connection.execute("SAVEPOINT probe")
            for forbidden in [
                "SELECT key_hash FROM tollgate.api_keys", "SELECT ciphertext FROM tollgate.byok_keys",
                "INSERT INTO tollgate.users (name) VALUES ('reporter-was-here')",
                "SELECT tollgate.release_worker('x')",
            ] {
                #expect(throws: StoreError.self) { try connection.execute(forbidden) }
                _ = try connection.execute("ROLLBACK TO SAVEPOINT probe")
            }
        }
    }

    @Test("the views add up the ledger per user, per model and per day")
    func views() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try TestDatabase.metering()
        for model in ["model-a", "model-a", "model-b"] {
            let request = generationRequest(key: key, model: model)
            let ticket = try #require(metering.admit(request).ticket)
            metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 10, outputTokens: 1)))
        }

        let perUser = try connection.execute(
            "SELECT requests, total_tokens FROM tollgate.usage_per_user_day WHERE user_name = $1", parameters: [user])
        #expect(perUser.rows.count == 1)
        #expect(perUser.integer("requests") == 3)
        #expect(perUser.integer("total_tokens") == 33)
        let standing = try connection.execute(
            "SELECT quota, used, reserved, remaining, period FROM tollgate.quota_standing WHERE user_name = $1",
            parameters: [user])
        #expect(standing.rows.first == ["10000", "33", "0", "9967", "day"])
        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT count(*) FROM tollgate.usage_per_model_day WHERE model IN ('model-a', 'model-b') "
                    + "AND day = (now() AT TIME ZONE 'UTC')::date") == "2")
    }
}
