import Testing
import TollgateCore

@testable import TollgateProxy

@Suite("Proxy service: a request's life on the event loop")
struct ExchangeLifecycleTests {
    static let events =
        StreamForwardingTests.chunk("Hello there") + StreamForwardingTests.usageChunk + "data: [DONE]\n\n"

    @Test("a client that leaves while admission waits is settled as aborted, and nothing goes upstream")
    func leavesDuringAdmission() throws {
        let harness = Harness()
        harness.metering.holdsAdmissions = true

        harness.run(path: "/v1/chat/completions", body: ProxyHandlerTests.chatBody)
        #expect(harness.metering.heldReplies.count == 1)
        #expect(harness.metering.settlements.isEmpty)
        harness.client.leave()
        harness.metering.answerHeld()

        #expect(harness.upstream.requests.isEmpty)
        let settlement = try #require(harness.metering.settlements.first)
        #expect(harness.metering.settlements.count == 1)
        #expect(settlement.outcome == .clientAborted)
        #expect(settlement.status == 0)
        #expect(settlement.usage == Usage())
        #expect(!settlement.usageIsEstimated)
    }

    @Test("a client that leaves mid-stream cancels the upstream call at once; usage is estimated")
    func leavesMidStream() throws {
        let upstream = ScriptedUpstream(StreamForwardingTests.streamScript([]))
        upstream.holds = true
        let harness = Harness(upstream.script)
        harness.upstream.holds = true

        harness.run(path: "/v1/chat/completions", body: StreamForwardingTests.streamBody)
        let call = try #require(harness.upstream.calls.first)
        _ = call.handler.upstreamDidReceiveHead(status: 200, headers: StreamForwardingTests.sseHeaders)
        _ = Array(StreamForwardingTests.chunk("Hello there").utf8).withUnsafeBytes {
            call.handler.upstreamDidReceiveBody($0)
        }
        #expect(harness.metering.settlements.isEmpty)
        harness.client.leave()

        #expect(call.cancelled)
        let settlement = try #require(harness.metering.settlements.first)
        #expect(settlement.outcome == .clientAborted)
        #expect(settlement.usageIsEstimated)
        #expect(settlement.usage.outputTokens > 0)
        #expect(settlement.usage.inputTokens > 0)
    }

    @Test("a client that lags behind holds the upstream call, and catching up lets it go on")
    func lagPausesTheUpstream() throws {
        let harness = Harness(StreamForwardingTests.streamScript([]))
        harness.upstream.holds = true

        harness.run(path: "/v1/chat/completions", body: StreamForwardingTests.streamBody)
        let call = try #require(harness.upstream.calls.first)
        #expect(!call.handler.upstreamShouldPause)
        harness.client.pendingBytes = UpstreamRelay.pauseAbove + 1
        #expect(call.handler.upstreamShouldPause)
        harness.client.catchUp()

        #expect(call.resumed == 1)
        #expect(!call.handler.upstreamShouldPause)
        harness.client.catchUp()
        #expect(call.resumed == 1, "a client that was never behind resumes nothing")
    }

    @Test("a stream relayed to the end is ended once, then settled with the upstream's usage")
    func streamEndsThenSettles() throws {
        let harness = Harness(StreamForwardingTests.streamScript([Self.events]))
        var endedWhenSettling: Bool?
        harness.metering.onSettle = { endedWhenSettling = harness.client.ended }

        harness.run(path: "/v1/chat/completions", body: StreamForwardingTests.streamBody)

        #expect(endedWhenSettling == true)
        #expect(harness.client.observer == nil, "the finished request no longer listens to its client")
        let settlement = try #require(harness.metering.settlements.first)
        #expect(settlement.outcome == .completed)
        #expect(settlement.usage == Usage(inputTokens: 9, outputTokens: 2))
        #expect(settlement.requestID == "req-test")
        #expect(harness.client.text.hasSuffix("data: [DONE]\n\n"))
    }

    @Test("a refused admission is answered and the response ended")
    func refusalEnds() {
        let harness = Harness()
        harness.metering.rejection = OpenAIError(status: 401, message: "No", type: "invalid_request_error")

        harness.run(path: "/v1/chat/completions", body: ProxyHandlerTests.chatBody)

        #expect(harness.client.status == 401)
        #expect(harness.client.ended)
        #expect(harness.upstream.requests.isEmpty)
    }
}
