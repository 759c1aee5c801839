import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

/// Behaviour that needs no database, or that must hold precisely when there is none.
@Suite("The store without a database")
struct OfflineStoreTests {
    /// Nothing listens on port 1 of the loopback: connecting fails at once.
    static let unreachable = "host=127.0.0.1 port=1 user=tollgate password=hunter2-secret connect_timeout=2"

    private func metering() -> PostgresMetering {
        PostgresMetering(settings: MeteringSettings(databaseURL: Self.unreachable, platformKey: "sk-platform"))
    }

    @Test("a malformed bearer token is a 401 without a database round trip")
    func malformedWithoutRoundTrip() {
        let request = generationRequest(headers: ["authorization": "Bearer sk-not-a-tollgate-key"])
        let error = metering().admit(request).error
        // With the database unreachable, any round trip would have made this a 503.
        #expect(error?.status == 401)
        #expect(error?.code == "invalid_api_key")
        #expect(metering().admitListing(from: request.client).error?.status == 401)
    }

    @Test("a well-formed key with the database down is a 503 metering_unavailable")
    func databaseDown() {
        let request = generationRequest(key: APIKey.generate())
        let error = metering().admit(request).error
        #expect(error?.status == 503)
        #expect(error?.code == "metering_unavailable")
    }

    @Test("a failed connection is reported without the password")
    func connectionFailure() throws {
        #expect {
            try PostgresConnection(conninfo: Self.unreachable)
        } throws: { error in
            let storeError = error as? StoreError
            return storeError?.code == .connectionFailed && storeError?.description.contains("hunter2") == false
        }
    }

    @Test("a malformed connection string is refused without quoting it")
    func malformedConnectionString() throws {
        for conninfo in ["host=x password", "postgresql://user:hunter2@%zz/db", "nonsense_option=hunter2"] {
            #expect {
                try PostgresConnection(conninfo: conninfo)
            } throws: { error in
                let storeError = error as? StoreError
                return storeError?.code == .invalidSetting && storeError?.description.contains("hunter2") == false
            }
        }
    }

    @Test("settlement parameters: ids, labels, counts, microseconds since the epoch, milliseconds")
    func settleParameters() {
        let request = generationRequest(key: nil, model: "gpt-x", stream: true)
        let ticket = AdmissionTicket(upstreamKey: "sk-secret", keySource: .byok, userID: "7", keyID: nil)
        var settlement = completedSettlement(
            request, ticket,
            usage: Usage(inputTokens: 10, cachedInputTokens: 4, outputTokens: 20, reasoningTokens: 5))
        settlement.startedAtMicroseconds = 1_700_000_000_123_456
        settlement.timeToFirstByte = .microseconds(1500)
        settlement.duration = .seconds(2)
        settlement.usageIsEstimated = true
        let parameters = PostgresMetering.settleParameters(settlement)
        #expect(
            parameters == [
                request.requestID, "7", nil, "chat.completions", "gpt-x", "true", "byok", "completed", "200", "10", "4",
                "20", "5", "30", "estimated", "1700000000123456", "1.5", "2000.0",
            ])
        #expect(!parameters.contains("sk-secret"))
    }

    @Test("worker ids come from the supervisor, else host:pid; text arrays are quoted and escaped")
    func workerIdentity() {
        #expect(WorkerIdentity.current() == WorkerIdentity.hostName() + ":\(getpid())")
        #expect(WorkerIdentity.current(environment: ["TOLLGATE_WORKER_ID": "h/1/0/3"]) == "h/1/0/3")
        #expect(StoreMaintenance.textArray(["a:1", "b\"c", "d\\e"]) == #"{"a:1","b\"c","d\\e"}"#)
        #expect(StoreMaintenance.textArray([]) == "{}")
    }

    @Test("store errors describe themselves by code and SQLSTATE")
    func errorDescription() {
        #expect(StoreError(.timeout, "slow").description == "timeout: slow")
        #expect(
            StoreError(.queryFailed, "boom", sqlState: "42501").description == "query_failed (SQLSTATE 42501): boom")
    }
}

#if canImport(Glibc)
    import Glibc
#endif
