import Testing
import TollgateCore

@testable import TollgateProxy

@Suite("Proxy service: non-stream requests")
struct ProxyHandlerTests {
    static let chatBody = #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"zeta":1.50}"#
    static let chatAnswer = #"""
        {"id":"chatcmpl-1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":16,\#
        "completion_tokens":300,"total_tokens":316,"prompt_tokens_details":{"cached_tokens":4},\#
        "completion_tokens_details":{"reasoning_tokens":7}}}
        """#

    @Test("a non-stream chat is forwarded unchanged with the admitted key and settled with reported usage")
    func forwardsAndSettles() {
        var script = ScriptedUpstream.Script()
        script.headers = [
            ("content-type", "application/json"), ("x-request-id", "req_abc"), ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"), ("x-ratelimit-remaining-tokens", "99"),
        ]
        script.chunks = [Array(Self.chatAnswer.utf8)]
        let harness = Harness(script)

        harness.run(path: "/v1/chat/completions", body: Self.chatBody, headers: ["authorization": "Bearer tg-client"])

        let sent = harness.upstream.requests.first
        #expect(sent?.path == "/chat/completions")
        #expect(sent?.body == Array(Self.chatBody.utf8))
        #expect(sent?.apiKey == "sk-upstream-test")
        #expect(sent?.headers.contains { $0.1.contains("tg-client") } == false)
        #expect(harness.client.status == 200)
        #expect(harness.client.text == Self.chatAnswer)
        #expect(harness.client.header("x-request-id") == "req_abc")
        #expect(harness.client.header("x-ratelimit-remaining-tokens") == "99")
        #expect(harness.client.header("connection") == nil)
        #expect(harness.client.header("transfer-encoding") == nil)
        let settlement = harness.metering.settlements.first
        #expect(harness.metering.settlements.count == 1)
        #expect(settlement?.outcome == .completed)
        #expect(
            settlement?.usage == Usage(inputTokens: 16, cachedInputTokens: 4, outputTokens: 300, reasoningTokens: 7))
        #expect(settlement?.usageIsEstimated == false)
    }

    @Test("the response is complete before the request is settled, so settling never delays the client")
    func endsBeforeSettling() {
        for stream in [false, true] {
            var script = ScriptedUpstream.Script()
            script.chunks = [Array(Self.chatAnswer.utf8)]
            if stream {
                script = StreamForwardingTests.streamScript(
                    [StreamForwardingTests.chunk("Hi") + StreamForwardingTests.usageChunk + "data: [DONE]\n\n"])
            }
            let harness = Harness(script)
            var endedWhenSettling: Bool?
            harness.metering.onSettle = { endedWhenSettling = harness.client.ended }

            harness.run(
                path: "/v1/chat/completions", body: stream ? StreamForwardingTests.streamBody : Self.chatBody)

            #expect(endedWhenSettling == true, "stream: \(stream)")
            #expect(!harness.client.sentAfterEnd)
            #expect(harness.metering.settlements.count == 1)
        }
    }

    @Test("a Responses answer is settled from its usage object")
    func responsesUsage() {
        var script = ScriptedUpstream.Script()
        script.chunks = [
            Array(
                #"{"object":"response","usage":{"input_tokens":13,"input_tokens_details":{"cached_tokens":2},"#.utf8)
                + Array(#""output_tokens":12,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":25}}"#.utf8)
        ]
        let harness = Harness(script)

        harness.run(path: "/v1/responses", body: #"{"model":"o4-mini","input":"Hi"}"#)

        #expect(harness.upstream.requests.first?.path == "/responses")
        #expect(
            harness.metering.settlements.first?.usage
                == Usage(inputTokens: 13, cachedInputTokens: 2, outputTokens: 12, reasoningTokens: 5, totalTokens: 25))
    }

    @Test("an upstream error status and body reach the client unchanged and settle as upstream_error")
    func upstreamErrorPassesThrough() {
        var script = ScriptedUpstream.Script()
        script.status = 429
        script.headers = [("content-type", "application/json"), ("retry-after", "2")]
        let errorBody =
            #"{"error":{"message":"Slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
        script.chunks = [Array(errorBody.utf8)]
        let harness = Harness(script)

        harness.run(path: "/v1/chat/completions", body: Self.chatBody)

        #expect(harness.client.status == 429)
        #expect(harness.client.text == errorBody)
        #expect(harness.client.header("retry-after") == "2")
        #expect(harness.metering.settlements.first?.outcome == .upstreamError)
        #expect(harness.metering.settlements.first?.status == 429)
    }

    @Test("a 2xx body that is not JSON becomes a 502 in the OpenAI shape")
    func nonJSONAnswer() throws {
        var script = ScriptedUpstream.Script()
        script.chunks = [Array("<html>oops</html>".utf8)]
        let harness = Harness(script)

        harness.run(path: "/v1/chat/completions", body: Self.chatBody)

        #expect(harness.client.status == 502)
        let error = try JSONValue(parsing: harness.client.body)["error"]
        #expect(error?["message"]?.stringValue?.isEmpty == false)
    }

    @Test(
        "upstream failures before any answer map to 502 and 504",
        arguments: [
            (UpstreamFailure.unreachable, 502), (.timedOut, 504), (.stalled, 504), (.interrupted, 502),
        ])
    func failuresBeforeHead(failure: UpstreamFailure, status: Int) {
        var script = ScriptedUpstream.Script()
        script.sendsHead = false
        script.outcome = .failed(failure)
        let harness = Harness(script)

        harness.run(path: "/v1/chat/completions", body: Self.chatBody)

        #expect(harness.client.status == status)
        #expect(harness.client.text.contains(#""error""#))
        #expect(harness.metering.settlements.first?.outcome == .upstreamError)
        #expect(harness.metering.settlements.first?.usage == Usage())
    }

    @Test("malformed bodies are refused with 400 before admission and never reach the upstream")
    func malformedBody() {
        for body in ["{not json", "[1,2]", #"{"model":"m","messages":[],"stream":"yes"}"#, ""] {
            let harness = Harness()
            harness.run(path: "/v1/chat/completions", body: body)
            #expect(harness.client.status == 400, "body: \(body)")
            #expect(harness.upstream.requests.isEmpty)
            #expect(harness.metering.admitted == 0)
            #expect(harness.metering.settlements.isEmpty)
        }
    }

    @Test("a refused admission is answered as is, with nothing forwarded or settled")
    func refusedAdmission() {
        let harness = Harness()
        harness.metering.rejection = OpenAIError(
            status: 429, message: "Quota exhausted", type: "insufficient_quota", code: "insufficient_quota",
            headers: [("x-should-retry", "false")])

        harness.run(path: "/v1/chat/completions", body: Self.chatBody)

        #expect(harness.client.status == 429)
        #expect(harness.client.header("x-should-retry") == "false")
        #expect(harness.upstream.requests.isEmpty)
        #expect(harness.metering.settlements.isEmpty)
    }

    @Test("unknown paths get 404 and known paths with the wrong method get 405")
    func routing() {
        let unknown = Harness()
        unknown.run(path: "/v1/embeddings", body: "{}")
        #expect(unknown.client.status == 404)

        let wrongMethod = Harness()
        wrongMethod.run(method: "GET", path: "/v1/chat/completions", body: "")
        #expect(wrongMethod.client.status == 405)
        #expect(wrongMethod.client.header("allow") == "POST")
        #expect(unknown.upstream.requests.isEmpty && wrongMethod.upstream.requests.isEmpty)
    }

    @Test("the model list is fetched upstream with GET and passed through without settlement")
    func modelList() {
        var script = ScriptedUpstream.Script()
        script.chunks = [Array(#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}"#.utf8)]
        let harness = Harness(script)

        harness.run(method: "GET", path: "/v1/models", body: "")

        #expect(harness.upstream.requests.first?.method == "GET")
        #expect(harness.upstream.requests.first?.path == "/models")
        #expect(harness.client.status == 200)
        #expect(harness.client.text.contains("gpt-4o-mini"))
        #expect(harness.metering.settlements.isEmpty)
    }
}
