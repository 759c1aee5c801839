import Testing
import TollgateCore
import TollgateProxy

@testable import TollgateStore

@Suite("Reading the caller from request headers")
struct CallerTests {
    static let key = "tg-" + String(repeating: "a1b2c3d4e5", count: 4)

    private func identify(_ headers: [String: String], mode: AuthMode = .bearer) -> Result<Caller, OpenAIError> {
        let request = ProxyRequest(id: "r", method: "POST", path: "/v1/chat/completions", headers: headers)
        return Caller.identify(request, mode: mode, userHeader: "x-tollgate-user")
    }

    @Test("a bearer key becomes its SHA-256, whatever the scheme's case and spacing")
    func bearerKey() throws {
        for value in ["Bearer \(Self.key)", "bearer \(Self.key)", "BEARER   \(Self.key)  "] {
            #expect(try identify(["authorization": value]).get() == .keyHash(SHA256.hash(Self.key)))
        }
    }

    @Test("no Authorization header, or not Bearer, is a missing key")
    func missingKey() {
        for headers in [
            [:], ["authorization": ""], ["authorization": "Basic dXNlcjpwYXNz"], ["authorization": "Bearer"],
        ] {
            let error = identify(headers).failure
            #expect(error?.status == 401)
            #expect(error?.code == "invalid_api_key")
            #expect(error?.message.contains("didn't provide an API key") == true)
        }
    }

    @Test(
        "a token that is not a Tollgate key is refused and never quoted",
        arguments: [
            "sk-" + String(repeating: "a", count: 40), "tg-" + String(repeating: "a", count: 39),
            "tg-" + String(repeating: "a", count: 41), "tg-" + String(repeating: "A", count: 40),
            "tg-" + String(repeating: "a", count: 39) + "é", "tg-" + String(repeating: "a", count: 39) + "_",
        ])
    func malformedKey(token: String) {
        let error = identify(["authorization": "Bearer \(token)"]).failure
        #expect(error?.status == 401)
        #expect(error?.type == "invalid_request_error")
        #expect(error?.code == "invalid_api_key")
        #expect(error?.message.contains(token) == false)
        #expect(String(decoding: error?.body() ?? [], as: UTF8.self).contains(token) == false)
    }

    @Test("header mode takes the trimmed user name from the identity header")
    func headerMode() throws {
        #expect(try identify(["x-tollgate-user": "  alice "], mode: .header).get() == .userName("alice"))
        // The bearer header plays no part in header mode.
        #expect(
            try identify(["x-tollgate-user": "bob", "authorization": "Bearer junk"], mode: .header).get()
                == .userName("bob"))
    }

    @Test("header mode refuses a missing, empty, overlong or control-laden identity")
    func headerModeRefusals() {
        let names = ["", "   ", String(repeating: "n", count: 201), "eve\u{1}"]
        #expect(identify([:], mode: .header).failure?.status == 401)
        for name in names {
            let error = identify(["x-tollgate-user": name], mode: .header).failure
            #expect(error?.status == 401)
            #expect(error?.code == "invalid_api_key")
        }
    }

    @Test("the database parameters carry a bytea hash or a name, never both")
    func parameters() {
        let hash = SHA256.hash(Self.key)
        let bearer = Caller.keyHash(hash).parameters
        #expect(bearer.keyHash == "\\x" + SHA256.hex(hash))
        #expect(bearer.userName == nil)
        let named = Caller.userName("alice").parameters
        #expect(named.keyHash == nil)
        #expect(named.userName == "alice")
    }
}

extension Result {
    var failure: Failure? {
        guard case .failure(let error) = self else { return nil }
        return error
    }
}
