import Testing
import TollgateCore

@testable import TollgateProxy

@Suite("Policy: models, output cap, hosted tools")
struct PolicyTests {
    static func inspect(_ body: String, api: API = .chatCompletions) throws -> InspectedRequest {
        try RequestInspector.inspect(api: api, body: Array(body.utf8))
    }

    @Test(
        "model patterns match with * as a wildcard",
        arguments: [
            ("gpt-4o*", "gpt-4o-mini", true), ("gpt-4o*", "gpt-4.1", false), ("*-mini", "o4-mini", true),
            ("o3", "o3", true), ("o3", "o3-pro", false), ("gpt-*-mini", "gpt-4o-mini", true),
            ("gpt-*-mini", "gpt-4o-nano", false), ("*", "anything", true),
        ])
    func patterns(pattern: String, model: String, matches: Bool) {
        #expect(ModelPattern(pattern).matches(model) == matches)
    }

    @Test("a model outside the allowlist is refused with 404 model_not_found")
    func allowlist() throws {
        let policy = Policy(allowedModels: [ModelPattern("gpt-4o*")])
        let refused = policy.apply(to: try Self.inspect(#"{"model":"o3","messages":[]}"#))
        guard case .failure(let error) = refused else {
            Issue.record("o3 was let through")
            return
        }
        #expect(error.status == 404)
        #expect(error.code == "model_not_found")
        guard case .success = policy.apply(to: try Self.inspect(#"{"model":"gpt-4o-mini","messages":[]}"#)) else {
            Issue.record("gpt-4o-mini was refused")
            return
        }
    }

    @Test("a request over the cap is clamped in place, keeping every other byte")
    func clamps() throws {
        let body = #"{"model":"m", "max_tokens": 999999 ,"messages":[]}"#
        let decision = try Policy(maxOutputTokens: 1000).apply(to: Self.inspect(body)).get()
        #expect(String(decoding: decision.body, as: UTF8.self) == #"{"model":"m", "max_tokens": 1000 ,"messages":[]}"#)
        #expect(decision.outputTokens == 1000)
    }

    @Test("a request naming no limit gets the cap written in, so its reservation bounds it")
    func injectsCap() throws {
        let decision = try Policy(maxOutputTokens: 500).apply(
            to: Self.inspect(#"{"model":"m","input":"Hi"}"#, api: .responses)
        )
        .get()
        let forwarded = try JSONValue(parsing: decision.body)
        #expect(forwarded["max_output_tokens"]?.intValue == 500)
        #expect(forwarded["input"]?.stringValue == "Hi")
    }

    @Test("a request within the cap is forwarded untouched and reserves what it asked")
    func withinCap() throws {
        let body = #"{"model":"m","max_completion_tokens":20,"messages":[]}"#
        let decision = try Policy(maxOutputTokens: 1000).apply(to: Self.inspect(body)).get()
        #expect(decision.body == Array(body.utf8))
        #expect(decision.outputTokens == 20)
    }

    @Test("with reject configured, a request over the cap gets a 400 naming the field")
    func rejectsOverCap() throws {
        let policy = Policy(maxOutputTokens: 10, overCapAction: .reject)
        guard
            case .failure(let error) = policy.apply(
                to: try Self.inspect(#"{"model":"m","max_tokens":11,"messages":[]}"#))
        else {
            Issue.record("over-cap request was let through")
            return
        }
        #expect(error.status == 400)
    }

    @Test("Responses requests with hosted tools are refused unless allowed; function tools pass")
    func hostedTools() throws {
        let search = try Self.inspect(#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#, api: .responses)
        let function = try Self.inspect(
            #"{"model":"m","input":"x","tools":[{"type":"function","name":"f","parameters":{}}]}"#, api: .responses)
        guard case .failure(let error) = Policy().apply(to: search) else {
            Issue.record("web_search was let through")
            return
        }
        #expect(error.param == "tools")
        #expect((try? Policy(refusesHostedTools: false).apply(to: search).get()) != nil)
        #expect((try? Policy().apply(to: function).get()) != nil)
    }

    @Test("the model list keeps only allowed models")
    func filtersModels() throws {
        let list = try JSONValue(parsing: Array(#"{"object":"list","data":[{"id":"gpt-4o"},{"id":"o3"}]}"#.utf8))
        let filtered = Policy(allowedModels: [ModelPattern("gpt-*")]).filterModelList(list)
        #expect(filtered?["data"]?.arrayValue?.compactMap { $0["id"]?.stringValue } == ["gpt-4o"])
    }
}
