import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// `PostgresMetering.admit(_ requests:)`: many admissions in one round trip (tollgate.admit_batch).
@Suite(
    "Admission in batches in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct BatchAdmissionTests {
    static let secret = "batch-test-secret"

    @Test("one batch mixing users, refusals, BYOK, no quota and a quota that fits a prefix: each answer right")
    func mixedBatch() throws {
        let connection = try TestDatabase.migrated()
        let admin = AdminStore(connection: connection)
        let (limited, limitedKey) = try TestDatabase.userWithKey(connection, quota: 1000)
        let (unlimited, unlimitedKey) = try TestDatabase.userWithKey(connection)
        let (own, ownKey) = try TestDatabase.userWithKey(connection, quota: 100)
        let byok = "sk-own-" + APIKey.generate().dropFirst(3)
        _ = try admin.setBYOKKey(for: own, key: byok, secret: Self.secret)
        let (revokedUser, _) = try TestDatabase.userWithKey(connection)
        let revoked = try admin.issueKey(for: revokedUser)
        #expect(try admin.revokeKey(id: revoked.id))
        let (disabled, disabledKey) = try TestDatabase.userWithKey(connection)
        #expect(try admin.disableUser(disabled))
        let metering = try TestDatabase.metering(secret: Self.secret)

        let requests = [
            generationRequest(key: limitedKey, reserve: 400), generationRequest(key: unlimitedKey, reserve: 5000),
            generationRequest(key: APIKey.generate()), generationRequest(key: limitedKey, reserve: 400),
            generationRequest(key: ownKey, reserve: 50_000), generationRequest(key: revoked.key),
            generationRequest(key: limitedKey, reserve: 300), generationRequest(key: disabledKey),
            generationRequest(key: limitedKey, reserve: 100),
            generationRequest(headers: ["authorization": "Bearer sk-not-a-tollgate-key"]),
        ]
        let answers = metering.admit(requests)

        #expect(answers.count == requests.count)
        #expect(answers.map { $0.ticket?.reservedTokens } == [400, 0, nil, 400, 0, nil, nil, nil, 100, nil])
        #expect(answers[1].ticket?.upstreamKey == "sk-platform-test")
        #expect(answers[4].ticket?.upstreamKey == byok)
        #expect(answers[4].ticket?.keySource == .byok)
        #expect(answers[2].error == .incorrectAPIKey())
        #expect(answers[5].error == .revokedAPIKey())
        #expect(answers[7].error == .disabledUser())
        #expect(answers[9].error == .incorrectAPIKey())
        let refused = try #require(answers[6].error)
        #expect(refused.code == "insufficient_quota")
        #expect(refused.headers.contains { $0 == ("x-tollgate-quota-remaining", "200") })
        #expect(Set([0, 3, 8].map { answers[$0].ticket?.userID }).count == 1)

        #expect(try TestDatabase.counters(connection, user: limited) == (used: 0, reserved: 900))
        #expect(try TestDatabase.counters(connection, user: own) == (used: 0, reserved: 0))
        #expect(
            try TestDatabase.reservations(connection, user: limited).map { $0.prefix(4) } == ["100/", "400/", "400/"])
        #expect(try TestDatabase.reservations(connection, user: unlimited) == ["0/-"])
        #expect(try TestDatabase.reservations(connection, user: own).isEmpty)
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT count(*) FROM tollgate.workers WHERE worker_id = $1", [metering.settings.workerID])
                == "1")
    }

    @Test("requests of one user are decided in batch order, as if admitted one by one")
    func batchOrder() throws {
        let connection = try TestDatabase.migrated()
        let (batched, batchedKey) = try TestDatabase.userWithKey(connection, quota: 1000)
        let (single, singleKey) = try TestDatabase.userWithKey(connection, quota: 1000)
        let metering = try TestDatabase.metering()
        let sizes = [400, 400, 300, 100, 200]

        let together = metering.admit(sizes.map { generationRequest(key: batchedKey, reserve: $0) })
        let oneByOne = sizes.map { metering.admit(generationRequest(key: singleKey, reserve: $0)) }

        // The 300 does not fit after 800; the 100 after it still does; the 200 then does not.
        #expect(together.map { $0.ticket != nil } == [true, true, false, true, false])
        #expect(oneByOne.map { $0.ticket != nil } == together.map { $0.ticket != nil })
        #expect(
            together.map { $0.error?.headers.first { $0.0 == "x-tollgate-quota-remaining" }?.1 } == [
                nil, nil, "200", nil, "100",
            ])
        #expect(try TestDatabase.counters(connection, user: batched) == (used: 0, reserved: 900))
        #expect(try TestDatabase.counters(connection, user: single) == (used: 0, reserved: 900))
    }

    @Test("a wrong secret refuses only the BYOK caller of a batch; header mode names users in a batch")
    func partialRefusals() throws {
        let connection = try TestDatabase.migrated()
        let (own, ownKey) = try TestDatabase.userWithKey(connection)
        _ = try AdminStore(connection: connection).setBYOKKey(for: own, key: "sk-own-x", secret: Self.secret)
        let (_, platformKey) = try TestDatabase.userWithKey(connection, quota: 500)

        let wrong = try TestDatabase.metering(secret: "not-the-secret")
            .admit([generationRequest(key: ownKey), generationRequest(key: platformKey, reserve: 50)])
        #expect(wrong.map { $0.error?.code } == ["byok_unavailable", nil])

        let (named, _) = try TestDatabase.userWithKey(connection, quota: 500)
        let headers = try TestDatabase.metering(authMode: .header).admit([
            generationRequest(headers: ["x-tollgate-user": named], reserve: 100),
            generationRequest(headers: ["x-tollgate-user": TestDatabase.uniqueName("nobody")]),
            generationRequest(headers: [:]), generationRequest(headers: ["x-tollgate-user": named], reserve: 450),
        ])
        #expect(headers.map { $0.ticket != nil } == [true, false, false, false])
        #expect(headers[1].error == .unknownUser())
        #expect(headers[2].error == .missingIdentity())
        #expect(headers[3].error?.code == "insufficient_quota")
        #expect(try TestDatabase.counters(connection, user: named) == (used: 0, reserved: 100))
    }

    @Test("a batch marks a key used at most once a minute")
    func lastUsed() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection)
        let metering = try TestDatabase.metering()
        let lastUsed = """
            SELECT k.last_used_at > now() - interval '10 seconds' FROM tollgate.api_keys k
            JOIN tollgate.users u ON u.id = k.user_id WHERE u.name = $1
            """
        let setLastUsed = """
            UPDATE tollgate.api_keys k SET last_used_at = now() - $2::interval FROM tollgate.users u
            WHERE u.id = k.user_id AND u.name = $1
            """

        _ = try connection.execute(setLastUsed, parameters: [user, "2 minutes"])
        #expect(metering.admit((0..<3).map { _ in generationRequest(key: key) }).allSatisfy { $0.ticket != nil })
        #expect(try TestDatabase.scalar(connection, lastUsed, [user]) == "t")

        _ = try connection.execute(setLastUsed, parameters: [user, "30 seconds"])
        #expect(metering.admit((0..<3).map { _ in generationRequest(key: key) }).allSatisfy { $0.ticket != nil })
        #expect(try TestDatabase.scalar(connection, lastUsed, [user]) == "f")
    }

    @Test("a request the database refuses fails alone; the rest of its batch is admitted")
    func refusedAlone() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let metering = try TestDatabase.metering()
        let first = generationRequest(key: key, reserve: 100)
        #expect(metering.admit(first).ticket != nil)

        // The same request id again: its reservation row exists, so the batch's INSERT is refused.
        let answers = metering.admit([generationRequest(key: key, reserve: 200), first])

        #expect(answers[0].ticket?.reservedTokens == 200)
        #expect(answers[1].error == .meteringUnavailable())
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 300))
    }

    @Test("with the database down, unidentified callers get their 401 and every other goes through the outage policy")
    func outage() throws {
        let connection = try TestDatabase.migrated()
        let (_, known) = try TestDatabase.userWithKey(connection, quota: 10_000)
        let before = try #require(try TestDatabase.metering().admit(generationRequest(key: known)).ticket)
        var settings = MeteringSettings(databaseURL: OfflineStoreTests.unreachable, platformKey: "sk-platform-test")
        settings.outagePolicy = .allow
        settings.outageAllowance = 1000
        let down = PostgresMetering(settings: settings)
        let answer = try AdmissionAnswer(
            QueryResult(
                columns: ["outcome", "user_id", "key_id"], rows: [["admitted", before.userID, before.keyID]],
                affectedRows: 0))
        down.outage.learn(answer, caller: .keyHash(APIKey.hash(known)))

        let answers = down.admit([
            generationRequest(key: known, reserve: 600), generationRequest(key: APIKey.generate()),
            generationRequest(headers: [:]), generationRequest(key: known, reserve: 600),
        ])

        #expect(answers[0].ticket?.userID == before.userID)
        #expect(answers[1].error == .meteringUnavailable())
        #expect(answers[2].error == .missingAPIKey())
        // The allowance of 1000 holds the first 600; the second would pass it.
        #expect(answers[3].error == .meteringUnavailable())
        #expect(down.outage.held(by: try #require(before.userID)) == 600)
    }

    @Test("an admission commits without waiting for the disk; a settlement waits for it")
    func commitDurability() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1000)
        let hash = APIKey.byteaLiteral(APIKey.hash(key))
        let found = try TestDatabase.scalar(connection, "SELECT id FROM tollgate.users WHERE name = $1", [user])
        let userID = try #require(found)
        let admit = """
            SELECT count(*) FROM tollgate.admit_batch(ARRAY[gen_random_uuid()], ARRAY['\(hash)'::bytea],
                ARRAY[NULL::text], ARRAY[10::bigint], ARRAY[5::bigint], ARRAY['chat.completions'], ARRAY['m'],
                ARRAY[false], 'durability-test', NULL)
            """
        let settle = """
            SELECT count(*) FILTER (WHERE recorded) FROM tollgate.settle_batch(ARRAY[gen_random_uuid()],
                ARRAY[\(userID)::bigint], ARRAY[NULL::bigint], ARRAY['chat.completions'], ARRAY['m'], ARRAY[false],
                ARRAY['platform'], ARRAY['completed'], ARRAY[200], ARRAY[1::bigint], ARRAY[0::bigint],
                ARRAY[1::bigint], ARRAY[0::bigint], ARRAY[2::bigint], ARRAY['reported'], ARRAY[now()],
                ARRAY[NULL::float8], ARRAY[1::float8])
            """
        for (call, expected) in [(admit, "off"), (settle, "on")] {
            let (done, setting) = try connection.transaction { () throws(StoreError) -> (String?, String?) in
                _ = try connection.execute("SET LOCAL synchronous_commit = on")
                let done = try connection.execute(call).scalar
                return (done, try connection.execute("SELECT current_setting('synchronous_commit')").scalar)
            }
            #expect(done == "1", "the call did its work")
            #expect(setting == expected)
        }
    }
}
