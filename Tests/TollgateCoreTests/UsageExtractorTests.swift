import Testing

@testable import TollgateCore

@Suite("Usage extraction")
struct UsageExtractorTests {
    private func value(_ text: String) throws -> JSONValue {
        try JSONValue(parsing: Array(text.utf8))
    }

    @Test("reads a chat non-stream body with details")
    func chatBody() {
        let body = #"""
            {"id":"chatcmpl-1","object":"chat.completion","created":1770933892,"model":"gpt-4.1-nano",
             "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null,"annotations":[]},
               "logprobs":null,"finish_reason":"stop"}],
             "usage":{"prompt_tokens":16,"completion_tokens":300,"total_tokens":316,
               "prompt_tokens_details":{"cached_tokens":6,"audio_tokens":0},
               "completion_tokens_details":{"reasoning_tokens":120,"audio_tokens":0,
                 "accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},
             "service_tier":"default","system_fingerprint":"fp_1"}
            """#
        let usage = UsageExtractor.usage(ofResponseBody: Array(body.utf8), api: .chatCompletions)
        #expect(
            usage
                == Usage(
                    inputTokens: 16, cachedInputTokens: 6, outputTokens: 300, reasoningTokens: 120, totalTokens: 316))
    }

    @Test("reads a Responses non-stream body")
    func responsesBody() {
        let body = #"""
            {"id":"resp_1","object":"response","created_at":1761565462,"status":"completed","error":null,
             "output":[{"type":"reasoning","id":"rs_1"},{"id":"msg_1","type":"message","status":"completed",
               "role":"assistant","content":[{"type":"output_text","text":"Greetings","annotations":[]}]}],
             "usage":{"input_tokens":13,"input_tokens_details":{"cached_tokens":3},
               "output_tokens":12,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":25}}
            """#
        let usage = UsageExtractor.usage(ofResponseBody: Array(body.utf8), api: .responses)
        #expect(
            usage == Usage(inputTokens: 13, cachedInputTokens: 3, outputTokens: 12, reasoningTokens: 5, totalTokens: 25)
        )
    }

    @Test("treats null or missing details as zero (Azure)")
    func nullDetails() throws {
        let usage = UsageExtractor.chatUsage(
            try value(
                #"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"#
                    + #""prompt_tokens_details":null,"completion_tokens_details":null}"#))
        #expect(usage == Usage(inputTokens: 10, outputTokens: 5, totalTokens: 15))
        #expect(
            UsageExtractor.responsesUsage(try value(#"{"input_tokens":1,"output_tokens":2}"#))
                == Usage(
                    inputTokens: 1, outputTokens: 2, totalTokens: 3))
    }

    @Test("computes a missing or unusable total as input + output")
    func missingTotal() throws {
        for total in ["", #","total_tokens":null"#, #","total_tokens":-5"#, #","total_tokens":"x""#] {
            let usage = UsageExtractor.chatUsage(try value(#"{"prompt_tokens":7,"completion_tokens":8"# + total + "}"))
            #expect(usage?.totalTokens == 15, "total member: \(total)")
        }
        #expect(UsageExtractor.chatUsage(try value(#"{"prompt_tokens":7,"total_tokens":9}"#))?.totalTokens == 9)
    }

    @Test("takes negative, fractional, huge or non-number counts as zero")
    func hostileCounts() throws {
        let usage = UsageExtractor.chatUsage(
            try value(
                #"{"prompt_tokens":-3,"completion_tokens":1.5,"prompt_tokens_details":{"cached_tokens":"2"},"#
                    + #""completion_tokens_details":{"reasoning_tokens":99999999999999999999999}}"#))
        #expect(usage == Usage())
    }

    @Test("caps cached and reasoning tokens at the counts they are part of")
    func capsSubsets() throws {
        let usage = UsageExtractor.responsesUsage(
            try value(
                #"{"input_tokens":5,"input_tokens_details":{"cached_tokens":50},"#
                    + #""output_tokens":2,"output_tokens_details":{"reasoning_tokens":9}}"#))
        #expect(usage == Usage(inputTokens: 5, cachedInputTokens: 5, outputTokens: 2, reasoningTokens: 2))
    }

    @Test("saturates a total that would overflow")
    func saturates() throws {
        let usage = UsageExtractor.chatUsage(
            try value(#"{"prompt_tokens":9223372036854775807,"completion_tokens":9223372036854775807}"#))
        #expect(usage?.totalTokens == Int.max)
    }

    @Test("returns nil when usage is not an object, or absent, null or unparsable in a body")
    func absentUsage() {
        #expect(UsageExtractor.chatUsage(.null) == nil)
        #expect(UsageExtractor.responsesUsage(.array([])) == nil)
        for body in [#"{"id":"x"}"#, #"{"usage":null}"#, #"{"usage":"#, "", "[1]"] {
            #expect(UsageExtractor.usage(ofResponseBody: Array(body.utf8), api: .chatCompletions) == nil, "\(body)")
            #expect(UsageExtractor.usage(ofResponseBody: Array(body.utf8), api: .responses) == nil, "\(body)")
        }
    }

    @Test("reads usage from the usage field of the API asked, not the other shape")
    func shapeFollowsAPI() {
        let chatShaped = Array(#"{"usage":{"prompt_tokens":4,"completion_tokens":6}}"#.utf8)
        #expect(UsageExtractor.usage(ofResponseBody: chatShaped, api: .chatCompletions)?.totalTokens == 10)
        #expect(UsageExtractor.usage(ofResponseBody: chatShaped, api: .responses) == Usage())
    }

    @Test("Usage defaults its total to input + output")
    func usageDefaults() {
        #expect(Usage(inputTokens: 3, outputTokens: 4).totalTokens == 7)
        #expect(Usage(inputTokens: 3, outputTokens: 4, totalTokens: 10).totalTokens == 10)
    }
}
