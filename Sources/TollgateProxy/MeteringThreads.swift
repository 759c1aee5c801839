import TollgateLoop

#if canImport(Glibc)
    import Glibc
#endif

/// Metering for an event-loop worker: admissions and settlements queue here and a few threads
/// of its own answer them through a `BatchMetering` store, a batch per round trip. When a batch
/// starts, and so how large batches grow with load, is the `MeteringQueue`'s pacing: under
/// light load a request is answered alone at once; under heavy load one round trip serves many,
/// so the database's cost per request falls as load rises. Replies reach each request's event
/// loop through its `LoopExecutor`, one hand-over per loop and batch. A request the store admits
/// from a quota lease is answered at once, on its loop, and only its record is queued.
public final class MeteringThreads: Metering {
    let store: any BatchMetering
    let queue: MeteringQueue

    /// Starts `threads` metering threads (at least one) on `store`.
    public convenience init(store: any BatchMetering, threads: Int) throws(NativeThread.StartError) {
        try self.init(store: store, threads: threads, pacing: MeteringQueue.Pacing())
    }

    init(store: any BatchMetering, threads: Int, pacing: MeteringQueue.Pacing) throws(NativeThread.StartError) {
        self.store = store
        self.queue = MeteringQueue(pacing: pacing)
        for _ in 0..<max(1, threads) {
            try NativeThread.start(name: "tollgate-meter", stackSize: 512 << 10) { [store, queue] in
                Self.serve(queue, store: store)
            }
        }
    }

    public func admit(
        _ request: AdmissionRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void
    ) {
        if let (ticket, leased) = store.admitFromLease(request) {
            if let leased { queue.push(.record(leased)) }
            reply(.admitted(ticket))
            return
        }
        queue.push(.admission(PendingAdmission(request: request, executor: executor, reply: reply)))
    }

    public func admitListing(
        from client: ProxyRequest, replyingOn executor: any LoopExecutor, _ reply: @escaping (Admission) -> Void
    ) {
        queue.push(.listing(PendingListing(client: client, executor: executor, reply: reply)))
    }

    public func settle(_ settlement: Settlement) {
        if let unsent = queue.push(.settlement(settlement)) { store.forget(unsent) }
    }

    public func waitUntilSettled(timeout: Duration) -> Int {
        queue.waitUntilSettled(timeout: timeout)
    }

    private static func serve(_ queue: MeteringQueue, store: any BatchMetering) {
        while true {
            let (work, started) = queue.next()
            switch work {
            case .admissions(let pending):
                let answers = store.admit(pending.map(\.request))
                queue.finished(work, started: started)
                reply(pending.map { ($0.executor, $0.reply) }, with: answers)
            case .listing(let pending):
                let answer = store.admitListing(from: pending.client)
                queue.finished(work, started: started)
                reply([(pending.executor, pending.reply)], with: [answer])
            case .settlements(let settlements):
                store.settle(settlements)
                queue.finished(work, started: started)
            case .records(let records):
                store.record(records)
                queue.finished(work, started: started)
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
