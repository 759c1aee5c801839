import Foundation
import Testing

@testable import TollgateCore

@Suite("OpenAI errors")
struct OpenAIErrorTests {
    /// Decodes bytes with Foundation, independently of TollgateCore's parser.
    private func object(_ bytes: some Sequence<UInt8>) throws -> [String: Any] {
        let decoded = try JSONSerialization.jsonObject(with: Data(bytes))
        return try #require(decoded as? [String: Any])
    }

    static let catalog: [(OpenAIError, Int, String, String?)] = [
        (.invalidJSON(), 400, "invalid_request_error", nil),
        (.invalidRequest("Bad \"thing\"\n", param: "p", code: "c"), 400, "invalid_request_error", "c"),
        (.notFound(method: "POST", path: "/v1/x"), 404, "invalid_request_error", nil),
        (
            .methodNotAllowed(method: "GET", path: "/v1/responses", allowed: "POST"), 405, "invalid_request_error",
            "method_not_allowed"
        ),
        (.upstreamUnreachable(), 502, "server_error", "upstream_unreachable"),
        (.upstreamTimeout(), 504, "server_error", "upstream_timeout"),
        (.upstreamInvalidResponse(), 502, "server_error", "upstream_invalid_response"),
        (.upstreamStreamBroken(), 502, "server_error", "upstream_stream_interrupted"),
        (.overloaded(), 503, "server_error", "overloaded"),
        (.internalError(), 500, "server_error", "internal_error"),
        (.bodyTooLarge(limit: 1024), 413, "invalid_request_error", "request_too_large"),
    ]

    @Test("builds each error with its status, type and code")
    func catalogEntries() {
        for (error, status, type, code) in Self.catalog {
            #expect(error.status == status, "\(error.message)")
            #expect(error.type == type, "\(error.message)")
            #expect(error.code == code, "\(error.message)")
            #expect(!error.message.isEmpty)
        }
        #expect(OpenAIError.notFound(method: "POST", path: "/v1/x").message == "Invalid URL (POST /v1/x)")
        #expect(
            OpenAIError.methodNotAllowed(method: "GET", path: "/v1/responses", allowed: "POST").headers.first?.1
                == "POST")
        #expect(OpenAIError.bodyTooLarge(limit: 1024).message.contains("1024"))
    }

    @Test("serializes bodies as {error:{message,type,param,code}} with nulls for absent fields")
    func bodies() throws {
        for (error, _, _, _) in Self.catalog {
            let root = try object(error.body())
            #expect(root.count == 1)
            let inner = try #require(root["error"] as? [String: Any])
            #expect(Set(inner.keys) == ["message", "type", "param", "code"])
            #expect(inner["message"] as? String == error.message)
            #expect(inner["type"] as? String == error.type)
            #expect((inner["param"] as? String) == error.param)
            #expect(error.param != nil || inner["param"] is NSNull)
            #expect(error.code != nil || inner["code"] is NSNull)
        }
        let body = String(decoding: OpenAIError.invalidRequest("m", param: nil, code: "c").body(), as: UTF8.self)
        #expect(body == #"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"c"}}"#)
    }

    @Test("writes a chat stream error as one data event of the error body")
    func chatEvent() throws {
        let error = OpenAIError.upstreamStreamBroken()
        let bytes = error.sseEvent(api: .chatCompletions, sequenceNumber: 9)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasPrefix("data: {") && text.hasSuffix("}\n\n"))
        #expect(!text.contains("event:"))

        let items = try Fixtures.items(of: bytes)
        let event = try #require(Fixtures.events(items).first)
        #expect(items.count == 1)
        #expect(event.data == String(decoding: error.body(), as: UTF8.self))
    }

    @Test("writes a Responses stream error as an error event with its sequence number")
    func responsesEvent() throws {
        let error = OpenAIError.invalidRequest("Bad", param: "input", code: nil)
        let bytes = error.sseEvent(api: .responses, sequenceNumber: 12)
        let events = Fixtures.events(try Fixtures.items(of: bytes))
        #expect(events.count == 1)
        #expect(events.first?.event == "error")

        let payload = try object(Array((events.first?.data ?? "").utf8))
        #expect(Set(payload.keys) == ["type", "sequence_number", "error"])
        #expect(payload["type"] as? String == "error")
        #expect(payload["sequence_number"] as? Int == 12)
        let inner = try #require(payload["error"] as? [String: Any])
        #expect(Set(inner.keys) == ["type", "code", "message", "param"])
        #expect(inner["message"] as? String == "Bad")
        #expect(inner["param"] as? String == "input")
        #expect(inner["code"] is NSNull)
    }

    @Test("compares headers pairwise")
    func equality() {
        let base = OpenAIError(status: 429, message: "m", type: "t", headers: [("x-should-retry", "false")])
        var other = base
        #expect(base == other)
        other.headers = [("x-should-retry", "true")]
        #expect(base != other)
        other.headers = []
        #expect(base != other)
    }
}
