import TollgateLoop

#if canImport(Glibc)
    import Glibc
#endif

/// Metering for an event-loop worker: admissions and settlements queue here and a few threads
/// of its own answer them through a `BatchMetering` store, each thread taking everything that
/// waits as one batch. Under light load a request is answered alone at once; under heavy load
/// one database round trip serves a whole batch, so the cost per request falls as load rises.
///
/// Admissions go first (a client waits on each), but a thread that just served admissions
/// looks at settlements first next time, so neither starves. Replies reach each request's
/// event loop through its `LoopExecutor`, one hand-over per loop and batch.
public final class MeteringThreads: Metering {
    let store: any BatchMetering
    let queue: MeteringQueue

    /// Largest batch one round trip carries.
    static let largestBatch = 256

    /// Starts `threads` metering threads (at least one) on `store`.
    public init(store: any BatchMetering, threads: Int) throws(NativeThread.StartError) {
        self.store = store
        self.queue = MeteringQueue()
        for index in 0..<max(1, threads) {
            try NativeThread.start(stackSize: 512 << 10) { [store, queue] in
                Self.serve(queue, store: store, preferSettlements: index % 2 == 1)
            }
        }
    }

    public func admit(
        _ request: AdmissionRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void
    ) {
        queue.push(.admission(PendingAdmission(request: request, executor: executor, reply: reply)))
    }

    public func admitListing(
        from client: ProxyRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void
    ) {
        queue.push(.listing(PendingListing(client: client, executor: executor, reply: reply)))
    }

    public func settle(_ settlement: Settlement) {
        queue.push(.settlement(settlement))
    }

    public func waitUntilSettled(timeout: Duration) -> Int {
        queue.waitUntilSettled(timeout: timeout)
    }

    private static func serve(_ queue: MeteringQueue, store: any BatchMetering, preferSettlements: Bool) {
        var preferSettlements = preferSettlements
        while true {
            switch queue.next(preferSettlements: preferSettlements, limit: largestBatch) {
            case .admissions(let pending):
                let answers = store.admit(pending.map(\.request))
                reply(pending.map { ($0.executor, $0.reply) }, with: answers)
                preferSettlements = true
            case .listing(let pending):
                reply([(pending.executor, pending.reply)], with: [store.admitListing(from: pending.client)])
            case .settlements(let settlements):
                store.settle(settlements)
                queue.settled(settlements.count)
                preferSettlements = false
            }
        }
    }

    /// Hands each answer to its request's loop: one `execute` per loop, with all its answers.
    private static func reply(
        _ waiting: [(any LoopExecutor, (Admission) -> Void)], with answers: [Admission]
    ) {
        var byLoop: [ObjectIdentifier: (any LoopExecutor, [ReplyDelivery])] = [:]
        for (index, (executor, reply)) in waiting.enumerated() {
            let answer = index < answers.count ? answers[index] : .rejected(.internalError())
            byLoop[ObjectIdentifier(executor), default: (executor, [])].1.append(ReplyDelivery(reply, answer))
        }
        for (executor, deliveries) in byLoop.values {
            executor.execute {
                for delivery in deliveries { delivery.reply(delivery.answer) }
            }
        }
    }
}

/// A reply on its way from a metering thread back to the loop that asked.
///
/// `@unchecked Sendable`: `reply` belongs to its loop's thread; a metering thread only carries
/// it and it is called on that loop, through its executor.
struct ReplyDelivery: @unchecked Sendable {
    let reply: (Admission) -> Void
    let answer: Admission

    init(_ reply: @escaping (Admission) -> Void, _ answer: Admission) {
        self.reply = reply
        self.answer = answer
    }
}

/// An admission waiting for a metering thread. `@unchecked Sendable` as `ReplyDelivery`.
struct PendingAdmission: @unchecked Sendable {
    let request: AdmissionRequest
    let executor: any LoopExecutor
    let reply: (Admission) -> Void
}

/// A model-list admission waiting for a metering thread. `@unchecked Sendable` as `ReplyDelivery`.
struct PendingListing: @unchecked Sendable {
    let client: ProxyRequest
    let executor: any LoopExecutor
    let reply: (Admission) -> Void
}
