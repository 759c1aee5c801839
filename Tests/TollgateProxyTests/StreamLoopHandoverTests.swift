import Synchronization
import Testing
import TollgateCore

@testable import TollgateProxy

/// A client whose connection can leave its thread: once detached, what it is sent goes to a
/// `RecordingDetachedClient` instead.
final class DetachableRecordingClient: DetachableClient {
    let onThread = RecordingClient()
    private(set) var detached: RecordingDetachedClient?

    var disconnectDescriptor: Int32 { -1 }

    func sendHead(status: Int, headers: [(String, String)]) {
        onThread.sendHead(status: status, headers: headers)
    }

    func send(_ bytes: [UInt8]) {
        onThread.send(bytes)
    }

    func flush() -> Bool {
        onThread.flush()
    }

    func end() {
        onThread.end()
    }

    func detachFromThread() -> (any DetachedClient)? {
        let client = RecordingDetachedClient()
        detached = client
        return client
    }
}

/// The detached side: records like `RecordingClient` and remembers whether the loop ended it.
final class RecordingDetachedClient: DetachedClient {
    let recorder = RecordingClient()
    private(set) var ended = false

    var descriptor: Int32 { -1 }
    var disconnectDescriptor: Int32 { -1 }
    var pendingBytes: Int { 0 }

    func sendHead(status: Int, headers: [(String, String)]) {
        recorder.sendHead(status: status, headers: headers)
    }

    func send(_ bytes: [UInt8]) {
        recorder.send(bytes)
    }

    func flush() -> Bool {
        recorder.flush()
    }

    func writePending() -> Bool { true }
    func discardInput() -> Bool { true }
    func end() { ended = true }
    func close() {}
}

/// A stream loop that keeps what it is handed and plays a scripted answer when told to, the
/// way the real loop would on its own thread.
/// `@unchecked Sendable`: each test drives it from one thread.
final class HeldStreamLoop: StreamLoop, @unchecked Sendable {
    struct Held {
        let request: UpstreamRequest
        let handler: any UpstreamResponseHandler
        let client: any DetachedClient
        let completion: (UpstreamOutcome) -> Void
    }

    private(set) var held: [Held] = []

    func start(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler, client: any DetachedClient,
        completion: @escaping (UpstreamOutcome) -> Void
    ) {
        held.append(Held(request: request, handler: handler, client: client, completion: completion))
    }

    /// Answers the held stream `index` with `script`, then ends it as the loop does.
    func play(_ index: Int, _ script: ScriptedUpstream.Script) {
        let stream = held[index]
        var outcome = script.outcome
        if stream.handler.upstreamDidReceiveHead(status: script.status, headers: script.headers) {
            for chunk in script.chunks where !chunk.withUnsafeBytes({ stream.handler.upstreamDidReceiveBody($0) }) {
                outcome = .abortedByHandler
                break
            }
        } else {
            outcome = .abortedByHandler
        }
        stream.completion(outcome)
        stream.client.end()
    }
}

/// Metering that may be called from the settlement queue's threads.
final class LockedMetering: Metering, Sendable {
    private let recorded = Mutex<[Settlement]>([])

    var settlements: [Settlement] { recorded.withLock { $0 } }

    func admit(_ request: AdmissionRequest) -> Admission {
        .admitted(AdmissionTicket(upstreamKey: "sk-upstream-test", keySource: .platform, userID: "u1"))
    }

    func admitListing(from client: ProxyRequest) -> Admission {
        .admitted(AdmissionTicket(upstreamKey: "sk-upstream-test", keySource: .platform))
    }

    func settle(_ settlement: Settlement) {
        recorded.withLock { $0.append(settlement) }
    }
}

@Suite("Proxy service: streams handed to the stream loop")
struct StreamLoopHandoverTests {
    static let streamBody = StreamForwardingTests.streamBody
    static let events =
        StreamForwardingTests.chunk("Hi") + StreamForwardingTests.usageChunk + "data: [DONE]\n\n"

    /// A service with a loop whose upstream must never be called on the request thread.
    static func service(loop: HeldStreamLoop, metering: LockedMetering) -> (ProxyService, ScriptedUpstream) {
        let upstream = ScriptedUpstream(.init(status: 599))
        let service = ProxyService(
            router: Router(basePath: "/v1"), metering: metering, streamLoop: loop, makeUpstream: { upstream })
        return (service, upstream)
    }

    static func request(_ body: String) -> ProxyRequest {
        ProxyRequest(id: "req-loop", method: "POST", path: "/v1/chat/completions", headers: [:], body: Array(body.utf8))
    }

    @Test("an admitted stream leaves its thread: the loop relays it, and it is settled once it ends")
    func streamGoesToTheLoop() throws {
        let loop = HeldStreamLoop()
        let metering = LockedMetering()
        let (service, upstream) = Self.service(loop: loop, metering: metering)
        let client = DetachableRecordingClient()

        service.makeHandler().handle(Self.request(Self.streamBody), client: client)

        // The handler returned with the stream still open: nothing settled, the thread is free.
        #expect(upstream.requests.isEmpty)
        #expect(loop.held.count == 1)
        #expect(service.detachedStreams.count == 1)
        #expect(metering.settlements.isEmpty)
        let forwarded = try JSONValue(parsing: loop.held[0].request.body)
        #expect(forwarded["stream_options"]?["include_usage"]?.boolValue == true)
        #expect(loop.held[0].request.apiKey == "sk-upstream-test")

        loop.play(0, StreamForwardingTests.streamScript([Self.events]))

        #expect(service.detachedStreams.waitUntilSettled(timeout: .seconds(10)) == 0)
        let detached = try #require(client.detached)
        #expect(detached.ended)
        #expect(detached.recorder.status == 200)
        #expect(detached.recorder.text.hasSuffix("data: [DONE]\n\n"))
        #expect(!detached.recorder.text.contains("prompt_tokens"))
        #expect(client.onThread.body.isEmpty)
        #expect(metering.settlements.count == 1)
        #expect(metering.settlements.first?.usage == Usage(inputTokens: 9, outputTokens: 2))
        #expect(metering.settlements.first?.outcome == .completed)
        #expect(metering.settlements.first?.requestID == "req-loop")
    }

    @Test("a client that leaves while the loop relays is settled as aborted with estimated usage")
    func clientGoneInTheLoop() throws {
        let loop = HeldStreamLoop()
        let metering = LockedMetering()
        let (service, _) = Self.service(loop: loop, metering: metering)

        service.makeHandler().handle(Self.request(Self.streamBody), client: DetachableRecordingClient())
        let stream = try #require(loop.held.first)
        _ = stream.handler.upstreamDidReceiveHead(status: 200, headers: StreamForwardingTests.sseHeaders)
        _ = Array(StreamForwardingTests.chunk("Hello there").utf8).withUnsafeBytes {
            stream.handler.upstreamDidReceiveBody($0)
        }
        stream.completion(.clientGone)

        #expect(service.detachedStreams.waitUntilSettled(timeout: .seconds(10)) == 0)
        let settlement = try #require(metering.settlements.first)
        #expect(settlement.outcome == .clientAborted)
        #expect(settlement.usageIsEstimated)
        #expect(settlement.usage.outputTokens > 0)
    }

    @Test("non-stream requests, and clients that cannot detach, stay on their thread")
    func staysOnThread() {
        let loop = HeldStreamLoop()
        let metering = LockedMetering()
        let (service, upstream) = Self.service(loop: loop, metering: metering)
        upstream.script = ScriptedUpstream.Script(
            status: 200, chunks: [Array(#"{"object":"chat.completion","choices":[]}"#.utf8)])

        let plain = #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#
        service.makeHandler().handle(Self.request(plain), client: DetachableRecordingClient())
        upstream.script = StreamForwardingTests.streamScript([Self.events])
        let fixed = RecordingClient()
        service.makeHandler().handle(Self.request(Self.streamBody), client: fixed)

        #expect(loop.held.isEmpty)
        #expect(upstream.requests.count == 2)
        #expect(fixed.text.hasSuffix("data: [DONE]\n\n"))
        #expect(metering.settlements.count == 2)
        #expect(service.detachedStreams.count == 0)
    }
}
