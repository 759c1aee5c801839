/// The decisions for one streamed response, as a value-type state machine: the owner parses the
/// upstream's SSE bytes, feeds each item to `relay(_:)`, and writes what it returns to the
/// client. No I/O happens here.
///
/// Chat: `data: [DONE]` is forwarded and sets `finished`. A chunk with a `usage` object records
/// it; when the client did not ask for usage, the injected usage chunk (empty `choices`) is
/// dropped, and any other chunk is forwarded. Delta text (content, refusal, tool-call and
/// function-call arguments) is counted in `relayedOutputBytes`; `{"error":…}` sets `sawError`.
///
/// Responses: every event is forwarded with its `event:` line. `response.completed`,
/// `.incomplete` and `.failed` record `response.usage` and set `finished`; text, argument,
/// reasoning-summary and refusal deltas are counted; `error` sets `sawError`; the highest
/// `sequence_number` is tracked.
///
/// Comments are forwarded as ":" + text + "\n\n" (keep-alives). Events whose data is not JSON
/// (other than [DONE]) are forwarded unchanged and otherwise ignored.
public struct StreamRelay: Sendable {
    public let api: API
    public let clientWantsUsage: Bool
    /// The last usage the upstream reported, in tokens.
    public private(set) var usage: Usage?
    /// A terminal event ([DONE], or a Responses terminal event) was seen.
    public private(set) var finished = false
    /// The upstream sent an error event.
    public private(set) var sawError = false
    /// UTF-8 bytes of generated text relayed to the client (for estimates when usage is lost).
    public private(set) var relayedOutputBytes = 0
    /// Highest Responses `sequence_number` seen; -1 before any.
    public private(set) var lastSequenceNumber = -1
    /// Events returned for writing (comments not included).
    public private(set) var eventsForwarded = 0

    public init(api: API, clientWantsUsage: Bool) {
        self.api = api
        self.clientWantsUsage = clientWantsUsage
    }

    /// Bytes to send to the client for this item (SSE-encoded, LF line endings, ending with a
    /// blank line), or nil to drop it.
    public mutating func relay(_ item: SSEItem) -> [UInt8]? {
        switch item {
        case .comment(let text):
            var bytes: [UInt8] = [UInt8(ascii: ":")]
            bytes.append(contentsOf: text.utf8)
            bytes.append(contentsOf: [0x0A, 0x0A])
            return bytes
        case .event(let event):
            let forwards = api == .chatCompletions ? inspectChatEvent(event) : inspectResponsesEvent(event)
            guard forwards else { return nil }
            eventsForwarded += 1
            return event.encoded()
        }
    }

    /// The SSE error event that ends a broken stream in this API's own form (Responses: with
    /// sequence number `lastSequenceNumber + 1`). Nothing follows it; chat gets no [DONE].
    public func terminalError(_ error: OpenAIError) -> [UInt8] {
        let next = lastSequenceNumber == Int.max ? Int.max : lastSequenceNumber + 1
        return error.sseEvent(api: api, sequenceNumber: api == .responses ? next : 0)
    }

    /// Records what a chat chunk carries; false when it is the injected usage chunk to drop.
    private mutating func inspectChatEvent(_ event: SSEEvent) -> Bool {
        if event.data == "[DONE]" {
            finished = true
            return true
        }
        guard let chunk = JSONValue(parsingText: event.data), chunk.objectMembers != nil else { return true }

        if let error = chunk["error"], !error.isNull { sawError = true }
        countChatDeltas(chunk["choices"])
        guard let reported = chunk["usage"].flatMap(UsageExtractor.chatUsage) else { return true }
        usage = reported
        return clientWantsUsage || chunk["choices"]?.arrayValue?.isEmpty != true
    }

    private mutating func countChatDeltas(_ choices: JSONValue?) {
        for choice in choices?.arrayValue ?? [] {
            guard let delta = choice["delta"] else { continue }
            countText(delta["content"])
            countText(delta["refusal"])
            countText(delta["function_call"]?["arguments"])
            for call in delta["tool_calls"]?.arrayValue ?? [] {
                countText(call["function"]?["arguments"])
            }
        }
    }

    /// Records what a Responses event carries; such events are always forwarded.
    private mutating func inspectResponsesEvent(_ event: SSEEvent) -> Bool {
        if event.event == "error" { sawError = true }
        guard let payload = JSONValue(parsingText: event.data), payload.objectMembers != nil else { return true }

        if let sequence = payload["sequence_number"]?.intValue {
            lastSequenceNumber = max(lastSequenceNumber, sequence)
        }
        switch payload["type"]?.stringValue ?? event.event {
        case "response.completed", "response.incomplete", "response.failed":
            if let reported = payload["response"]?["usage"].flatMap(UsageExtractor.responsesUsage) {
                usage = reported
            }
            finished = true
        case "response.output_text.delta", "response.function_call_arguments.delta",
            "response.reasoning_summary_text.delta", "response.refusal.delta":
            countText(payload["delta"])
        case "error":
            sawError = true
        default:
            break
        }
        return true
    }

    private mutating func countText(_ value: JSONValue?) {
        guard let text = value?.stringValue else { return }
        relayedOutputBytes = Usage.saturatingSum(relayedOutputBytes, text.utf8.count)
    }
}
