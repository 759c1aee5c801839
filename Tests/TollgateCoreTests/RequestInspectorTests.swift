import Testing

@testable import TollgateCore

@Suite("Request inspection")
struct RequestInspectorTests {
    private func inspect(_ api: API, _ text: String) throws(OpenAIError) -> InspectedRequest {
        try RequestInspector.inspect(api: api, body: Array(text.utf8))
    }

    /// The error an inspection throws, or nil if it succeeds.
    private func failure(_ api: API, _ text: String) -> OpenAIError? {
        do {
            _ = try inspect(api, text)
            return nil
        } catch {
            return error
        }
    }

    private func upstreamText(_ request: InspectedRequest) -> String {
        String(decoding: request.upstreamBody, as: UTF8.self)
    }

    @Test("rejects bodies that are empty or not JSON with the invalid JSON error")
    func invalidJSON() {
        for body in ["", "   ", "{", #"{"model":"m",}"#, "model=gpt", "\u{FEFF}{}"] {
            let error = failure(.chatCompletions, body)
            #expect(error == OpenAIError.invalidJSON(), "body: \(body)")
            #expect(error?.status == 400)
            #expect(error?.message.hasPrefix("We could not parse the JSON body of your request.") == true)
            #expect(error?.param == nil && error?.code == nil)
        }
    }

    @Test("rejects JSON that is not an object")
    func notObject() {
        for body in ["[]", "null", #""model""#, "12"] {
            let error = failure(.responses, body)
            #expect(error?.status == 400)
            #expect(error?.type == "invalid_request_error")
            #expect(error?.message == "The request body must be a JSON object.")
        }
    }

    @Test(
        "reports each invalid parameter with its param and code",
        arguments: [
            (API.chatCompletions, #"{"messages":[]}"#, "model", "missing_required_parameter"),
            (.chatCompletions, #"{"model":null,"messages":[]}"#, "model", "missing_required_parameter"),
            (.responses, #"{"model":"","input":"x"}"#, "model", "missing_required_parameter"),
            (.responses, #"{"model":4,"input":"x"}"#, "model", "invalid_type"),
            (.chatCompletions, #"{"model":["m"],"messages":[]}"#, "model", "invalid_type"),
            (.chatCompletions, #"{"model":"m","messages":[],"stream":"true"}"#, "stream", "invalid_type"),
            (.responses, #"{"model":"m","stream":1}"#, "stream", "invalid_type"),
            (.chatCompletions, #"{"model":"m"}"#, "messages", "missing_required_parameter"),
            (.chatCompletions, #"{"model":"m","messages":{"role":"user"}}"#, "messages", "invalid_type"),
            (.chatCompletions, #"{"model":"m","messages":"hi"}"#, "messages", "invalid_type"),
            (.responses, #"{"model":"m","input":{"role":"user"}}"#, "input", "invalid_type"),
            (.responses, #"{"model":"m","input":3}"#, "input", "invalid_type"),
            (.chatCompletions, #"{"model":"m","messages":[],"max_tokens":-1}"#, "max_tokens", "invalid_value"),
            (.chatCompletions, #"{"model":"m","messages":[],"max_tokens":1.5}"#, "max_tokens", "invalid_value"),
            (
                .chatCompletions, #"{"model":"m","messages":[],"max_completion_tokens":"9"}"#,
                "max_completion_tokens", "invalid_value"
            ),
            (
                .chatCompletions, #"{"model":"m","messages":[],"max_completion_tokens":1e3}"#,
                "max_completion_tokens", "invalid_value"
            ),
            (
                .responses, #"{"model":"m","max_output_tokens":99999999999999999999}"#, "max_output_tokens",
                "invalid_value"
            ),
            (.responses, #"{"model":"m","max_output_tokens":true}"#, "max_output_tokens", "invalid_value"),
            (.chatCompletions, #"{"model":"m","model":"n","messages":[]}"#, "model", "duplicate_parameter"),
            (.responses, #"{"model":"m","stream":false,"stream":true}"#, "stream", "duplicate_parameter"),
            (
                .chatCompletions, #"{"model":"m","messages":[],"stream":true,"stream_options":1}"#, "stream_options",
                "invalid_type"
            ),
            (
                .chatCompletions, #"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage", "invalid_type"
            ),
        ] as [(API, String, String, String)]
    )
    func parameterErrors(api: API, body: String, param: String, code: String) {
        let error = failure(api, body)
        #expect(error?.status == 400, "body: \(body)")
        #expect(error?.type == "invalid_request_error")
        #expect(error?.param == param, "body: \(body)")
        #expect(error?.code == code, "body: \(body)")
        #expect(error?.message.contains("'\(param)'") == true)
    }

    @Test("accepts null where the upstream does and reads the basic fields")
    func basics() throws {
        let request = try inspect(
            .chatCompletions,
            #"{"model":"gpt-4o","messages":[{"role":"user","content":"abcd"}],"stream":null,"max_tokens":null}"#)
        #expect(request.api == .chatCompletions)
        #expect(request.model == "gpt-4o")
        #expect(request.stream == false)
        #expect(request.maxOutputTokens == nil)
        #expect(request.hostedTools.isEmpty)
        // "user" + "abcd" = 8 bytes → 2 tokens, plus 4 for the one message.
        #expect(request.estimatedInputTokens == 6)
        #expect(request.document.root["model"] == "gpt-4o")
    }

    @Test("injects include_usage into a chat stream without stream_options, keeping other bytes")
    func injectsWithoutOptions() throws {
        let body =
            "{ \"model\": \"m\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"caf\\u00e9\"}], \"stream\": true }"
        let request = try inspect(.chatCompletions, body)
        #expect(request.stream)
        #expect(request.clientWantsUsage == false)
        #expect(
            upstreamText(request)
                == "{ \"model\": \"m\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"caf\\u00e9\"}], "
                + "\"stream\": true "
                + #","stream_options":{"include_usage":true}}"#)
    }

    @Test("sets include_usage inside existing stream_options, keeping their other members")
    func injectsIntoOptions() throws {
        let request = try inspect(
            .chatCompletions,
            #"{"model":"m","stream_options": {"include_obfuscation":false} ,"messages":[],"stream":true}"#)
        #expect(request.clientWantsUsage == false)
        #expect(
            upstreamText(request)
                == #"{"model":"m","stream_options": {"include_obfuscation":false,"include_usage":true} ,"#
                + #""messages":[],"stream":true}"#)

        let explicitFalse = try inspect(
            .chatCompletions,
            #"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false,"x":1}}"#)
        #expect(explicitFalse.clientWantsUsage == false)
        #expect(upstreamText(explicitFalse).hasSuffix(#""stream_options":{"include_usage":true,"x":1}}"#))

        let nullOptions = try inspect(
            .chatCompletions, #"{"model":"m","messages":[],"stream":true,"stream_options":null}"#)
        #expect(
            upstreamText(nullOptions)
                == #"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#)
    }

    @Test("forwards the body unchanged when the client already asked for usage")
    func clientAskedForUsage() throws {
        let body = #"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#
        let request = try inspect(.chatCompletions, body)
        #expect(request.clientWantsUsage)
        #expect(request.upstreamBody == Array(body.utf8))
    }

    @Test("follows the last of duplicate include_usage members, as the upstream does")
    func duplicateIncludeUsage() throws {
        let request = try inspect(
            .chatCompletions,
            #"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"include_usage":false}}"#)
        #expect(request.clientWantsUsage == false)
        #expect(upstreamText(request).hasSuffix(#""stream_options":{"include_usage":true}}"#))
    }

    @Test("does not inject for non-stream chat or for Responses")
    func noInjection() throws {
        let chat = #"{"model":"m","messages":[],"stream":false}"#
        #expect(try inspect(.chatCompletions, chat).upstreamBody == Array(chat.utf8))

        let responses = #"{"model":"m","input":"hi","stream":true}"#
        let request = try inspect(.responses, responses)
        #expect(request.upstreamBody == Array(responses.utf8))
        #expect(request.stream)
        #expect(request.clientWantsUsage)
    }

    @Test("prefers max_completion_tokens over max_tokens for chat, and reads max_output_tokens for Responses")
    func outputCapPrecedence() throws {
        let both = try inspect(
            .chatCompletions, #"{"model":"m","messages":[],"max_tokens":50,"max_completion_tokens":70}"#)
        #expect(both.maxOutputTokens == 70)
        let legacy = try inspect(.chatCompletions, #"{"model":"m","messages":[],"max_tokens":50}"#)
        #expect(legacy.maxOutputTokens == 50)
        let nullCompletion = try inspect(
            .chatCompletions, #"{"model":"m","messages":[],"max_tokens":50,"max_completion_tokens":null}"#)
        #expect(nullCompletion.maxOutputTokens == 50)
        let responses = try inspect(.responses, #"{"model":"m","max_output_tokens":0,"max_tokens":9}"#)
        #expect(responses.maxOutputTokens == 0)
    }

    @Test("lists hosted tool types of Responses requests, not function or custom tools")
    func hostedTools() throws {
        let body = #"""
            {"model":"m","input":"x","tools":[{"type":"function","name":"f"},{"type":"web_search"},
             {"type":"custom","name":"c"},{"type":"code_interpreter","container":{"type":"auto"}},{"name":"no type"},
             {"type":"mcp","server_label":"s"}]}
            """#
        #expect(try inspect(.responses, body).hostedTools == ["web_search", "code_interpreter", "mcp"])
        let chat = #"{"model":"m","messages":[],"tools":[{"type":"web_search"}]}"#
        #expect(try inspect(.chatCompletions, chat).hostedTools.isEmpty)
    }

    @Test("accepts a Responses request without input")
    func responsesWithoutInput() throws {
        let request = try inspect(.responses, #"{"model":"m","previous_response_id":"resp_1","input":null}"#)
        #expect(request.model == "m")
        #expect(request.estimatedInputTokens == 0)
    }
}
