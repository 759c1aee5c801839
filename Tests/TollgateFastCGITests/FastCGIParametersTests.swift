import Testing

@testable import TollgateFastCGI

@Suite("FastCGI parameters and requests")
struct FastCGIParametersTests {
    @Test("short and long names and values round-trip; a later duplicate wins")
    func roundTrip() throws {
        let long = String(repeating: "x", count: 300)
        let pairs = [("A", "1"), (long, "v"), ("B", long), ("A", "2"), ("EMPTY", "")]
        let decoded = try FastCGIParameters.decode(FastCGIParameters.encode(pairs))
        #expect(decoded == ["A": "2", long: "v", "B": long, "EMPTY": ""])
    }

    @Test("truncated lengths or contents are malformed, never read past the end")
    func malformed() {
        let good = FastCGIParameters.encode([("NAME", String(repeating: "v", count: 200))])
        for cut in 1..<good.count {
            #expect(throws: FastCGIParameters.Malformed.self) { try FastCGIParameters.decode(Array(good[..<cut])) }
        }
        #expect(throws: FastCGIParameters.Malformed.self) { try FastCGIParameters.decode([0x80, 0, 0]) }
        #expect(throws: FastCGIParameters.Malformed.self) { try FastCGIParameters.decode([0xFF, 0xFF, 0xFF, 0xFF, 0]) }
    }

    @Test("a request maps its CGI variables: method, path and query apart, headers by their HTTP names")
    func proxyRequest() {
        var incoming = FastCGIIncomingRequest(id: 1, keepConnection: true)
        incoming.parameters = [
            "REQUEST_METHOD": "POST", "REQUEST_URI": "/v1/chat/completions?x=1&y=%20", "QUERY_STRING": "x=1&y=%20",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "2", "HTTP_AUTHORIZATION": "Bearer tg-1",
            "HTTP_OPENAI_BETA": "assistants=v2", "HTTP_X_STAINLESS_LANG": "python", "SERVER_NAME": "ignored",
        ]
        incoming.body = Array("{}".utf8)

        let request = incoming.proxyRequest(id: "req-1")

        #expect(request.method == "POST")
        #expect(request.path == "/v1/chat/completions")
        #expect(request.query == "x=1&y=%20")
        #expect(request.headers["authorization"] == "Bearer tg-1")
        #expect(request.headers["openai-beta"] == "assistants=v2")
        #expect(request.headers["x-stainless-lang"] == "python")
        #expect(request.headers["content-type"] == "application/json")
        #expect(request.headers.count == 4)
        #expect(request.body == Array("{}".utf8))
        #expect(incoming.announcedLength == 2)
    }
}
