/// An error in the OpenAI shape, as Tollgate answers it to clients. Never carries internals:
/// messages are fixed sentences plus, at most, what the client itself sent (a method, a path,
/// a parameter name).
public struct OpenAIError: Error, Sendable, Equatable {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?
    /// Extra response headers, lower-case names (e.g. ("allow", "POST")).
    public var headers: [(String, String)]

    public init(
        status: Int, message: String, type: String, param: String? = nil, code: String? = nil,
        headers: [(String, String)] = []
    ) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers
    }

    public static func == (left: OpenAIError, right: OpenAIError) -> Bool {
        left.status == right.status && left.message == right.message && left.type == right.type
            && left.param == right.param && left.code == right.code
            && left.headers.elementsEqual(right.headers) { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    /// `{"error":{"message":…,"type":…,"param":…,"code":…}}`, null for a nil param or code.
    public func body() -> [UInt8] {
        JSONValue.object([JSONMember("error", errorObject())]).serialized()
    }

    /// For streams already started: chat → `data: {"error":{...}}\n\n`; responses →
    /// `event: error\ndata: {"type":"error","sequence_number":N,"error":{"type","code","message",
    /// "param"}}\n\n`.
    public func sseEvent(api: API, sequenceNumber: Int) -> [UInt8] {
        switch api {
        case .chatCompletions:
            return SSEEvent(data: String(decoding: body(), as: UTF8.self)).encoded()
        case .responses:
            let payload = JSONValue.object([
                JSONMember("type", .string("error")),
                JSONMember("sequence_number", .number(String(sequenceNumber))),
                JSONMember(
                    "error",
                    .object([
                        JSONMember("type", .string(type)), JSONMember("code", Self.nullable(code)),
                        JSONMember("message", .string(message)), JSONMember("param", Self.nullable(param)),
                    ])),
            ])
            return SSEEvent(event: "error", data: String(decoding: payload.serialized(), as: UTF8.self)).encoded()
        }
    }

    private func errorObject() -> JSONValue {
        .object([
            JSONMember("message", .string(message)), JSONMember("type", .string(type)),
            JSONMember("param", Self.nullable(param)), JSONMember("code", Self.nullable(code)),
        ])
    }

    private static func nullable(_ text: String?) -> JSONValue {
        text.map { .string($0) } ?? .null
    }
}
