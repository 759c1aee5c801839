import TollgateCore

/// A whole upstream response held in memory: non-stream answers, and error answers to stream
/// requests (which must reach the client as plain JSON with their status).
struct BufferedResponse {
    var status = 0
    var headers: [(String, String)] = []
    var body: [UInt8] = []
    /// The body outgrew `limit` and was cut; it must not be delivered.
    private(set) var overflowed = false
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// Appends a piece of body; false once the body is larger than the limit.
    mutating func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard body.count + bytes.count <= limit else {
            overflowed = true
            return false
        }
        body.append(contentsOf: bytes)
        return true
    }

    /// Queues the response for the client (it goes out when the response ends). A 2xx body that
    /// is not JSON becomes a 502, and a non-2xx body that is not JSON is replaced by an
    /// OpenAI-shaped error with the same status, so SDKs always find `error.message`. Returns
    /// the status sent and the parsed body (nil when it was not JSON).
    func deliver(
        to client: any ClientConnection, rewrite: (JSONValue) -> JSONValue? = { _ in nil }
    ) -> (status: Int, json: JSONValue?) {
        let json = try? JSONValue(parsing: body)
        guard let json else {
            let error =
                (200..<300).contains(status)
                ? OpenAIError.upstreamInvalidResponse()
                : OpenAIError(
                    status: status, message: "The upstream answered \(status) without an error body.",
                    type: "server_error", code: "upstream_error")
            client.sendError(error)
            return (error.status, nil)
        }
        let rewritten = (200..<300).contains(status) ? rewrite(json) : nil
        let answer = rewritten?.serialized() ?? body
        var head = headers.filter { HeaderPolicy.passesToClient($0.0) && $0.0 != "content-type" }
        head.append(("content-type", "application/json"))
        head.append(("content-length", String(answer.count)))
        client.sendHead(status: status, headers: head)
        client.send(answer)
        return (status, json)
    }
}
