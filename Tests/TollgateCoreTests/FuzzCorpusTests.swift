import TollgateCore

#if !TOLLGATE_FUZZER
    import Foundation
    import Testing
#endif

/// The invariants of the code that reads untrusted bytes, checked on one input at a time:
/// request bodies (JSON parser, `JSONDocument`, `RequestInspector`), upstream event streams
/// (`SSEParser`, `StreamRelay`) and usage objects (`UsageExtractor`).
///
/// This file is compiled twice. Here, `FuzzCorpusTests` replays every file of Tests/Fuzz/corpus/
/// through it. The Fuzz package compiles the same file into its libFuzzer targets
/// (Fuzz/Sources/FuzzSupport/FuzzCorpusTests.swift is a symbolic link to it, built with
/// TOLLGATE_FUZZER defined, which leaves the test suite out); they trap on the first violation.
/// Each check returns the invariants the input broke, as sentences (empty: it passed), and never
/// traps itself, so a trap while fuzzing is always TollgateCore's.
enum FuzzHarness {
    /// A fuzzer; the raw value names its corpus folder, Tests/Fuzz/corpus/<raw value>/.
    enum Target: String, CaseIterable, Sendable {
        /// Client request bodies.
        case request
        /// Upstream `text/event-stream` bytes.
        case sse
        /// Usage objects and the bodies around them.
        case usage
    }

    static let apis: [API] = [.chatCompletions, .responses]

    static func violations(of target: Target, in bytes: [UInt8]) -> [String] {
        switch target {
        case .request: return requestViolations(bytes)
        case .sse: return sseViolations(bytes)
        case .usage: return usageViolations(bytes)
        }
    }

    /// Counts are never negative, and the parts never exceed what they are part of.
    static func usageInvariantViolations(_ usage: Usage?, _ source: String) -> [String] {
        guard let usage else { return [] }
        var found: [String] = []
        let counts = [usage.inputTokens, usage.cachedInputTokens, usage.outputTokens, usage.reasoningTokens]
        if counts.contains(where: { $0 < 0 }) || usage.totalTokens < 0 { found.append("\(source): negative count") }
        if usage.cachedInputTokens > usage.inputTokens { found.append("\(source): cached > input tokens") }
        if usage.reasoningTokens > usage.outputTokens { found.append("\(source): reasoning > output tokens") }
        return found
    }

    static func parseJSON(_ bytes: [UInt8]) -> JSONValue? {
        try? JSONValue(parsing: bytes)
    }

    static func parseJSON(_ text: String) -> JSONValue? {
        try? JSONValue(parsing: Array(text.utf8))
    }
}

// MARK: - Request bodies

extension FuzzHarness {
    static func requestViolations(_ bytes: [UInt8]) -> [String] {
        var found: [String] = []
        var value: JSONValue?
        do throws(JSONError) {
            value = try JSONValue(parsing: bytes)
        } catch {
            if !(0...bytes.count).contains(error.offset) { found.append("JSON error offset outside the input") }
        }

        if let value { found += roundTripViolations(value) }
        found += documentViolations(bytes, value: value)
        for api in apis { found += inspectionViolations(bytes, api: api) }
        return found
    }

    /// parse → serialize → parse gives the same value, and serializing again the same bytes.
    static func roundTripViolations(_ value: JSONValue) -> [String] {
        let once = value.serialized()
        guard let again = parseJSON(once) else { return ["serialized JSON does not parse again"] }
        var found: [String] = []
        if again != value { found.append("parse → serialize → parse changed the value") }
        if again.serialized() != once { found.append("serializing the reparsed value gave other bytes") }
        return found
    }

    static func documentViolations(_ bytes: [UInt8], value: JSONValue?) -> [String] {
        let document = try? JSONDocument(bytes: bytes)
        guard let document, let value else {
            return (document == nil) == (value == nil) ? [] : ["JSONDocument and JSONValue disagree on validity"]
        }
        if document.root != value { return ["JSONDocument parsed another root than JSONValue"] }
        guard let members = value.objectMembers else {
            return document.replacingMember("model", with: .null) == bytes
                ? [] : ["replacingMember changed a body whose root is not an object"]
        }

        var found = valueRangeViolations(document, members: members)
        let replacements: [(String, JSONValue)] = [
            (members.first?.key ?? "model", .string("replaced")),
            ("stream_options", .object([JSONMember("include_usage", .bool(true))])),
            ("fuzz \"key\"\u{1}é", members.last?.value ?? .null),
        ]
        for (key, replacement) in replacements {
            found += replacementViolations(document, key: key, with: replacement)
        }
        return found
    }

    /// The recorded range of each member's value holds exactly that value.
    static func valueRangeViolations(_ document: JSONDocument, members: [JSONMember]) -> [String] {
        for member in members.prefix(16) {
            guard let range = document.valueRange(ofMember: member.key),
                range.lowerBound >= 0, range.upperBound <= document.bytes.count
            else { return ["no valid value range for member \(member.key.debugDescription)"] }
            let first = document.root[member.key]
            if parseJSON(Array(document.bytes[range])) != first {
                return ["value range of member \(member.key.debugDescription) holds another value"]
            }
        }
        return []
    }

    /// The output parses, has the member set (first occurrence replaced, else appended), and
    /// every byte outside the spliced value is the client's.
    static func replacementViolations(_ document: JSONDocument, key: String, with value: JSONValue) -> [String] {
        let output = document.replacingMember(key, with: value)
        var expected = document.root
        expected.setMember(key, to: value)
        guard parseJSON(output) == expected else {
            return ["replacingMember(\(key.debugDescription)) output is not the body with that member set"]
        }

        let bytes = document.bytes
        let (head, tail): (Int, Int)
        if let range = document.valueRange(ofMember: key) {
            (head, tail) = (range.lowerBound, bytes.count - range.upperBound)
        } else {
            let closing = bytes.lastIndex(of: UInt8(ascii: "}")) ?? 0
            (head, tail) = (closing, bytes.count - closing)
        }
        let kept =
            output.count >= head + tail && output.prefix(head).elementsEqual(bytes.prefix(head))
            && output.suffix(tail).elementsEqual(bytes.suffix(tail))
        return kept ? [] : ["replacingMember(\(key.debugDescription)) changed bytes outside the member"]
    }

    static func inspectionViolations(_ bytes: [UInt8], api: API) -> [String] {
        do throws(OpenAIError) {
            let request = try RequestInspector.inspect(api: api, body: bytes)
            return acceptedViolations(request, body: bytes, api: api)
        } catch {
            return errorViolations(error, "\(api.rawValue) inspection")
        }
    }

    /// Inspection errors are 400 invalid_request_error, with a JSON body in the OpenAI shape.
    static func errorViolations(_ error: OpenAIError, _ source: String) -> [String] {
        var found: [String] = []
        if error.status != 400 || error.type != "invalid_request_error" {
            found.append("\(source): error \(error.status) \(error.type), not 400 invalid_request_error")
        }
        if error.message.isEmpty || error.param == "" || error.code == "" {
            found.append("\(source): empty message, param or code")
        }
        if parseJSON(error.body())?["error"]?["message"]?.stringValue != error.message {
            found.append("\(source): the error body is not {\"error\":{\"message\":…}}")
        }
        return found
    }

    static func acceptedViolations(_ request: InspectedRequest, body: [UInt8], api: API) -> [String] {
        let source = "\(api.rawValue) inspection"
        guard let root = parseJSON(body), let members = root.objectMembers else {
            return ["\(source) accepted a body that is not a JSON object"]
        }
        var found: [String] = []
        if Set(members.map(\.key)).count != members.count { found.append("\(source) accepted duplicate members") }
        if request.model.isEmpty || root["model"]?.stringValue != request.model { found.append("\(source): model") }
        if request.stream != (root["stream"]?.boolValue ?? false) { found.append("\(source): stream flag") }
        if (request.maxOutputTokens ?? 0) < 0 || request.estimatedInputTokens < 0 {
            found.append("\(source): negative output cap or input estimate")
        }
        if api == .chatCompletions, !request.hostedTools.isEmpty { found.append("\(source): hosted tools on chat") }
        if api == .responses, !request.clientWantsUsage { found.append("\(source): responses always report usage") }

        if api == .chatCompletions, request.stream {
            found += injectionViolations(original: root, upstreamBody: request.upstreamBody)
        } else if request.upstreamBody != body {
            found.append("\(source) rewrote a body it must forward unchanged")
        }
        return found
    }

    /// A chat stream's upstream body: stream_options has exactly one include_usage, true, and
    /// every other member (top level and inside stream_options) is the client's.
    static func injectionViolations(original: JSONValue, upstreamBody: [UInt8]) -> [String] {
        guard let upstream = parseJSON(upstreamBody) else { return ["chat stream upstream body is not JSON"] }
        let flags = upstream["stream_options"]?.objectMembers?.filter { $0.key == "include_usage" }
        if flags?.map(\.value) != [.bool(true)] {
            return ["chat stream upstream body lacks exactly one include_usage: true"]
        }

        var upstreamRest = upstream
        var originalRest = original
        upstreamRest.removeMembers(named: "stream_options")
        originalRest.removeMembers(named: "stream_options")
        if upstreamRest != originalRest || otherOptions(upstream) != otherOptions(original) {
            return ["usage injection changed members other than stream_options.include_usage"]
        }
        return []
    }

    /// The members of stream_options other than include_usage (none when absent or null).
    static func otherOptions(_ body: JSONValue) -> [JSONMember] {
        (body["stream_options"]?.objectMembers ?? []).filter { $0.key != "include_usage" }
    }
}

// MARK: - Upstream event streams

extension FuzzHarness {
    /// What a parser made of a whole stream: its items, or a failure.
    enum SSEOutcome: Equatable {
        case items([SSEItem])
        case failed
    }

    static func sseViolations(_ bytes: [UInt8]) -> [String] {
        var found: [String] = []
        // The default limit, and a small one that makes eventTooLarge reachable by small inputs.
        for limit in [8 << 20, 64] {
            let whole = parseSSE(bytes, limit: limit, cuts: [])
            for cuts in splitPlans(bytes) where parseSSE(bytes, limit: limit, cuts: cuts) != whole {
                found.append("SSE items differ when the stream is split at \(cuts.prefix(8)) (limit \(limit))")
                break
            }
            guard limit == 8 << 20, case .items(let items) = whole else { continue }
            found += reencodingViolations(items)
            for api in apis {
                found += relayViolations(items, api: api, clientWantsUsage: true)
                found += relayViolations(items, api: api, clientWantsUsage: false)
            }
        }
        return found
    }

    /// Feeds `bytes` in chunks ending at `cuts` (ascending), then finishes.
    static func parseSSE(_ bytes: [UInt8], limit: Int, cuts: [Int]) -> SSEOutcome {
        var parser = SSEParser(maxEventBytes: limit)
        var items: [SSEItem] = []
        var start = 0
        for end in cuts + [bytes.count] where end >= start && end <= bytes.count {
            do {
                items += try parser.feed(Array(bytes[start..<end]))
            } catch {
                return .failed
            }
            start = end
        }
        return .items(items + parser.finish())
    }

    /// Ways to cut the stream: byte by byte (short inputs), after every CR (splits CRLF pairs),
    /// and a few single cuts, including an empty first chunk.
    static func splitPlans(_ bytes: [UInt8]) -> [[Int]] {
        let count = bytes.count
        var plans: [[Int]] = [[0], [count / 2], [count / 3, 2 * count / 3], [1, count - 1]]
        plans.append(bytes.indices.filter { bytes[$0] == 0x0D }.map { $0 + 1 })
        if count <= 256 { plans.append(Array(0...count)) }
        return plans.map { $0.filter { (0...count).contains($0) } }
    }

    /// A parsed event written out again parses back to the same event.
    static func reencodingViolations(_ items: [SSEItem]) -> [String] {
        for case .event(let event) in items {
            if parseSSE(event.encoded(), limit: 8 << 20, cuts: []) != .items([.event(event)]) {
                return ["a parsed SSE event does not survive encoded() and a second parse"]
            }
        }
        return []
    }

    static func relayViolations(_ items: [SSEItem], api: API, clientWantsUsage: Bool) -> [String] {
        let source = "\(api.rawValue) relay (client usage \(clientWantsUsage))"
        var relay = StreamRelay(api: api, clientWantsUsage: clientWantsUsage)
        var found: [String] = []
        var forwarded = 0
        for item in items {
            let output = relay.relay(item)
            switch item {
            case .comment(let text):
                if !commentSurvives(text, as: output) { found.append("\(source) garbled a comment") }
            case .event(let event):
                if let output {
                    forwarded += 1
                    if output != event.encoded() { found.append("\(source) rewrote an event") }
                } else if api == .responses || clientWantsUsage {
                    found.append("\(source) dropped an event it must forward")
                }
            }
        }

        if relay.eventsForwarded != forwarded { found.append("\(source): eventsForwarded miscounted") }
        if relay.relayedOutputBytes < 0 || relay.lastSequenceNumber < -1 { found.append("\(source): counters") }
        let sawDone = items.contains { item in
            guard case .event(let event) = item else { return false }
            return event.data == "[DONE]"
        }
        if api == .chatCompletions, relay.finished != sawDone { found.append("\(source): finished ≠ saw [DONE]") }
        found += usageInvariantViolations(relay.usage, source)
        return found + terminalErrorViolations(relay, source)
    }

    /// A relayed comment parses back to the same comment (one leading space may go: the relay
    /// writes ":" + text, and a parser drops one space after the colon).
    static func commentSurvives(_ text: String, as output: [UInt8]?) -> Bool {
        guard let output, case .items(let items) = parseSSE(output, limit: 8 << 20, cuts: []),
            items.count == 1, case .comment(let reparsed) = items[0]
        else { return false }
        return reparsed == text || (text.first == " " && reparsed == String(text.dropFirst()))
    }

    /// The error event that ends a broken stream is one event in the API's form.
    static func terminalErrorViolations(_ relay: StreamRelay, _ source: String) -> [String] {
        let bytes = relay.terminalError(OpenAIError.upstreamStreamBroken())
        guard case .items(let items) = parseSSE(bytes, limit: 8 << 20, cuts: []), items.count == 1,
            case .event(let event) = items[0], let payload = parseJSON(event.data),
            payload["error"]?.objectMembers != nil
        else { return ["\(source): the terminal error is not one SSE event with an error object"] }

        guard relay.api == .responses else { return event.event == nil ? [] : ["\(source): named chat error event"] }
        let next = relay.lastSequenceNumber == Int.max ? Int.max : relay.lastSequenceNumber + 1
        if event.event != "error" || payload["sequence_number"]?.intValue != next {
            return ["\(source): the terminal error event is not `error` with the next sequence number"]
        }
        return []
    }
}

// MARK: - Usage

extension FuzzHarness {
    static func usageViolations(_ bytes: [UInt8]) -> [String] {
        var found: [String] = []
        for api in apis {
            found += usageInvariantViolations(UsageExtractor.usage(ofResponseBody: bytes, api: api), "body")
        }
        guard let root = parseJSON(bytes) else { return found }

        var candidates = [root]
        candidates += root.objectMembers?.map(\.value) ?? root.arrayValue ?? []
        for candidate in candidates.prefix(32) {
            let chat = UsageExtractor.chatUsage(candidate)
            let responses = UsageExtractor.responsesUsage(candidate)
            found += usageInvariantViolations(chat, "chat usage") + usageInvariantViolations(responses, "usage")
            if (chat == nil) != (candidate.objectMembers == nil) { found.append("chatUsage nil iff not an object") }
        }
        let bodyUsage = UsageExtractor.usage(ofResponseBody: bytes, api: .chatCompletions)
        if bodyUsage != root["usage"].flatMap(UsageExtractor.chatUsage) {
            found.append("usage(ofResponseBody:) disagrees with chatUsage of the usage member")
        }
        return found + relayedUsageViolations(root)
    }

    /// `root` as the usage of a chat usage chunk and of a Responses terminal event: the relay
    /// records what the extractor reads, and drops the chunk the client did not ask for.
    static func relayedUsageViolations(_ root: JSONValue) -> [String] {
        let usage = String(decoding: root.serialized(), as: UTF8.self)
        var found: [String] = []

        var chat = StreamRelay(api: .chatCompletions, clientWantsUsage: false)
        let chunk = #"{"id":"chatcmpl-f","object":"chat.completion.chunk","choices":[],"usage":"# + usage + "}"
        let chatOutput = chat.relay(.event(SSEEvent(data: chunk)))
        if chat.usage != UsageExtractor.chatUsage(root) { found.append("chat relay recorded other usage") }
        if (chatOutput == nil) != (chat.usage != nil) { found.append("chat relay kept or dropped the wrong chunk") }

        var responses = StreamRelay(api: .responses, clientWantsUsage: true)
        let completed = #"{"type":"response.completed","sequence_number":7,"response":{"usage":"# + usage + "}}"
        _ = responses.relay(.event(SSEEvent(event: "response.completed", data: completed)))
        if responses.usage != UsageExtractor.responsesUsage(root) { found.append("responses relay: other usage") }
        if !responses.finished || responses.lastSequenceNumber != 7 { found.append("responses relay missed the end") }
        return found
    }
}

#if !TOLLGATE_FUZZER
    @Suite("Fuzz corpus replay")
    struct FuzzCorpusTests {
        /// Tests/Fuzz/corpus/, found from this file's path.
        static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fuzz").appendingPathComponent("corpus")

        static func inputs(of target: FuzzHarness.Target) throws -> [URL] {
            let folder = corpus.appendingPathComponent(target.rawValue)
            let names = try FileManager.default.contentsOfDirectory(atPath: folder.path)
            return names.filter { !$0.hasPrefix(".") }.sorted().map { folder.appendingPathComponent($0) }
        }

        @Test("every corpus input keeps the invariants of its fuzzer", arguments: FuzzHarness.Target.allCases)
        func replaysCorpus(target: FuzzHarness.Target) throws {
            let inputs = try Self.inputs(of: target)

            #expect(inputs.count >= 5, "Tests/Fuzz/corpus/\(target.rawValue)/ holds only \(inputs.count) inputs")
            for input in inputs {
                let violations = FuzzHarness.violations(of: target, in: Array(try Data(contentsOf: input)))
                #expect(violations.isEmpty, "\(target.rawValue)/\(input.lastPathComponent): \(violations)")
            }
        }

        @Test("the usage check catches negative counts and parts larger than their whole")
        func usageCheckCanFail() {
            #expect(FuzzHarness.usageInvariantViolations(Usage(inputTokens: 3), "ok").isEmpty)
            #expect(!FuzzHarness.usageInvariantViolations(Usage(inputTokens: 1, cachedInputTokens: 2), "x").isEmpty)
            #expect(!FuzzHarness.usageInvariantViolations(Usage(outputTokens: 1, reasoningTokens: 2), "x").isEmpty)
            #expect(!FuzzHarness.usageInvariantViolations(Usage(inputTokens: -1), "x").isEmpty)
        }

        @Test("the error check rejects a non-400 error and accepts the parser's own")
        func errorCheckCanFail() {
            #expect(!FuzzHarness.errorViolations(OpenAIError.internalError(), "x").isEmpty)
            #expect(FuzzHarness.errorViolations(OpenAIError.invalidJSON(), "x").isEmpty)
        }

        @Test("split plans cut inside CRLF pairs, and the small limit fails an oversized event")
        func splitPlansReachTheEdges() {
            let bytes = Array("data: a\r\n\r\ndata: b\n\n".utf8)
            let whole = FuzzHarness.parseSSE(bytes, limit: 8 << 20, cuts: [])
            let plans = FuzzHarness.splitPlans(bytes)

            #expect(whole == .items([.event(SSEEvent(data: "a")), .event(SSEEvent(data: "b"))]))
            #expect(plans.contains { $0.contains(8) }, "no plan cuts between the CR and the LF")
            #expect(FuzzHarness.parseSSE(bytes, limit: 4, cuts: []) == .failed)
        }
    }
#endif
