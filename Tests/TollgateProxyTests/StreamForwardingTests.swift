import Foundation
import Testing
import TollgateCore

@testable import TollgateProxy

@Suite("Proxy service: streams")
struct StreamForwardingTests {
    static let streamBody = #"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#
    static let sseHeaders: [(String, String)] = [
        ("content-type", "text/event-stream; charset=utf-8"), ("x-request-id", "req_s"),
    ]

    static func chunk(_ content: String) -> String {
        #"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"\#(content)"},"#
            + #""finish_reason":null}],"usage":null}"# + "\n\n"
    }

    static let usageChunk =
        #"data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"#
        + #""completion_tokens":2,"total_tokens":11}}"# + "\n\n"

    static func streamScript(_ pieces: [String], outcome: UpstreamOutcome = .completed) -> ScriptedUpstream.Script {
        var script = ScriptedUpstream.Script()
        script.headers = sseHeaders
        script.chunks = pieces.map { Array($0.utf8) }
        script.outcome = outcome
        return script
    }

    @Test("each event is flushed on its own, even when one network read carries several or half of one")
    func flushesPerEvent() {
        let events = Self.chunk("Hel") + Self.chunk("lo") + Self.usageChunk + "data: [DONE]\n\n"
        let split = events.index(events.startIndex, offsetBy: 30)
        let harness = Harness(Self.streamScript([String(events[..<split]), String(events[split...])]))

        harness.run(path: "/v1/chat/completions", body: Self.streamBody)

        // The head is flushed alone, then one flush per relayed event: two chunks and [DONE].
        #expect(harness.client.flushedPieces.count == 4)
        #expect(
            harness.client.flushedPieces.dropFirst().allSatisfy { piece in
                String(decoding: piece, as: UTF8.self).components(separatedBy: "\n\n").count == 2
            })
        #expect(harness.client.header("content-type") == "text/event-stream; charset=utf-8")
        #expect(harness.client.header("cache-control") == "no-cache")
        #expect(harness.client.header("x-request-id") == "req_s")
    }

    @Test("usage is injected upstream, the usage chunk is hidden from a client that did not ask, and settled")
    func hidesInjectedUsage() throws {
        let events = Self.chunk("Hi") + Self.usageChunk + "data: [DONE]\n\n"
        let harness = Harness(Self.streamScript([events]))

        harness.run(path: "/v1/chat/completions", body: Self.streamBody)

        let forwarded = try JSONValue(parsing: harness.upstream.requests.first?.body ?? [])
        #expect(forwarded["stream_options"]?["include_usage"]?.boolValue == true)
        #expect(!harness.client.text.contains("prompt_tokens"))
        #expect(harness.client.text.hasSuffix("data: [DONE]\n\n"))
        #expect(harness.metering.settlements.first?.usage == Usage(inputTokens: 9, outputTokens: 2))
        #expect(harness.metering.settlements.first?.outcome == .completed)
        #expect(harness.metering.settlements.first?.usageIsEstimated == false)
    }

    @Test("a client that asked for usage gets the usage chunk")
    func keepsRequestedUsage() {
        let events = Self.chunk("Hi") + Self.usageChunk + "data: [DONE]\n\n"
        let harness = Harness(Self.streamScript([events]))
        let body = #"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#

        harness.run(path: "/v1/chat/completions", body: body)

        #expect(harness.client.text.contains(#""prompt_tokens":9"#))
    }

    @Test("an upstream error answer to a stream request reaches the client as JSON with its status")
    func errorBeforeStream() {
        var script = ScriptedUpstream.Script()
        script.status = 400
        script.chunks = [Array(#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#.utf8)]
        let harness = Harness(script)

        harness.run(path: "/v1/chat/completions", body: Self.streamBody)

        #expect(harness.client.status == 400)
        #expect(harness.client.header("content-type") == "application/json")
        #expect(harness.client.text.contains("bad model"))
    }

    @Test("a stream that breaks off ends with an SSE error event and an estimated settlement")
    func brokenStream() throws {
        let harness = Harness(Self.streamScript([Self.chunk("abcdefgh")], outcome: .failed(.interrupted)))

        harness.run(path: "/v1/chat/completions", body: Self.streamBody)

        #expect(harness.client.status == 200)
        let lastEvent = harness.client.text.components(separatedBy: "\n\n").filter { !$0.isEmpty }.last ?? ""
        #expect(lastEvent.hasPrefix("data: "))
        let error = try JSONValue(parsing: Array(lastEvent.dropFirst(6).utf8))["error"]
        #expect(error?["message"]?.stringValue?.isEmpty == false)
        let settlement = try #require(harness.metering.settlements.first)
        #expect(settlement.outcome == .upstreamError)
        #expect(settlement.usageIsEstimated)
        #expect(settlement.usage.outputTokens == 2)
        #expect(settlement.usage.inputTokens > 0)
    }

    @Test("a Responses stream keeps its event lines and ends with a Responses error event when cut")
    func responsesStreamCut() throws {
        let created = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\n"
        let harness = Harness(Self.streamScript([created], outcome: .failed(.stalled)))

        harness.run(path: "/v1/responses", body: #"{"model":"m","input":"Hi","stream":true}"#)

        #expect(harness.client.text.hasPrefix("event: response.created\n"))
        #expect(harness.client.text.contains("event: error\n"))
        #expect(!harness.client.text.contains("[DONE]"))
        #expect(harness.metering.settlements.first?.outcome == .upstreamError)
    }

    @Test("a client that leaves stops the upstream transfer and settles as client_aborted")
    func clientLeaves() {
        let events = Self.chunk("a") + Self.chunk("b") + Self.chunk("c") + "data: [DONE]\n\n"
        let harness = Harness(Self.streamScript(events.components(separatedBy: "\n\n").map { $0 + "\n\n" }))
        harness.client.leavesAfterFlushes = 2

        harness.run(path: "/v1/chat/completions", body: Self.streamBody)

        #expect(harness.upstream.stoppedByHandler)
        #expect(harness.metering.settlements.first?.outcome == .clientAborted)
        #expect(harness.metering.settlements.first?.usageIsEstimated == true)
    }
}
