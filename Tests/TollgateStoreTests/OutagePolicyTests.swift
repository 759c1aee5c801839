import Synchronization
import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// Admission while the database is unreachable (nothing listens on 127.0.0.1:1).
@Suite("Admission during a database outage")
struct OutagePolicyTests {
    static let unreachable = "host=127.0.0.1 port=1 connect_timeout=2"

    /// A clock the test moves by hand.
    final class ManualClock: Sendable {
        private let instant = Mutex(ContinuousClock.now)
        var now: ContinuousClock.Instant { instant.withLock { $0 } }
        func advance(_ duration: Duration) { instant.withLock { $0 += duration } }
    }

    private func metering(_ mode: OutagePolicy.Mode, allowance: Int = 1000) -> PostgresMetering {
        var settings = MeteringSettings(databaseURL: Self.unreachable, platformKey: "sk-platform")
        settings.outagePolicy = mode
        settings.outageAllowance = allowance
        return PostgresMetering(settings: settings)
    }

    /// What `tollgate.admit` answers for a caller, as the policy learns it.
    private func answer(_ outcome: String, userID: String = "42", keyID: String? = "7", byok: String? = nil) throws
        -> AdmissionAnswer
    {
        try AdmissionAnswer(
            QueryResult(
                columns: ["outcome", "user_id", "key_id", "byok_key"], rows: [[outcome, userID, keyID, byok]],
                affectedRows: 0))
    }

    /// A key the database authenticated before it went away, seen by `metering`'s policy.
    private func knownKey(_ metering: PostgresMetering, byok: String? = nil) throws -> String {
        let key = APIKey.generate()
        metering.outage.learn(try answer("admitted", byok: byok), caller: .keyHash(APIKey.hash(key)))
        return key
    }

    @Test(
        "failures that mean the database is unavailable, and those that do not",
        arguments: [
            (StoreError(.connectionFailed, "refused"), true), (StoreError(.connectionLost, "closed"), true),
            (StoreError(.timeout, "no connection"), true),
            (StoreError(.queryFailed, "terminating connection", sqlState: "57P01"), true),
            (StoreError(.queryFailed, "too many connections", sqlState: "53300"), true),
            (StoreError(.queryFailed, "deadlock detected", sqlState: "40P01"), true),
            (StoreError(.queryFailed, "read-only transaction", sqlState: "25006"), true),
            (StoreError(.queryFailed, "violates check constraint", sqlState: "23514"), false),
            (StoreError(.queryFailed, "function does not exist", sqlState: "42883"), false),
            (StoreError(.queryFailed, "no state"), false), (StoreError(.unexpectedResult, "no outcome"), false),
        ])
    func classification(error: StoreError, isOutage: Bool) {
        #expect(OutagePolicy.isOutage(error) == isOutage)
    }

    @Test("refuse (the default): even a known caller gets 503 metering_unavailable, for listings too")
    func refuse() throws {
        let metering = metering(.refuse)
        let key = try knownKey(metering)
        let request = generationRequest(key: key, reserve: 10)

        let error = try #require(metering.admit(request).error)

        #expect(MeteringSettings(databaseURL: "x", platformKey: "k").outagePolicy == .refuse)
        #expect(error.status == 503)
        #expect(error.type == "server_error")
        #expect(error.code == "metering_unavailable")
        #expect(metering.admitListing(from: request.client).error?.code == "metering_unavailable")
    }

    @Test("allow: an unknown caller gets 503; a known one is served with the platform key and no reservation")
    func allowKnownOnly() throws {
        let metering = metering(.allow)
        let key = try knownKey(metering)

        let stranger = metering.admit(generationRequest(key: APIKey.generate(), reserve: 10)).error
        let ticket = try #require(metering.admit(generationRequest(key: key, reserve: 10)).ticket)
        let listing = metering.admitListing(from: generationRequest(key: key).client).ticket

        #expect(stranger?.status == 503)
        #expect(stranger?.code == "metering_unavailable")
        #expect(ticket.upstreamKey == "sk-platform")
        #expect(ticket.keySource == .platform)
        #expect(ticket.userID == "42")
        #expect(ticket.keyID == "7")
        #expect(ticket.reservedTokens == 0)
        #expect(listing?.userID == "42")
        #expect(metering.outage.held(by: "42") == 10)
    }

    @Test("allow: reservations count against the allowance; a settlement leaves what it really used")
    func allowance() throws {
        let metering = metering(.allow, allowance: 1000)
        let key = try knownKey(metering)
        let first = generationRequest(key: key, reserve: 400)
        let firstTicket = try #require(metering.admit(first).ticket)
        #expect(metering.admit(generationRequest(key: key, reserve: 400)).ticket != nil)

        let third = metering.admit(generationRequest(key: key, reserve: 400)).error
        #expect(third?.status == 503)
        #expect(third?.code == "metering_unavailable")
        #expect(metering.outage.held(by: "42") == 800)

        // No journal here: the settlement is only logged, but the allowance is still adjusted.
        metering.settle(completedSettlement(first, firstTicket, usage: Usage(inputTokens: 60, outputTokens: 40)))
        #expect(metering.outage.held(by: "42") == 500)
        #expect(metering.admit(generationRequest(key: key, reserve: 400)).ticket != nil)
        #expect(metering.admit(generationRequest(key: key, reserve: 101)).error?.status == 503)
        #expect(metering.admit(generationRequest(key: key, reserve: 100)).ticket != nil)
        #expect(metering.outage.held(by: "42") == 1000)
    }

    @Test("allow: a request larger than the whole allowance is refused")
    func tooLarge() throws {
        let metering = metering(.allow, allowance: 100)
        let key = try knownKey(metering)
        #expect(metering.admit(generationRequest(key: key, reserve: 101)).error?.status == 503)
        #expect(metering.outage.held(by: "42") == 0)
    }

    @Test("allow: BYOK callers get 503, since their provider key is never kept")
    func byok() throws {
        let metering = metering(.allow)
        let key = try knownKey(metering, byok: "sk-their-own")
        #expect(metering.admit(generationRequest(key: key, reserve: 10)).error?.status == 503)
    }

    @Test("allow: a caller the database last refused (revoked, disabled, over quota) is forgotten")
    func forgetsRefused() throws {
        let metering = metering(.allow)
        for outcome in ["revoked_key", "disabled_user", "insufficient_quota"] {
            let key = try knownKey(metering)
            metering.outage.learn(try answer(outcome), caller: .keyHash(APIKey.hash(key)))
            #expect(metering.admit(generationRequest(key: key, reserve: 10)).error?.status == 503)
        }
    }

    @Test("allow, header mode: the user name is the identity")
    func headerMode() throws {
        var settings = MeteringSettings(databaseURL: Self.unreachable, platformKey: "sk-platform")
        settings.outagePolicy = .allow
        settings.authMode = .header
        let metering = PostgresMetering(settings: settings)
        metering.outage.learn(try answer("admitted", keyID: nil), caller: .userName("alice"))

        let alice = metering.admit(generationRequest(headers: ["x-tollgate-user": "alice"], reserve: 10)).ticket
        let bob = metering.admit(generationRequest(headers: ["x-tollgate-user": "bob"], reserve: 10)).error

        #expect(alice?.userID == "42")
        #expect(alice?.keyID == nil)
        #expect(bob?.status == 503)
    }

    @Test("an identity vouches only for its lifetime after the last successful authentication")
    func lifetime() throws {
        let clock = ManualClock()
        let cache = IdentityCache(lifetime: .seconds(600), now: { clock.now })
        let policy = OutagePolicy(mode: .allow, allowance: 1000, identities: cache)
        let caller = Caller.keyHash(APIKey.hash(APIKey.generate()))
        policy.learn(try answer("admitted"), caller: caller)

        clock.advance(.seconds(600))
        let inTime = policy.admit(
            caller, requestID: RequestID.make(), tokens: 1, platformKey: "k", failure: .init(.timeout, "t"))
        clock.advance(.seconds(1))
        let late = policy.admit(
            caller, requestID: RequestID.make(), tokens: 1, platformKey: "k", failure: .init(.timeout, "t"))

        #expect(inTime.ticket != nil)
        #expect(late.error?.status == 503)
        #expect(cache.count == 0)
    }

    @Test("the cache forgets the oldest callers past its capacity")
    func capacity() {
        let clock = ManualClock()
        let cache = IdentityCache(lifetime: .seconds(600), capacity: 10, now: { clock.now })
        for index in 0..<11 {
            cache.remember(.init(userID: String(index), keyID: nil, isBYOK: false), for: "caller \(index)")
            clock.advance(.seconds(1))
        }
        #expect(cache.count <= 10)
        #expect(cache.identity(of: "caller 0") == nil)
        #expect(cache.identity(of: "caller 10")?.userID == "10")
    }

    @Test("the next answer of the database ends the outage: allowances start again from zero")
    func outageEnds() throws {
        let policy = OutagePolicy(mode: .allow, allowance: 100, identities: IdentityCache(lifetime: .seconds(600)))
        let caller = Caller.keyHash(APIKey.hash(APIKey.generate()))
        let down = StoreError(.connectionFailed, "refused")
        policy.learn(try answer("admitted"), caller: caller)
        let held = policy.admit(caller, requestID: RequestID.make(), tokens: 100, platformKey: "k", failure: down)
        #expect(held.ticket != nil)
        #expect(
            policy.admit(caller, requestID: RequestID.make(), tokens: 1, platformKey: "k", failure: down).error != nil)

        policy.learn(try answer("admitted"), caller: caller)

        #expect(policy.held(by: "42") == 0)
        #expect(
            policy.admit(caller, requestID: RequestID.make(), tokens: 100, platformKey: "k", failure: down).ticket
                != nil)
    }
}
