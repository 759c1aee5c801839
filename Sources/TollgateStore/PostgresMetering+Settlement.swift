import TollgateCore
import TollgateProxy

/// Settlement: the ledger rows of finished requests, and their reservations released.
extension PostgresMetering {
    /// Records every settlement in one round trip to `tollgate.settle_batch` (a ledger row each,
    /// reservations released, counters updated). Those the database could not take because it is
    /// away are appended to the journal together, with one fdatasync, and replayed later; a
    /// settlement without a user id, or one the database refuses, is only logged. Blocks until
    /// each is recorded or journaled.
    public func settle(_ settlements: [Settlement]) {
        for settlement in settlements {
            outage.settled(requestID: settlement.requestID, totalTokens: settlement.usage.totalTokens)
        }
        let owned = settlements.filter { settlement in
            guard settlement.ticket.userID == nil else { return true }
            Log.error("usage.settle_failed", settlement.logFields + [(.detail, "ticket without a user")])
            return false
        }

        var unrecorded: [(settlement: Settlement, error: StoreError)] = []
        for (settlement, result) in zip(owned, Self.record(owned, pool: pool)) {
            switch result {
            case .success(true):
                // The ledger row is the record; the log line is for debugging the data path.
                Log.debug("usage.settled", settlement.logFields)
            case .success(false):
                Log.warning("usage.already_settled", [(.requestID, settlement.requestID)])
            case .failure(let error):
                unrecorded.append((settlement, error))
            }
        }
        keep(unrecorded)
    }

    /// Records `settlements` with `tollgate.settle_batch`, one round trip for all (see
    /// `StoreBatch.results` for how it fails). For each, in order: whether its ledger row is new
    /// (false: the request was settled before), or why it was not recorded.
    static func record(_ settlements: [Settlement], pool: ConnectionPool) -> [Result<Bool, StoreError>] {
        StoreBatch.results(settlements) { batch throws(StoreError) in
            let result = try pool.withConnection { connection throws(StoreError) in
                try connection.executePrepared(
                    settleBatchStatement, sql: settleBatchSQL, parameters: settleBatchParameters(batch))
            }
            var recorded: [Bool] = []
            for row in try StoreBatch.rows(of: result, count: batch.count) {
                guard let isNew = result.boolean("recorded", row: row) else {
                    throw StoreError(.unexpectedResult, "settlement returned no answer")
                }
                recorded.append(isNew)
            }
            return recorded
        }
    }

    /// Settlements the database did not take: journaled when it is unavailable (they are replayed
    /// later), otherwise logged with every count.
    private func keep(_ unrecorded: [(settlement: Settlement, error: StoreError)]) {
        var waiting: [(settlement: Settlement, error: StoreError)] = []
        for (settlement, error) in unrecorded {
            guard OutagePolicy.isOutage(error), journal != nil else {
                // Limitation: a settlement the database refuses (a constraint, not an outage), or one
                // failing without a journal, is only logged, with every count; its reservation stays
                // until its worker is released. Replaying it would be refused again.
                Log.error(
                    "usage.settle_failed",
                    settlement.logFields + [(.code, error.code.rawValue), (.detail, error.description)])
                continue
            }
            waiting.append((settlement, error))
        }
        guard let journal, !waiting.isEmpty else { return }

        do {
            try journal.append(waiting.map(\.settlement))
            for (settlement, error) in waiting {
                Log.warning("usage.journaled", settlement.logFields + [(.code, error.code.rawValue)])
            }
        } catch let failure {
            // Limitation: with neither the database nor the journal's disk writable, the log lines
            // are the only record left of these settlements. Lines written before the failure may
            // still be replayed: check the ledger for a request id before entering one by hand.
            for (settlement, error) in waiting {
                Log.error(
                    "usage.journal_failed",
                    settlement.logFields + [(.code, error.code.rawValue), (.detail, failure.description)])
            }
        }
    }
}
