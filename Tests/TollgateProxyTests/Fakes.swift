import TollgateCore
import TollgateProxy

/// An upstream that plays back a scripted answer and records what it was asked.
/// `@unchecked Sendable`: each test uses it from one thread only.
final class ScriptedUpstream: Upstream, @unchecked Sendable {
    struct Script {
        var status = 200
        var headers: [(String, String)] = [("content-type", "application/json")]
        var chunks: [[UInt8]] = []
        /// How the call ends once the chunks are delivered; nil sends no head at all.
        var outcome = UpstreamOutcome.completed
        var sendsHead = true
    }

    var script: Script
    private(set) var requests: [UpstreamRequest] = []
    private(set) var stoppedByHandler = false

    init(_ script: Script) {
        self.script = script
    }

    func send(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler, watching clientDescriptor: Int32
    ) -> UpstreamOutcome {
        requests.append(request)
        guard script.sendsHead else { return script.outcome }
        guard handler.upstreamDidReceiveHead(status: script.status, headers: script.headers) else {
            stoppedByHandler = true
            return .abortedByHandler
        }
        for chunk in script.chunks {
            let accepted = chunk.withUnsafeBytes { handler.upstreamDidReceiveBody($0) }
            guard accepted else {
                stoppedByHandler = true
                return .abortedByHandler
            }
        }
        return script.outcome
    }
}

/// A client that records what it was sent; it can leave after a number of flushes.
final class RecordingClient: ClientConnection {
    private(set) var status: Int?
    private(set) var headers: [(String, String)] = []
    private(set) var body: [UInt8] = []
    /// The bytes written before each successful flush, one entry per flush.
    private(set) var flushedPieces: [[UInt8]] = []
    private var unflushed: [UInt8] = []
    var leavesAfterFlushes = Int.max
    /// Set by `end`; nothing may be sent after it.
    private(set) var ended = false
    private(set) var sentAfterEnd = false

    var disconnectDescriptor: Int32 { -1 }

    var text: String { String(decoding: body, as: UTF8.self) }

    func header(_ name: String) -> String? {
        headers.first { $0.0 == name }?.1
    }

    func sendHead(status: Int, headers: [(String, String)]) {
        self.status = status
        self.headers = headers
    }

    func send(_ bytes: [UInt8]) {
        if ended { sentAfterEnd = true }
        unflushed.append(contentsOf: bytes)
    }

    func end() {
        ended = true
    }

    func flush() -> Bool {
        guard flushedPieces.count < leavesAfterFlushes else { return false }
        body.append(contentsOf: unflushed)
        flushedPieces.append(unflushed)
        unflushed.removeAll()
        return true
    }
}

/// Metering that admits with a fixed key (or rejects) and keeps every settlement.
final class RecordingMetering: Metering, @unchecked Sendable {
    // @unchecked: tests use it from one thread only.
    var rejection: OpenAIError?
    private(set) var admitted = 0
    private(set) var settlements: [Settlement] = []

    private(set) var admissions: [AdmissionRequest] = []

    func admit(_ request: AdmissionRequest) -> Admission {
        admissions.append(request)
        if let rejection { return .rejected(rejection) }
        admitted += 1
        return .admitted(AdmissionTicket(upstreamKey: "sk-upstream-test", keySource: .platform, userID: "u1"))
    }

    func admitListing(from client: ProxyRequest) -> Admission {
        .admitted(AdmissionTicket(upstreamKey: "sk-upstream-test", keySource: .platform))
    }

    /// Runs inside `settle`, before the settlement is kept.
    var onSettle: (() -> Void)?

    func settle(_ settlement: Settlement) {
        onSettle?()
        settlements.append(settlement)
    }
}

/// A proxy service wired to fakes, and one request through it.
struct Harness {
    let upstream: ScriptedUpstream
    let metering = RecordingMetering()
    let client = RecordingClient()

    init(_ script: ScriptedUpstream.Script = .init()) {
        upstream = ScriptedUpstream(script)
    }

    func run(method: String = "POST", path: String, body: String, headers: [String: String] = [:]) {
        let upstream = self.upstream
        let service = ProxyService(router: Router(basePath: "/v1"), metering: metering) { upstream }
        let request = ProxyRequest(
            id: "req-test", method: method, path: path, headers: headers, body: Array(body.utf8))
        service.makeHandler().handle(request, client: client)
    }
}

extension Array where Element == UInt8 {
    static func sse(_ lines: String...) -> [UInt8] {
        Array(lines.joined().utf8)
    }
}
