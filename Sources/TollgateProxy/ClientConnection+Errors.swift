import TollgateCore

extension ClientConnection {
    /// Answers with an OpenAI-shaped error body and its status. Only before the head was sent;
    /// the answer goes out with the next flush or the end of the response.
    public func sendError(_ error: OpenAIError) {
        let body = error.body()
        var headers: [(String, String)] = [
            ("content-type", "application/json"), ("content-length", String(body.count)),
        ]
        headers.append(contentsOf: error.headers)
        sendHead(status: error.status, headers: headers)
        send(body)
    }
}
