import Synchronization
import TollgateCore
import TollgateLoop
import TollgateProxy

/// Runs executed work at once, on the calling thread: the tests drive everything from one thread.
final class InlineExecutor: LoopExecutor, @unchecked Sendable {
    func execute(_ work: @escaping @Sendable () -> Void) {
        work()
    }
}

/// An upstream that plays back a scripted answer and records what it was asked. Plays at once,
/// or, when `holds` is set, keeps each call until the test plays, cancels or resumes it.
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
    var holds = false
    private(set) var requests: [UpstreamRequest] = []
    private(set) var calls: [ScriptedCall] = []
    private(set) var stoppedByHandler = false

    init(_ script: Script) {
        self.script = script
    }

    func start(
        _ request: UpstreamRequest, to handler: any UpstreamResponseHandler,
        completion: @escaping (UpstreamOutcome) -> Void
    ) -> any UpstreamCall {
        requests.append(request)
        let call = ScriptedCall(handler: handler, completion: completion)
        calls.append(call)
        if !holds { play(call) }
        return call
    }

    /// Delivers the script to `call` and ends it.
    func play(_ call: ScriptedCall) {
        guard script.sendsHead else { return call.end(script.outcome) }
        guard call.handler.upstreamDidReceiveHead(status: script.status, headers: script.headers) else {
            stoppedByHandler = true
            return call.end(.abortedByHandler)
        }
        for chunk in script.chunks {
            guard chunk.withUnsafeBytes({ call.handler.upstreamDidReceiveBody($0) }) else {
                stoppedByHandler = true
                return call.end(.abortedByHandler)
            }
        }
        call.end(script.outcome)
    }
}

/// One call of a `ScriptedUpstream`.
final class ScriptedCall: UpstreamCall {
    let handler: any UpstreamResponseHandler
    private var completion: ((UpstreamOutcome) -> Void)?
    private(set) var cancelled = false
    private(set) var resumed = 0

    init(handler: any UpstreamResponseHandler, completion: @escaping (UpstreamOutcome) -> Void) {
        self.handler = handler
        self.completion = completion
    }

    var ended: Bool { completion == nil }

    func end(_ outcome: UpstreamOutcome) {
        let completion = self.completion
        self.completion = nil
        completion?(outcome)
    }

    func cancel() {
        cancelled = true
        end(.clientGone)
    }

    func resume() {
        resumed += 1
    }
}

/// A client that records what it was sent; it can leave after a number of flushes, or when told.
final class RecordingClient: ClientConnection {
    private(set) var status: Int?
    private(set) var headers: [(String, String)] = []
    private(set) var body: [UInt8] = []
    /// The bytes written before each successful flush, one entry per flush.
    private(set) var flushedPieces: [[UInt8]] = []
    private var unflushed: [UInt8] = []
    private var headUnflushed = false
    var leavesAfterFlushes = Int.max
    /// What nginx has not taken yet, as the test says.
    var pendingBytes = 0
    var observer: (any ClientObserver)?
    /// Set by `end`; nothing may be sent after it.
    private(set) var ended = false
    private(set) var sentAfterEnd = false
    private(set) var gone = false

    var text: String { String(decoding: body, as: UTF8.self) }

    func header(_ name: String) -> String? {
        headers.first { $0.0 == name }?.1
    }

    func sendHead(status: Int, headers: [(String, String)]) {
        self.status = status
        self.headers = headers
        headUnflushed = true
    }

    func send(_ bytes: [UInt8]) {
        if ended { sentAfterEnd = true }
        unflushed.append(contentsOf: bytes)
    }

    func end() {
        if (!unflushed.isEmpty || headUnflushed) && !gone { _ = flush() }
        ended = true
    }

    func flush() -> Bool {
        guard !gone, flushedPieces.count < leavesAfterFlushes else { return false }
        // Nothing to write: not a flush on the wire.
        guard !unflushed.isEmpty || headUnflushed else { return true }
        headUnflushed = false
        body.append(contentsOf: unflushed)
        flushedPieces.append(unflushed)
        unflushed.removeAll()
        return true
    }

    /// nginx closed the connection: the client went away.
    func leave() {
        gone = true
        observer?.clientDidLeave()
    }

    /// nginx took everything pending.
    func catchUp() {
        pendingBytes = 0
        observer?.clientDidCatchUp()
    }
}

/// Metering that admits with a fixed key (or rejects) and keeps every settlement. Answers at
/// once, or, when `holdsAdmissions` is set, keeps each admission until the test answers it.
final class RecordingMetering: Metering, @unchecked Sendable {
    // @unchecked: tests use it from one thread only.
    var rejection: OpenAIError?
    var holdsAdmissions = false
    private(set) var admitted = 0
    private(set) var settlements: [Settlement] = []
    private(set) var admissions: [AdmissionRequest] = []
    private(set) var heldReplies: [(Admission) -> Void] = []

    /// Runs inside `settle`, before the settlement is kept.
    var onSettle: (() -> Void)?

    func admit(
        _ request: AdmissionRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void
    ) {
        admissions.append(request)
        guard !holdsAdmissions else { return heldReplies.append(reply) }
        reply(answer())
    }

    func admitListing(
        from client: ProxyRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void
    ) {
        reply(.admitted(AdmissionTicket(upstreamKey: "sk-upstream-test", keySource: .platform)))
    }

    /// Answers the held admissions.
    func answerHeld() {
        let replies = heldReplies
        heldReplies.removeAll()
        for reply in replies { reply(answer()) }
    }

    func settle(_ settlement: Settlement) {
        onSettle?()
        settlements.append(settlement)
    }

    func waitUntilSettled(timeout: Duration) -> Int { 0 }

    private func answer() -> Admission {
        if let rejection { return .rejected(rejection) }
        admitted += 1
        return .admitted(AdmissionTicket(upstreamKey: "sk-upstream-test", keySource: .platform, userID: "u1"))
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
        let service = ProxyService(router: Router(basePath: "/v1"), metering: metering)
        let request = ProxyRequest(
            id: "req-test", method: method, path: path, headers: headers, body: Array(body.utf8))
        service.makeHandler(upstream: upstream, executor: InlineExecutor()).handle(request, client: client)
    }
}

extension Array where Element == UInt8 {
    static func sse(_ lines: String...) -> [UInt8] {
        Array(lines.joined().utf8)
    }
}
