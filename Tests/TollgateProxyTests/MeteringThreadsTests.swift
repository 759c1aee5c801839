import Dispatch
import Synchronization
import Testing
import TollgateCore
import TollgateLoop

@testable import TollgateProxy

/// A store that records each batch and can hold a call until the test releases it.
final class GatedStore: BatchMetering {
    let admitGate = DispatchSemaphore(value: 0)
    let settleGate = DispatchSemaphore(value: 0)
    /// Signalled when a call has started (and, if gated, waits for its release).
    let entered = DispatchSemaphore(value: 0)
    let gatesAdmissions: Bool
    let gatesSettlements: Bool
    private let recorded = Mutex<(admissions: [Int], settlements: [Int])>(([], []))

    init(gatesAdmissions: Bool = false, gatesSettlements: Bool = false) {
        self.gatesAdmissions = gatesAdmissions
        self.gatesSettlements = gatesSettlements
    }

    var admissionBatches: [Int] { recorded.withLock { $0.admissions } }
    var settlementBatches: [Int] { recorded.withLock { $0.settlements } }

    func admit(_ requests: [AdmissionRequest]) -> [Admission] {
        recorded.withLock { $0.admissions.append(requests.count) }
        entered.signal()
        if gatesAdmissions { admitGate.wait() }
        return requests.map { .admitted(AdmissionTicket(upstreamKey: "k-\($0.requestID)", keySource: .platform)) }
    }

    func admitListing(from client: ProxyRequest) -> Admission {
        .admitted(AdmissionTicket(upstreamKey: "k", keySource: .platform))
    }

    func settle(_ settlements: [Settlement]) {
        recorded.withLock { $0.settlements.append(settlements.count) }
        entered.signal()
        if gatesSettlements { settleGate.wait() }
    }
}

/// Runs work at once on the calling (metering) thread and counts the hand-overs.
final class CountingExecutor: LoopExecutor, Sendable {
    private let handovers = Mutex(0)

    var count: Int { handovers.withLock { $0 } }

    func execute(_ work: @escaping @Sendable () -> Void) {
        handovers.withLock { $0 += 1 }
        work()
    }
}

@Suite("Metering threads", .timeLimit(.minutes(1)))
struct MeteringThreadsTests {
    static func admission(_ id: String) -> AdmissionRequest {
        AdmissionRequest(
            requestID: id, api: .chatCompletions, model: "m", stream: false, reservedTokens: 10,
            estimatedInputTokens: 5, client: ProxyRequest(id: id, method: "POST", path: "/v1/chat/completions"))
    }

    static let settlement = Settlement(
        requestID: "s", ticket: AdmissionTicket(upstreamKey: "k", keySource: .platform, userID: "1"),
        api: .chatCompletions, model: "m", stream: false, outcome: .completed, status: 200,
        usage: Usage(inputTokens: 1, outputTokens: 1), usageIsEstimated: false, startedAtMicroseconds: 0,
        timeToFirstByte: nil, duration: .zero)

    @Test("admissions that wait while the store is busy go to it as one batch, answered through their loop")
    func batchesWhatWaits() throws {
        let store = GatedStore(gatesAdmissions: true)
        let metering = try MeteringThreads(store: store, threads: 1)
        let executor = CountingExecutor()
        let answered = DispatchSemaphore(value: 0)
        let keys = Mutex<[String: String]>([:])
        let reply: (String) -> (Admission) -> Void = { id in
            { admission in
                if case .admitted(let ticket) = admission { keys.withLock { $0[id] = ticket.upstreamKey } }
                answered.signal()
            }
        }

        metering.admit(Self.admission("first"), replyingOn: executor, reply("first"))
        store.entered.wait()  // the only thread is now inside the store with the first request
        for index in 1...5 { metering.admit(Self.admission("r\(index)"), replyingOn: executor, reply("r\(index)")) }
        store.admitGate.signal()
        answered.wait()
        store.entered.wait()
        store.admitGate.signal()
        for _ in 1...5 { answered.wait() }

        #expect(store.admissionBatches == [1, 5])
        #expect(executor.count == 2, "one hand-over per loop and batch")
        #expect(keys.withLock { $0 }["r3"] == "k-r3", "each answer reaches the request that asked")
        #expect(keys.withLock { $0.count } == 6)
    }

    @Test("settlements wait for company, but not when someone waits for all of them")
    func settlementsLinger() throws {
        var pacing = MeteringQueue.Pacing()
        pacing.settlementLinger = .seconds(3600)
        let store = GatedStore()
        let metering = try MeteringThreads(store: store, threads: 1, pacing: pacing)
        let answered = DispatchSemaphore(value: 0)

        metering.settle(Self.settlement)
        // The only thread takes the admission pushed after the settlement, and is then free.
        metering.admit(Self.admission("probe"), replyingOn: CountingExecutor()) { _ in answered.signal() }
        answered.wait()
        #expect(store.settlementBatches.isEmpty, "a lone settlement waits for others")
        #expect(metering.waitUntilSettled(timeout: .seconds(30)) == 0)
        #expect(store.settlementBatches == [1])
    }

    @Test("enough settlements start their batch without waiting out the linger")
    func settlementsInCompanyGoAtOnce() throws {
        var pacing = MeteringQueue.Pacing()
        pacing.settlementLinger = .seconds(3600)
        pacing.settlementCompany = 3
        let store = GatedStore()
        let metering = try MeteringThreads(store: store, threads: 1, pacing: pacing)

        for _ in 1...3 { metering.settle(Self.settlement) }
        // Without the threshold the batch would wait out the hour-long linger.
        #expect(store.entered.wait(timeout: .now() + 30) == .success, "the batch started")
        #expect(store.settlementBatches == [3], "the third settlement starts the batch of all three")
        #expect(metering.waitUntilSettled(timeout: .seconds(30)) == 0)
        #expect(store.settlementBatches == [3])
    }

    @Test("waitUntilSettled returns once every settlement is recorded, and counts those still waiting")
    func waitsForSettlements() throws {
        let store = GatedStore(gatesSettlements: true)
        let metering = try MeteringThreads(store: store, threads: 2)

        metering.settle(Self.settlement)
        store.entered.wait()
        #expect(metering.waitUntilSettled(timeout: .milliseconds(20)) == 1)
        store.settleGate.signal()

        #expect(metering.waitUntilSettled(timeout: .seconds(30)) == 0)
        #expect(store.settlementBatches == [1])
    }
}
