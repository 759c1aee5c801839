import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite(
    "Admin operations in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct AdminStoreTests {
    @Test("a user name is unique")
    func duplicateUser() throws {
        let store = AdminStore(connection: try TestDatabase.migrated())
        let name = TestDatabase.uniqueName("user")
        _ = try store.addUser(name)
        #expect {
            _ = try store.addUser(name, quota: (100, .day))
        } throws: { error in
            (error as? StoreError)?.code == .conflict
        }
    }

    @Test("operations on a user or key that does not exist say so")
    func notFound() throws {
        let store = AdminStore(connection: try TestDatabase.migrated())
        let ghost = TestDatabase.uniqueName("ghost")
        let calls: [(AdminStore) throws -> Void] = [
            { _ = try $0.setQuota(ghost, tokens: 5, period: .day) }, { _ = try $0.disableUser(ghost) },
            { _ = try $0.issueKey(for: ghost) }, { _ = try $0.revokeKey(id: Int(Int32.max)) },
            { _ = try $0.setBYOKKey(for: ghost, key: "sk-x", secret: "s") }, { _ = try $0.clearBYOKKey(for: ghost) },
            { _ = try $0.removeQuota(ghost) }, { _ = try $0.usage(user: ghost) },
        ]
        for call in calls {
            #expect {
                try call(store)
            } throws: { error in
                (error as? StoreError)?.code == .notFound
            }
        }
    }

    @Test("a quota keeps its period unless told, and can be removed")
    func quotaChanges() throws {
        let connection = try TestDatabase.migrated()
        let store = AdminStore(connection: connection)
        let name = TestDatabase.uniqueName("user")
        _ = try store.addUser(name, quota: (100, .total))

        try store.setQuota(name, tokens: 250, period: nil)
        #expect(
            try connection.execute(
                "SELECT quota, period FROM tollgate.quota_standing WHERE user_name = $1", parameters: [name]
            )
            .rows == [["250", "total"]])
        try store.setQuota(name, tokens: 300, period: .month)
        #expect(
            try TestDatabase.scalar(
                connection, "SELECT period FROM tollgate.quota_standing WHERE user_name = $1", [name])
                == "month")

        #expect(try store.removeQuota(name))
        #expect(try store.removeQuota(name) == false)
        #expect(
            try connection.execute("SELECT 1 FROM tollgate.quota_standing WHERE user_name = $1", parameters: [name])
                .rows.isEmpty)
    }

    @Test("a quota set mid-period starts from what the ledger already holds")
    func quotaSeededFromLedger() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection)
        let metering = try TestDatabase.metering()
        let request = generationRequest(key: key)
        let ticket = try #require(metering.admit(request).ticket)
        metering.settle(completedSettlement(request, ticket, usage: Usage(inputTokens: 60, outputTokens: 40)))

        try AdminStore(connection: connection).setQuota(user, tokens: 150, period: .day)

        #expect(try TestDatabase.counters(connection, user: user) == (used: 100, reserved: 0))
        #expect(metering.admit(generationRequest(key: key, reserve: 60)).error?.status == 429)
        #expect(metering.admit(generationRequest(key: key, reserve: 50)).ticket != nil)
    }

    @Test("usage totals group by user and model, and --since skips earlier days")
    func usageTotals() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection)
        let metering = try TestDatabase.metering()
        for (model, tokens) in [("m-1", 10), ("m-2", 20), ("m-1", 30)] {
            let request = generationRequest(key: key, model: model)
            let ticket = try #require(metering.admit(request).ticket)
            metering.settle(
                completedSettlement(
                    request, ticket, usage: Usage(inputTokens: tokens, cachedInputTokens: 1, outputTokens: 2)))
        }
        let store = AdminStore(connection: connection)

        let totals = try store.usage(user: user)
        #expect(totals.map(\.model) == ["m-1", "m-2"])
        #expect(totals.map(\.requests) == [2, 1])
        #expect(totals.map(\.inputTokens) == [40, 20])
        #expect(totals.map(\.cachedInputTokens) == [2, 1])
        #expect(totals.map(\.totalTokens) == [44, 22])
        #expect(try store.usage(user: user, since: "2000-01-01").count == 2)
        #expect(try store.usage(user: user, since: "2999-01-01").isEmpty)
        #expect(try store.usage(since: "2000-01-01").contains { $0.user == user })
    }
}
