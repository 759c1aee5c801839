import Testing

@testable import TollgateCore

@Suite("Router")
struct RouterTests {
    @Test("routes the three endpoints under a base path", arguments: ["/v1", "/v1/", "v1", "/v1//"])
    func routesUnderBase(base: String) {
        let router = Router(basePath: base)
        #expect(router.basePath == "/v1")
        #expect(router.route(method: "POST", path: "/v1/chat/completions") == .chatCompletions)
        #expect(router.route(method: "POST", path: "/v1/responses") == .responses)
        #expect(router.route(method: "GET", path: "/v1/models") == .models)
    }

    @Test("routes under a deep base path and under the root")
    func otherBases() {
        let deep = Router(basePath: "/api/playground/assistant/v1")
        #expect(deep.route(method: "POST", path: "/api/playground/assistant/v1/responses") == .responses)
        #expect(deep.route(method: "POST", path: "/v1/responses") == .notFound)

        let root = Router(basePath: "/")
        #expect(root.basePath == "")
        #expect(root.route(method: "POST", path: "/chat/completions") == .chatCompletions)
        #expect(root.route(method: "GET", path: "/") == .notFound)
    }

    @Test("tolerates one trailing slash on the path, not two")
    func trailingSlash() {
        let router = Router(basePath: "/v1")
        #expect(router.route(method: "POST", path: "/v1/chat/completions/") == .chatCompletions)
        #expect(router.route(method: "GET", path: "/v1/models/") == .models)
        #expect(router.route(method: "POST", path: "/v1/responses//") == .notFound)
    }

    @Test("answers methodNotAllowed with the allowed method for known paths")
    func wrongMethod() {
        let router = Router(basePath: "/v1")
        #expect(router.route(method: "GET", path: "/v1/chat/completions") == .methodNotAllowed(allowed: "POST"))
        #expect(router.route(method: "post", path: "/v1/responses") == .methodNotAllowed(allowed: "POST"))
        #expect(router.route(method: "POST", path: "/v1/models") == .methodNotAllowed(allowed: "GET"))
        #expect(router.route(method: "HEAD", path: "/v1/models") == .methodNotAllowed(allowed: "GET"))
    }

    @Test(
        "answers notFound for anything else",
        arguments: [
            "/v1/chat/completion", "/v1/chat/completions/x", "/v1/models/gpt-4o", "/v2/responses", "/v1",
            "/v1responses", "/V1/responses", "", "/", "/v1/responses?x=1", "//v1/responses", "/v1/../v1/responses",
        ]
    )
    func notFound(path: String) {
        #expect(Router(basePath: "/v1").route(method: "POST", path: path) == .notFound)
    }
}
