import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite(
    "Refused callers in PostgreSQL", .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason),
    .timeLimit(.minutes(1)))
struct RejectionTests {
    @Test("a well-formed key that was never issued is a 401 that does not quote it")
    func unknownKey() throws {
        _ = try TestDatabase.migrated()
        let key = APIKey.generate()
        let error = try #require(try TestDatabase.metering().admit(generationRequest(key: key)).error)
        #expect(error.status == 401)
        #expect(error.code == "invalid_api_key")
        #expect(!String(decoding: error.body(), as: UTF8.self).contains(key))
    }

    @Test("a revoked key is refused, for generation and for listing")
    func revokedKey() throws {
        let connection = try TestDatabase.migrated()
        let store = AdminStore(connection: connection)
        let user = TestDatabase.uniqueName("user")
        _ = try store.addUser(user)
        let issued = try store.issueKey(for: user)
        let metering = try TestDatabase.metering()
        #expect(metering.admit(generationRequest(key: issued.key)).ticket != nil)

        #expect(try store.revokeKey(id: issued.id))
        #expect(try store.revokeKey(id: issued.id) == false)

        let error = try #require(metering.admit(generationRequest(key: issued.key)).error)
        #expect(error.status == 401)
        #expect(error.code == "invalid_api_key")
        #expect(error.message.contains("revoked"))
        #expect(metering.admitListing(from: generationRequest(key: issued.key).client).error?.status == 401)
    }

    @Test("a disabled user is refused whatever key they use, and reserves nothing")
    func disabledUser() throws {
        let connection = try TestDatabase.migrated()
        let (user, key) = try TestDatabase.userWithKey(connection, quota: 1000)
        let second = try AdminStore(connection: connection).issueKey(for: user).key
        #expect(try AdminStore(connection: connection).disableUser(user))
        #expect(try AdminStore(connection: connection).disableUser(user) == false)
        let metering = try TestDatabase.metering()

        for candidate in [key, second] {
            let error = try #require(metering.admit(generationRequest(key: candidate)).error)
            #expect(error.status == 401)
            #expect(error.message.contains("disabled"))
        }
        #expect(try TestDatabase.counters(connection, user: user) == (used: 0, reserved: 0))
        let named = try TestDatabase.metering(authMode: .header)
        #expect(named.admit(generationRequest(headers: ["x-tollgate-user": user])).error?.status == 401)
    }
}
