import Testing

@testable import TollgateCore

@Suite("Stream relay")
struct StreamRelayTests {
    /// Relays every item of a stream and returns what the client would receive.
    private func run(_ relay: inout StreamRelay, _ bytes: [UInt8]) throws -> [UInt8] {
        try Fixtures.items(of: bytes).compactMap { relay.relay($0) }.flatMap { $0 }
    }

    private func chatEvent(_ json: String) -> SSEItem {
        .event(SSEEvent(data: json))
    }

    @Test("drops only the injected usage chunk when the client did not ask for usage")
    func dropsInjectedUsage() throws {
        var relay = StreamRelay(api: .chatCompletions, clientWantsUsage: false)
        let output = try run(&relay, Fixtures.stream(Fixtures.chatStreamLines))
        let forwarded = try Fixtures.items(of: output)

        #expect(Fixtures.events(forwarded).count == 5)
        #expect(!Fixtures.events(forwarded).contains { $0.data.contains(#""choices":[]"#) })
        #expect(forwarded.contains(.comment("keep-alive")))
        #expect(Fixtures.events(forwarded).last?.data == "[DONE]")
        #expect(relay.eventsForwarded == 5)
        #expect(relay.usage == Usage(inputTokens: 16, cachedInputTokens: 4, outputTokens: 300, reasoningTokens: 10))
        #expect(relay.finished)
        #expect(!relay.sawError)
    }

    @Test("keeps the usage chunk when the client asked for it, forwarding every event byte-identical")
    func keepsUsageWhenAsked() throws {
        var relay = StreamRelay(api: .chatCompletions, clientWantsUsage: true)
        let input = Fixtures.stream(Fixtures.chatStreamLines)
        let output = try run(&relay, input)
        // LF input re-encodes to the same bytes, except the comment loses its optional space.
        let expected = String(decoding: input, as: UTF8.self).replacingOccurrences(
            of: ": keep-alive", with: ":keep-alive")
        #expect(String(decoding: output, as: UTF8.self) == expected)
        #expect(relay.eventsForwarded == 6)
        #expect(relay.usage?.totalTokens == 316)
    }

    @Test("counts content, refusal and tool-call argument bytes")
    func countsDeltaBytes() throws {
        var relay = StreamRelay(api: .chatCompletions, clientWantsUsage: false)
        _ = try run(&relay, Fixtures.stream(Fixtures.chatStreamLines))
        #expect(relay.relayedOutputBytes == Fixtures.chatDeltaText.utf8.count)

        var tools = StreamRelay(api: .chatCompletions, clientWantsUsage: false)
        _ = tools.relay(
            chatEvent(
                #"{"choices":[{"index":0,"delta":{"refusal":"no"}},{"index":1,"delta":"#
                    + #"{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\""}},"#
                    + #"{"index":1,"function":{"arguments":":1}"}}]}}]}"#))
        _ = tools.relay(chatEvent(#"{"choices":[{"delta":{"content":null,"function_call":{"arguments":"xyz"}}}]}"#))
        #expect(tools.relayedOutputBytes == 2 + 4 + 3 + 3)
        #expect(tools.usage == nil)
        #expect(!tools.finished)
    }

    @Test("forwards a usage chunk that still has choices, and Azure's empty first chunk")
    func keepsChunksWithChoices() {
        var relay = StreamRelay(api: .chatCompletions, clientWantsUsage: false)
        let azureFirst = chatEvent(#"{"id":"","choices":[],"created":0,"model":"","prompt_filter_results":[]}"#)
        #expect(relay.relay(azureFirst) != nil)
        let combined = chatEvent(
            #"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"#
                + #""usage":{"prompt_tokens":1,"completion_tokens":2}}"#
        )
        #expect(relay.relay(combined) == SSEEvent(data: Self.data(of: combined)).encoded())
        #expect(relay.usage?.totalTokens == 3)
        #expect(relay.relay(chatEvent(#"{"choices":[],"usage":null}"#)) != nil)
    }

    @Test("flags an upstream error event and forwards it")
    func chatError() {
        var relay = StreamRelay(api: .chatCompletions, clientWantsUsage: false)
        let error = chatEvent(
            #"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#)
        #expect(relay.relay(error) != nil)
        #expect(relay.sawError)
        #expect(!relay.finished)
        #expect(relay.relay(chatEvent("[DONE]")) == Array("data: [DONE]\n\n".utf8))
        #expect(relay.finished)
    }

    @Test("forwards non-JSON chat data unchanged and ignores it")
    func chatNonJSON() {
        var relay = StreamRelay(api: .chatCompletions, clientWantsUsage: false)
        #expect(relay.relay(chatEvent("[DONE]x")) == Array("data: [DONE]x\n\n".utf8))
        #expect(relay.relay(chatEvent(#"{"usage":"#)) == Array("data: {\"usage\":\n\n".utf8))
        #expect(!relay.finished && relay.usage == nil && relay.eventsForwarded == 2)
    }

    @Test("forwards Responses events with their event lines and records terminal usage")
    func responsesStream() throws {
        var relay = StreamRelay(api: .responses, clientWantsUsage: true)
        let output = try run(&relay, Fixtures.stream(Fixtures.responsesStreamLines))
        let events = Fixtures.events(try Fixtures.items(of: output))
        let original = Fixtures.events(try Fixtures.items(of: Fixtures.stream(Fixtures.responsesStreamLines)))

        #expect(events == original)
        #expect(relay.eventsForwarded == 6)
        #expect(relay.usage == Usage(inputTokens: 13, cachedInputTokens: 2, outputTokens: 12, reasoningTokens: 3))
        #expect(relay.finished)
        #expect(relay.lastSequenceNumber == 5)
        #expect(relay.relayedOutputBytes == Fixtures.responsesDeltaText.utf8.count)
        #expect(!relay.sawError)
    }

    @Test(
        "finishes on each Responses terminal event, with usage when it is an object",
        arguments: [
            ("response.completed", #"{"input_tokens":3,"output_tokens":4,"total_tokens":7}"#, 7),
            ("response.incomplete", #"{"input_tokens":3,"output_tokens":9}"#, 12),
            ("response.failed", "null", nil),
        ] as [(String, String, Int?)]
    )
    func responsesTerminal(type: String, usage: String, total: Int?) {
        var relay = StreamRelay(api: .responses, clientWantsUsage: true)
        let event = SSEEvent(
            event: type, data: #"{"type":"\#(type)","sequence_number":8,"response":{"status":"x","usage":\#(usage)}}"#)
        #expect(relay.relay(.event(event)) == event.encoded())
        #expect(relay.finished)
        #expect(relay.usage?.totalTokens == total)
        #expect(relay.lastSequenceNumber == 8)
    }

    @Test("counts every Responses delta type and only those")
    func responsesDeltas() {
        var relay = StreamRelay(api: .responses, clientWantsUsage: true)
        let types = [
            "response.output_text.delta", "response.function_call_arguments.delta",
            "response.reasoning_summary_text.delta", "response.refusal.delta", "response.audio.delta",
            "response.output_text.done",
        ]
        for (number, type) in types.enumerated() {
            _ = relay.relay(
                .event(SSEEvent(event: type, data: #"{"type":"\#(type)","sequence_number":\#(number),"delta":"abc"}"#)))
        }
        #expect(relay.relayedOutputBytes == 4 * 3)
        #expect(relay.lastSequenceNumber == 5)
        #expect(!relay.finished)
    }

    @Test("flags Responses error events in both the nested and the flat form")
    func responsesErrors() {
        let nested = SSEEvent(
            event: "error",
            data:
                #"{"type":"error","sequence_number":2,"error":{"type":"insufficient_quota","#
                + #""code":"insufficient_quota","#
                + #""message":"You exceeded","param":null}}"#)
        let flat = SSEEvent(
            data: #"{"type":"error","code":"server_error","message":"x","param":null,"sequence_number":3}"#)
        for event in [nested, flat] {
            var relay = StreamRelay(api: .responses, clientWantsUsage: true)
            #expect(relay.relay(.event(event)) == event.encoded())
            #expect(relay.sawError)
            #expect(!relay.finished)
        }
    }

    @Test("tracks the highest sequence number and ends a broken stream after it")
    func responsesTerminalError() throws {
        var relay = StreamRelay(api: .responses, clientWantsUsage: true)
        #expect(relay.lastSequenceNumber == -1)
        for number in [0, 1, 7, 3] {
            _ = relay.relay(.event(SSEEvent(event: "x", data: #"{"type":"x","sequence_number":\#(number)}"#)))
        }
        _ = relay.relay(.event(SSEEvent(event: "x", data: #"{"type":"x","sequence_number":1e99}"#)))
        #expect(relay.lastSequenceNumber == 7)

        let bytes = relay.terminalError(.upstreamStreamBroken())
        let event = try #require(Fixtures.events(try Fixtures.items(of: bytes)).first)
        #expect(event.event == "error")
        #expect(try JSONValue(parsing: Array(event.data.utf8))["sequence_number"] == 8)
    }

    @Test("saturates the next sequence number instead of overflowing")
    func sequenceOverflow() throws {
        var relay = StreamRelay(api: .responses, clientWantsUsage: true)
        _ = relay.relay(.event(SSEEvent(data: #"{"type":"x","sequence_number":9223372036854775807}"#)))
        let event = Fixtures.events(try Fixtures.items(of: relay.terminalError(.internalError()))).first
        #expect(event.flatMap { try? JSONValue(parsing: Array($0.data.utf8))["sequence_number"]?.intValue } == Int.max)
    }

    @Test("ends a broken chat stream with a data-only error event and no [DONE]")
    func chatTerminalError() throws {
        let relay = StreamRelay(api: .chatCompletions, clientWantsUsage: false)
        let bytes = relay.terminalError(.upstreamStreamBroken())
        let items = try Fixtures.items(of: bytes)
        #expect(
            items == [
                .event(SSEEvent(data: String(decoding: OpenAIError.upstreamStreamBroken().body(), as: UTF8.self)))
            ])
    }

    @Test("forwards comments as keep-alives without counting them as events")
    func comments() {
        var relay = StreamRelay(api: .responses, clientWantsUsage: true)
        #expect(relay.relay(.comment("ping")) == Array(":ping\n\n".utf8))
        #expect(relay.relay(.comment("")) == Array(":\n\n".utf8))
        #expect(relay.eventsForwarded == 0)
    }

    private static func data(of item: SSEItem) -> String {
        if case .event(let event) = item { return event.data }
        return ""
    }
}
