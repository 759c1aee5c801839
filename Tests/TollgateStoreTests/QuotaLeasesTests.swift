import Synchronization
import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// A clock a test moves by hand.
final class ManualClock: Sendable {
    private let instant = Mutex(ContinuousClock.now)

    var now: ContinuousClock.Instant { instant.withLock { $0 } }

    func advance(by duration: Duration) {
        instant.withLock { $0 += duration }
    }
}

/// The worker's book of quota leases, without a database: when it asks for a lease, what it
/// admits from one, and when a lease may go back.
@Suite("Quota leases held by a worker")
struct QuotaLeasesTests {
    let clock = ManualClock()
    let alice = Caller.userName("alice")

    func book(lifetime: Duration = .seconds(2)) -> QuotaLeases {
        QuotaLeases(lifetime: lifetime, requestsPerLease: 64) { [clock] in clock.now }
    }

    func request(_ id: String, tokens: Int = 10) -> AdmissionRequest {
        AdmissionRequest(
            requestID: id, api: .chatCompletions, model: "m", stream: false, reservedTokens: tokens,
            estimatedInputTokens: 4, client: ProxyRequest(id: id, method: "POST", path: "/v1/chat/completions"))
    }

    func holding(lease: String? = "L1", remaining: Int? = 25, byok: String? = nil) -> QuotaLeases.Holding {
        QuotaLeases.Holding(
            userID: "7", keyID: "3", byokKey: byok, leaseID: lease, remaining: remaining,
            expiresAt: clock.now + .seconds(2))
    }

    @Test("a lease is asked for 64 requests' worth, at most half of what is left, and not when that is too little")
    func sizeOfWhatIsAsked() {
        let leases = book()
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 10)
        #expect(leases.chores().takes.map(\.wanted) == [640])
        leases.taken(alice, nil)
        clock.advance(by: .seconds(1))

        leases.learn(alice, admitted: true, remaining: 600, requested: 10)
        #expect(leases.chores().takes.map(\.wanted) == [300])
        leases.taken(alice, nil)
        clock.advance(by: .seconds(1))

        leases.learn(alice, admitted: true, remaining: 30, requested: 10)
        #expect(leases.chores().takes.isEmpty)

        leases.learn(alice, admitted: true, remaining: nil, requested: 10)
        #expect(leases.chores().takes.map(\.wanted) == [0], "a caller without a limit gets a lease of who they are")
    }

    @Test("after a take that brought no lease, none is asked for during a quarter of the lifetime")
    func backsOffAfterADecline() {
        let leases = book()
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 10)
        #expect(leases.chores().takes.count == 1)
        leases.taken(alice, nil)
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 10)
        #expect(leases.chores().takes.isEmpty)
        clock.advance(by: .milliseconds(600))
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 10)
        #expect(leases.chores().takes.count == 1, "half a second is a quarter of two")
    }

    @Test("a lease too small for a request is followed by one for 64 such requests, or twice the one used up")
    func outgrownLease() throws {
        let leases = book()
        leases.taken(alice, holding(remaining: 5_000))
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 6_000)
        #expect(leases.chores().takes.map(\.wanted) == [384_000], "64 requests of 6,000; at most half of what is left")
        leases.taken(alice, holding(lease: "L2", remaining: 400_000))
        leases.learn(alice, admitted: true, remaining: 100_000_000, requested: 500_000)
        #expect(leases.chores().takes.map(\.wanted) == [32_000_000])

        // A busy caller's lease used up before its renewal was taken: the next is not smaller.
        leases.taken(alice, holding(lease: "L3", remaining: 1_000_000))
        #expect(leases.admit(request("big", tokens: 999_995), caller: alice, platformKey: "sk-p") != nil)
        leases.learn(alice, admitted: true, remaining: 100_000_000, requested: 10)
        #expect(leases.chores().takes.map(\.wanted) == [2_000_000])
    }

    @Test("the lease thread pauses as long as asked between turns")
    func pauseBetweenTurns() {
        #expect(PostgresMetering.wholeMilliseconds(.milliseconds(20)) == 20)
        #expect(PostgresMetering.wholeMilliseconds(.seconds(2)) == 2_000)
        #expect(PostgresMetering.wholeMilliseconds(.microseconds(10)) == 1)
    }

    @Test("no second take is asked for while one is under way")
    func oneTakeAtATime() {
        let leases = book()
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 10)
        #expect(leases.chores().takes.count == 1)
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 10)
        #expect(leases.chores().takes.isEmpty)
        leases.taken(alice, holding())
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 10)
        #expect(leases.chores().takes.isEmpty, "the lease still serves such a request")
    }

    @Test("requests are admitted from a lease while they fit in it, each holding its reservation")
    func admitsWhatFits() throws {
        let leases = book()
        #expect(leases.admit(request("r0"), caller: alice, platformKey: "sk-p") == nil)
        leases.taken(alice, holding(remaining: 25))

        let (ticket, leased) = try #require(leases.admit(request("r1"), caller: alice, platformKey: "sk-p"))
        #expect(ticket.upstreamKey == "sk-p" && ticket.keySource == .platform)
        #expect(ticket.userID == "7" && ticket.keyID == "3" && ticket.reservedTokens == 10)
        let record = try #require(leased)
        #expect(record.requestID == "r1" && record.leaseID == "L1" && record.heldTokens == 10)
        #expect(record.estimatedInputTokens == 4 && record.userID == "7")

        #expect(leases.admit(request("r2"), caller: alice, platformKey: "sk-p") != nil)
        #expect(leases.admit(request("r3"), caller: alice, platformKey: "sk-p") == nil, "5 tokens left")
        #expect(leases.admit(request("r4", tokens: 5), caller: alice, platformKey: "sk-p") != nil)
        #expect(leases.holding(of: alice)?.remaining == 0)
        #expect(leases.admit(request("r5", tokens: 10), caller: .userName("bob"), platformKey: "sk-p") == nil)
    }

    @Test("a lease in use is renewed before it runs out: twice as large when half is left, as large near its end")
    func renewsInTheBackground() throws {
        let leases = book()
        leases.taken(alice, holding(remaining: 100))
        for id in ["r1", "r2", "r3", "r4", "r5"] {
            #expect(leases.admit(request(id), caller: alice, platformKey: "sk-p") != nil)
        }
        #expect(leases.chores().takes.isEmpty, "50 of 100 left")
        #expect(leases.admit(request("r6"), caller: alice, platformKey: "sk-p") != nil)
        #expect(leases.chores().takes.map(\.wanted) == [200], "40 of 100 left")
        leases.taken(alice, holding(lease: "L2", remaining: 200))

        clock.advance(by: .milliseconds(1_600))
        #expect(leases.admit(request("r9"), caller: alice, platformKey: "sk-p") != nil)
        #expect(leases.chores().takes.map(\.wanted) == [200], "0.4 of 2 seconds left")

        let bob = Caller.userName("bob")
        leases.taken(bob, holding(lease: nil, remaining: nil))
        #expect(leases.admit(request("r10"), caller: bob, platformKey: "sk-p") != nil)
        #expect(leases.chores().takes.isEmpty, "2 of 2 seconds left")
        clock.advance(by: .milliseconds(1_600))
        #expect(leases.admit(request("r11"), caller: bob, platformKey: "sk-p") != nil)
        #expect(leases.chores().takes.map(\.wanted) == [0])
    }

    @Test("an expired lease admits nothing and goes back once every request it admitted is recorded or forgotten")
    func returnsAfterItsRecords() throws {
        let leases = book()
        leases.taken(alice, holding(remaining: 100))
        let first = try #require(leases.admit(request("r1"), caller: alice, platformKey: "sk-p")?.1)
        let second = try #require(leases.admit(request("r2"), caller: alice, platformKey: "sk-p")?.1)

        clock.advance(by: .seconds(3))
        #expect(leases.admit(request("r3"), caller: alice, platformKey: "sk-p") == nil)
        #expect(leases.chores().returns.isEmpty, "two requests are not recorded yet")
        leases.recorded([first])
        #expect(leases.chores().returns.isEmpty)
        leases.recorded([second])
        #expect(leases.chores().returns == ["L1"])
        #expect(leases.chores().returns.isEmpty, "returned once")
    }

    @Test("a refusal from the database drops the caller's lease at once")
    func refusalDropsTheLease() {
        let leases = book()
        leases.taken(alice, holding(remaining: 100))
        leases.learn(alice, admitted: false, remaining: nil, requested: 10)
        #expect(leases.admit(request("r1"), caller: alice, platformKey: "sk-p") == nil)
        #expect(leases.chores().returns == ["L1"])
    }

    @Test("a new lease replaces the old one, which goes back; a failed return is tried again")
    func replacedLeaseGoesBack() {
        let leases = book()
        leases.taken(alice, holding(lease: "L1", remaining: 5))
        leases.learn(alice, admitted: true, remaining: 1_000_000, requested: 10)
        #expect(leases.chores().takes.count == 1)
        leases.taken(alice, holding(lease: "L2", remaining: 640))
        #expect(leases.holding(of: alice)?.leaseID == "L2")
        let returns = leases.chores().returns
        #expect(returns == ["L1"])
        leases.returnFailed(returns)
        #expect(leases.chores().returns == ["L1"])
    }

    @Test("BYOK callers are admitted with their key and nothing to record; callers without a quota hold nothing")
    func byokAndUnlimited() throws {
        let leases = book()
        leases.taken(alice, holding(lease: nil, remaining: nil, byok: "sk-own"))
        let (byok, byokRecord) = try #require(leases.admit(request("r1"), caller: alice, platformKey: "sk-p"))
        #expect(byok.upstreamKey == "sk-own" && byok.keySource == .byok && byok.reservedTokens == 0)
        #expect(byokRecord == nil)

        let bob = Caller.userName("bob")
        leases.taken(bob, holding(lease: nil, remaining: nil))
        let (platform, record) = try #require(
            leases.admit(request("r2", tokens: 1 << 40), caller: bob, platformKey: "sk-p"))
        #expect(platform.keySource == .platform && platform.reservedTokens == 0)
        #expect(record?.leaseID == nil && record?.heldTokens == 0)

        clock.advance(by: .seconds(3))
        #expect(leases.chores().returns.isEmpty, "nothing to give back")
        #expect(leases.admit(request("r3"), caller: bob, platformKey: "sk-p") == nil)
    }
}
