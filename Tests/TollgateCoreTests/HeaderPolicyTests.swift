import Testing

@testable import TollgateCore

@Suite("Header policy")
struct HeaderPolicyTests {
    @Test(
        "passes the headers SDKs read",
        arguments: [
            "x-request-id", "openai-processing-ms", "openai-version", "openai-organization", "openai-project",
            "x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "retry-after",
            "retry-after-ms", "x-should-retry", "content-type",
        ]
    )
    func passes(name: String) {
        #expect(HeaderPolicy.passesToClient(name))
    }

    @Test(
        "drops hop-by-hop, framing, cookies and everything else",
        arguments: [
            "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate",
            "proxy-connection", "content-length", "content-encoding", "set-cookie", "server", "date",
            "x-ratelimit-", "X-Request-ID", "authorization", "cf-ray", "access-control-allow-origin",
            "apim-request-id", "",
        ]
    )
    func drops(name: String) {
        #expect(!HeaderPolicy.passesToClient(name))
    }
}
