import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// `PostgresMetering.settle(_ settlements:)`: many settlements in one round trip (tollgate.settle_batch).
@Suite(
    "Settlement in batches in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct BatchSettlementTests {
    /// A settlement for `userID` that no admission reserved anything for (as under the allow policy).
    private func unreserved(userID: String?, total: Int, keySource: KeySource = .platform) -> Settlement {
        let request = generationRequest()
        let ticket = AdmissionTicket(upstreamKey: "", keySource: keySource, userID: userID)
        return completedSettlement(request, ticket, usage: Usage(inputTokens: total - 10, outputTokens: 10))
    }

    @Test("a batch with and without reservations counts each once; the same batch again adds nothing")
    func idempotent() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let (free, freeKey) = try TestDatabase.userWithKey(connection)
        let metering = try TestDatabase.metering()
        let requests =
            [300, 200, 100].map { generationRequest(key: key, reserve: $0) } + [
                generationRequest(key: freeKey, reserve: 900)
            ]
        let tickets = try metering.admit(requests).map { try #require($0.ticket) }
        let userID = tickets[0].userID
        var batch = zip(requests, tickets).enumerated().map { index, pair in
            completedSettlement(pair.0, pair.1, usage: Usage(inputTokens: 10 * (index + 1), outputTokens: 5))
        }
        batch += [
            unreserved(userID: userID, total: 70), unreserved(userID: userID, total: 30),
            unreserved(userID: userID, total: 500, keySource: .byok),
        ]
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 600))

        let first = PostgresMetering.record(batch, pool: metering.pool)
        let counted = try TestDatabase.counters(connection, user: user)
        metering.settle(batch)
        let second = PostgresMetering.record(batch, pool: metering.pool)

        #expect(first.map { try? $0.get() } == Array(repeating: true, count: batch.count))
        #expect(second.map { try? $0.get() } == Array(repeating: false, count: batch.count))
        // Reserved requests: 15 + 25 + 35; without a reservation: 70 + 30; BYOK: not counted.
        #expect(counted == (used: 175, reserved: 0))
        #expect(try TestDatabase.counters(connection, user: user) == counted)
        #expect(try TestDatabase.ledgerRows(connection, batch) == String(batch.count))
        #expect(
            try TestDatabase.scalar(
                connection,
                "SELECT count(*) FROM tollgate.usage_counters c "
                    + "JOIN tollgate.users u ON u.id = c.user_id WHERE u.name = $1", [free]) == "0")
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.reservations WHERE request_id = ANY($1::uuid[])",
                [PostgresArray.literal(batch.map(\.requestID))]) == "0")
    }

    @Test("a request id twice in one batch counts once: the first occurrence is recorded")
    func repeatedInBatch() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try TestDatabase.metering()
        let request = generationRequest(key: key, reserve: 400)
        let ticket = try #require(metering.admit(request).ticket)
        let settlement = completedSettlement(request, ticket, usage: Usage(inputTokens: 60, outputTokens: 40))
        var again = settlement
        again.usage = Usage(inputTokens: 600, outputTokens: 400)

        let results = PostgresMetering.record([settlement, again], pool: metering.pool)

        #expect(results.map { try? $0.get() } == [true, false])
        #expect(try TestDatabase.counters(connection, user: user) == (used: 100, reserved: 0))
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT total_tokens FROM tollgate.ledger WHERE request_id = $1", [request.requestID])
                == "100")
    }

    @Test("a settlement the database refuses fails alone; the rest of its batch is recorded")
    func refusedAlone() throws {
        let connection = try TestDatabase.migrated()
        let (user, _) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let userID = try TestDatabase.scalar(connection, "SELECT id FROM tollgate.users WHERE name = $1", [user])
        let metering = try TestDatabase.metering()
        var malformed = unreserved(userID: userID, total: 40)
        malformed.requestID = "not-a-uuid"
        let batch = [unreserved(userID: userID, total: 20), malformed, unreserved(userID: userID, total: 30)]

        let results = PostgresMetering.record(batch, pool: metering.pool)

        #expect(try results[0].get())
        #expect(try results[2].get())
        #expect(throws: StoreError.self) { try results[1].get() }
        #expect(try TestDatabase.counters(connection, user: user) == (used: 50, reserved: 0))
    }

    @Test("the per-request SQL functions are batches of one with the same answers")
    func singleFunctions() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1000)
        let request = generationRequest(key: key, reserve: 700)
        let admit = """
            SELECT outcome, reserved FROM tollgate.admit($1::uuid, $2::bytea, NULL, $3::bigint, 10, 'responses',
                                                         'gpt-test', false, 'sql-test:1', NULL)
            """
        let hash = APIKey.byteaLiteral(APIKey.hash(key))

        let admitted = try connection.execute(admit, parameters: [request.requestID, hash, "700"])
        let refused = try connection.execute(admit, parameters: [RequestID.make(), hash, "400"])
        let userID = try #require(
            try TestDatabase.scalar(connection, "SELECT id FROM tollgate.users WHERE name = $1", [user]))
        let settle = """
            SELECT tollgate.settle($1::uuid, $2::bigint, NULL, 'responses', 'gpt-test', false, 'platform', 'completed',
                                   200, 80, 0, 20, 0, 100, 'reported', now(), NULL, 12.5)
            """
        let settled = try connection.execute(settle, parameters: [request.requestID, userID]).scalar
        let again = try connection.execute(settle, parameters: [request.requestID, userID]).scalar

        #expect(admitted.rows == [["admitted", "700"]])
        #expect(refused.value("outcome") == "insufficient_quota")
        #expect([settled, again] == ["t", "f"])
        #expect(try TestDatabase.counters(connection, user: user) == (used: 100, reserved: 0))
    }

    @Test("a worker starts only on a database that has the batch functions")
    func verify() throws {
        _ = try TestDatabase.migrated()
        try TestDatabase.metering().verify()

        let url = try #require(TestDatabase.url)
        // The cluster's maintenance database has no Tollgate schema (a URI cannot take a second dbname).
        try #require(!url.contains("://"))
        let bare = PostgresMetering(settings: MeteringSettings(databaseURL: url + " dbname=postgres", platformKey: ""))
        #expect(throws: StoreError(.invalidSetting, "the database has no Tollgate schema yet: run 'tollgate migrate'"))
        {
            try bare.verify()
        }
    }

    @Test("the batch functions run as their owner with a fixed search_path, generic plans and index scans")
    func privileges() throws {
        let connection = try TestDatabase.migrated()
        let signatures = [
            "tollgate.authenticate_batch(bytea[], text[], text)", PostgresMetering.admitBatchSignature,
            PostgresMetering.settleBatchSignature,
        ]
        for signature in signatures {
            let row = try connection.execute(
                """
                SELECT p.prosecdef, array_to_string(p.proconfig, ','),
                       has_function_privilege('tollgate_worker', p.oid, 'EXECUTE'),
                       has_function_privilege('public', p.oid, 'EXECUTE')
                FROM pg_proc p WHERE p.oid = to_regprocedure($1)
                """, parameters: [signature])
            #expect(
                row.rows == [
                    [
                        "t", "search_path=tollgate, pg_temp,plan_cache_mode=force_generic_plan,enable_seqscan=off", "t",
                        "f",
                    ]
                ],
                "\(signature)")
        }
        let helpers = [
            "tollgate.callers(bytea[], text[], text)", "tollgate.mark_keys_used(bytea[])",
            "tollgate.byok_decrypt_or_null(bytea, text)",
        ]
        for helper in helpers {
            let callable = try TestDatabase.scalar(
                connection,
                "SELECT has_function_privilege('tollgate_worker', to_regprocedure($1), 'EXECUTE') "
                    + "OR has_function_privilege('public', to_regprocedure($1), 'EXECUTE')", [helper])
            #expect(callable == "f", "\(helper)")
        }
    }
}
