import Dispatch
import Synchronization
import Testing
import TollgateCore
import TollgateLoop

@testable import TollgateProxy

/// A store that admits requests whose id starts with "lease" from a lease of its own, and
/// remembers what it was asked to record and to forget.
final class LeasingStore: BatchMetering {
    private let calls = Mutex<(admitted: [String], recorded: [String], forgotten: [String])>(([], [], []))
    /// Signalled after each batch of records and of settlements.
    let recordedBatch = DispatchSemaphore(value: 0)
    let settledBatch = DispatchSemaphore(value: 0)

    var admitted: [String] { calls.withLock { $0.admitted } }
    var recorded: [String] { calls.withLock { $0.recorded } }
    var forgotten: [String] { calls.withLock { $0.forgotten } }

    func admit(_ requests: [AdmissionRequest]) -> [Admission] {
        calls.withLock { $0.admitted += requests.map(\.requestID) }
        return requests.map { _ in .admitted(AdmissionTicket(upstreamKey: "k", keySource: .platform, userID: "1")) }
    }

    func admitListing(from client: ProxyRequest) -> Admission {
        .admitted(AdmissionTicket(upstreamKey: "k", keySource: .platform))
    }

    func settle(_ settlements: [Settlement]) {
        settledBatch.signal()
    }

    func admitFromLease(_ request: AdmissionRequest) -> (AdmissionTicket, LeasedAdmission?)? {
        guard request.requestID.hasPrefix("lease") else { return nil }
        let ticket = AdmissionTicket(upstreamKey: "k-leased", keySource: .platform, userID: "1", reservedTokens: 10)
        return (ticket, LeasedAdmission(request: request, leaseID: "L", userID: "1", keyID: nil, heldTokens: 10))
    }

    func record(_ admissions: [LeasedAdmission]) {
        calls.withLock { $0.recorded += admissions.map(\.requestID) }
        recordedBatch.signal()
    }

    func forget(_ admission: LeasedAdmission) {
        calls.withLock { $0.forgotten.append(admission.requestID) }
    }
}

@Suite("Admissions from quota leases", .timeLimit(.minutes(1)))
struct LeasedAdmissionTests {
    static func request(_ id: String) -> AdmissionRequest {
        AdmissionRequest(
            requestID: id, api: .chatCompletions, model: "m", stream: true, reservedTokens: 10,
            estimatedInputTokens: 5, client: ProxyRequest(id: id, method: "POST", path: "/v1/chat/completions"))
    }

    static func record(_ id: String) -> LeasedAdmission {
        LeasedAdmission(request: request(id), leaseID: "L", userID: "1", keyID: "2", heldTokens: 10)
    }

    static func settlement(_ id: String) -> Settlement {
        Settlement(
            requestID: id, ticket: AdmissionTicket(upstreamKey: "k", keySource: .platform, userID: "1"),
            api: .chatCompletions, model: "m", stream: true, outcome: .completed, status: 200,
            usage: Usage(inputTokens: 1, outputTokens: 1), usageIsEstimated: false, startedAtMicroseconds: 0,
            timeToFirstByte: nil, duration: .zero)
    }

    static func ids(_ work: MeteringQueue.Work?) -> String {
        switch work {
        case .records(let records)?: "records " + records.map(\.requestID).joined(separator: ",")
        case .settlements(let settlements)?: "settlements " + settlements.map(\.requestID).joined(separator: ",")
        case .admissions(let pending)?: "admissions " + pending.map(\.request.requestID).joined(separator: ",")
        case .listing?: "listing"
        case nil: "nothing"
        }
    }

    @Test("records wait for their linger, then go as one batch")
    func recordsLinger() {
        let lingering = MeteringQueue(pacing: .init(recordLinger: .seconds(60)))
        lingering.push(.record(Self.record("r1")))
        #expect(Self.ids(lingering.poll()?.work) == "nothing")

        let queue = MeteringQueue(pacing: .init(recordLinger: .zero))
        queue.push(.record(Self.record("r1")))
        queue.push(.record(Self.record("r2")))
        #expect(Self.ids(queue.poll()?.work) == "records r1,r2")
    }

    @Test("a record still waiting when its request settles leaves the queue unsent and is handed back")
    func settledFirst() {
        let queue = MeteringQueue(pacing: .init(settlementLinger: .zero, recordLinger: .seconds(60)))
        queue.push(.record(Self.record("r1")))
        queue.push(.record(Self.record("r2")))
        #expect(queue.push(.settlement(Self.settlement("r1")))?.requestID == "r1")
        #expect(queue.push(.settlement(Self.settlement("r3"))) == nil)
        #expect(Self.ids(queue.poll()?.work) == "settlements r1,r3")
        #expect(Self.ids(queue.poll()?.work) == "nothing", "r2 still lingers")
    }

    @Test("a settlement whose record is in a batch under way waits for that batch to end")
    func settlementWaitsForItsRecord() throws {
        let queue = MeteringQueue(pacing: .init(settlementLinger: .zero, recordLinger: .zero))
        queue.push(.record(Self.record("r1")))
        let (work, started) = try #require(queue.poll())
        #expect(Self.ids(work) == "records r1")

        #expect(queue.push(.settlement(Self.settlement("r1"))) == nil)
        queue.push(.settlement(Self.settlement("r2")))
        let other = try #require(queue.poll())
        #expect(Self.ids(other.work) == "settlements r2")
        queue.finished(other.work, started: other.started)
        #expect(Self.ids(queue.poll()?.work) == "nothing")
        queue.finished(work, started: started)
        #expect(Self.ids(queue.poll()?.work) == "settlements r1")
    }

    @Test("work that lingers is sent when due, also after the thread keeping the time took other work")
    func lingeringWorkIsSent() throws {
        let store = LeasingStore()
        let metering = try MeteringThreads(
            store: store, threads: 2,
            pacing: .init(settlementLinger: .milliseconds(10), recordLinger: .milliseconds(40)))
        metering.admit(Self.request("lease-1"), replyingOn: CountingExecutor()) { _ in }
        metering.settle(Self.settlement("other"))
        #expect(store.settledBatch.wait(timeout: .now() + .seconds(10)) == .success)
        #expect(store.recordedBatch.wait(timeout: .now() + .seconds(10)) == .success)
        #expect(store.recorded == ["lease-1"])
        metering.settle(Self.settlement("lease-1"))
        #expect(store.settledBatch.wait(timeout: .now() + .seconds(10)) == .success)
        #expect(store.forgotten.isEmpty)
    }

    @Test("a request the store admits from a lease is answered at once; its record is forgotten when it settles first")
    func answeredAtOnce() throws {
        let store = LeasingStore()
        let metering = try MeteringThreads(
            store: store, threads: 1, pacing: .init(settlementLinger: .zero, recordLinger: .seconds(60)))
        let key = Mutex<String?>(nil)
        metering.admit(Self.request("lease-1"), replyingOn: CountingExecutor()) { admission in
            if case .admitted(let ticket) = admission { key.withLock { $0 = ticket.upstreamKey } }
        }
        #expect(key.withLock { $0 } == "k-leased", "answered before admit returned")
        metering.settle(Self.settlement("lease-1"))
        #expect(store.forgotten == ["lease-1"])
        #expect(metering.waitUntilSettled(timeout: .seconds(30)) == 0)
        #expect(store.admitted.isEmpty && store.recorded.isEmpty)
    }
}
