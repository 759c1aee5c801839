import Synchronization
import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

#if canImport(Glibc)
    import Glibc
#endif

/// A fresh directory under /tmp for one test's journal, removed (with its files) by `remove`.
struct JournalDirectory {
    let path: String

    init() throws {
        var template = Array(("/tmp/tollgate-journal-test-" + String(repeating: "X", count: 6)).utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Names in the directory, hidden ones included, sorted.
    var names: [String] {
        SettlementJournal.names(in: path)
    }

    /// Names of the journal files proper (`.journal` and `.replay`).
    var journalFiles: [String] {
        names.filter(SettlementJournal.isJournalFile)
    }

    func contents(_ name: String) -> String {
        let descriptor = open(path + "/" + name, O_RDONLY)
        guard descriptor >= 0 else { return "" }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Writes a file as another (dead) worker would have left it.
    func write(_ name: String, _ text: String) throws {
        let descriptor = open(path + "/" + name, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        let bytes = Array(text.utf8)
        #expect(bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) } == bytes.count)
    }

    func remove() {
        for name in names { unlink(path + "/" + name) }
        rmdir(path)
    }
}

/// Stands in for `tollgate.settle_batch`: records settlements by request id (idempotently, like
/// the database), and can be made to fail like an unreachable or refusing database.
final class FakeLedger: Sendable {
    private struct State {
        var rows: [String: Settlement] = [:]
        var calls: [String] = []
        var batchSizes: [Int] = []
        var failure: StoreError?
        var refused: Set<String> = []
    }

    private let state = Mutex(State())

    /// The batch settle function a journal replays through.
    var settle: @Sendable ([Settlement]) -> [Result<Bool, StoreError>] {
        { [self] batch in
            state.withLock { $0.batchSizes.append(batch.count) }
            return settleOneByOne(batch) { settlement throws(StoreError) in try record(settlement) }
        }
    }

    func record(_ settlement: Settlement) throws(StoreError) -> Bool {
        try state.withLock { state throws(StoreError) -> Bool in
            state.calls.append(settlement.requestID)
            if let failure = state.failure { throw failure }
            if state.refused.contains(settlement.requestID) {
                throw StoreError(.queryFailed, "new row violates check constraint", sqlState: "23514")
            }
            guard state.rows[settlement.requestID] == nil else { return false }
            state.rows[settlement.requestID] = settlement
            return true
        }
    }

    /// Every call fails with `failure` until it is set back to nil.
    func fail(with failure: StoreError?) {
        state.withLock { $0.failure = failure }
    }

    /// Calls for `requestID` fail with a constraint violation (a line the database never takes).
    func refuse(_ requestID: String) {
        state.withLock { _ = $0.refused.insert(requestID) }
    }

    var rows: [String: Settlement] { state.withLock { $0.rows } }
    var calls: [String] { state.withLock { $0.calls } }
    /// The size of each batch `settle` was called with.
    var batchSizes: [Int] { state.withLock { $0.batchSizes } }
}

/// A batch settle function made of a single one (see `settleOneByOne`).
func oneByOne(
    _ single: @escaping (Settlement) throws(StoreError) -> Bool
) -> ([Settlement]) -> [Result<Bool, StoreError>] {
    { batch in settleOneByOne(batch, single) }
}

/// Settles a batch one by one, failing like the database's batch: after an outage, the rest of
/// the batch fails with it, untried.
func settleOneByOne(
    _ batch: [Settlement], _ single: (Settlement) throws(StoreError) -> Bool
) -> [Result<Bool, StoreError>] {
    var results: [Result<Bool, StoreError>] = []
    for settlement in batch {
        if case .failure(let error)? = results.last, OutagePolicy.isOutage(error) {
            results.append(.failure(error))
        } else {
            results.append(Result { () throws(StoreError) in try single(settlement) })
        }
    }
    return results
}

enum JournalSamples {
    static let down = StoreError(.connectionFailed, "connection refused")

    /// A settlement with every field set, distinct per `index`.
    static func settlement(
        _ index: Int = 0, model: String = "gpt-4o-mini", keyID: String? = "7", timeToFirstByte: Duration? = nil
    ) -> Settlement {
        let ticket = AdmissionTicket(
            upstreamKey: "sk-platform-never-journaled", keySource: .platform, userID: "42", keyID: keyID,
            reservedTokens: 300 + index)
        return Settlement(
            requestID: RequestID.make(), ticket: ticket, api: index % 2 == 0 ? .chatCompletions : .responses,
            model: model, stream: index % 2 == 1, outcome: .completed, status: 200,
            usage: Usage(inputTokens: 10 + index, cachedInputTokens: 2, outputTokens: 20, reasoningTokens: 3),
            usageIsEstimated: false, startedAtMicroseconds: 1_700_000_000_000_000 + Int64(index),
            timeToFirstByte: timeToFirstByte ?? .microseconds(1_234), duration: .microseconds(56_789 + index))
    }

    /// Polls `condition` until it holds or `seconds` pass; whether it held.
    static func eventually(within seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !condition() {
            guard ContinuousClock.now < deadline else { return false }
            var pause = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&pause, nil)
        }
        return true
    }
}
