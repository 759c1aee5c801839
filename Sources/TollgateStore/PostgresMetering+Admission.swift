import TollgateCore
import TollgateProxy

/// Admission: who may call, with which upstream key, and what each request may reserve.
extension PostgresMetering {
    /// Decides each request as `admit(_ request:)` would, in one round trip to
    /// `tollgate.admit_batch_fast` for every request whose caller could be identified; a request
    /// without a usable credential is rejected at once, without the database. Requests of one
    /// user are decided in batch order, each seeing what the admitted ones before it reserved (a
    /// refused one holds nothing). Answers line up with `requests`. Blocks for the round trip.
    public func admit(_ requests: [AdmissionRequest]) -> [Admission] {
        let callers = requests.map { request in
            Caller.identify(request.client, mode: settings.authMode, userHeader: settings.userHeader)
        }
        let identified = zip(requests, callers).compactMap { request, caller in
            (try? caller.get()).map { (request: request, caller: $0) }
        }
        var answers = StoreBatch.results(identified) { batch throws(StoreError) in try admitInStore(batch) }
            .makeIterator()
        return zip(requests, callers).map { request, caller in
            switch caller {
            case .failure(let error): return .rejected(error)
            case .success(let caller):
                let answer = answers.next() ?? .failure(StoreError(.unexpectedResult, "an admission went unanswered"))
                if let leases, case .success(let answered) = answer {
                    leases.learn(
                        caller, admitted: answered.outcome == .admitted,
                        remaining: answered.byokKey == nil ? answered.standing?.remaining : nil,
                        requested: request.reservedTokens)
                }
                return admission(answer, caller: caller, requestID: request.requestID, tokens: request.reservedTokens)
            }
        }
    }

    /// Decides whether a caller may list models, and with which upstream key: authentication
    /// only, nothing reserved. Blocks for a round trip.
    public func admitListing(from client: ProxyRequest) -> Admission {
        let caller: Caller
        switch Caller.identify(client, mode: settings.authMode, userHeader: settings.userHeader) {
        case .failure(let error): return .rejected(error)
        case .success(let identified): caller = identified
        }
        let answer = Result { () throws(StoreError) in try authenticateInStore(caller) }
        return admission(answer, caller: caller, requestID: client.id, tokens: 0)
    }

    private func admitInStore(_ batch: [(request: AdmissionRequest, caller: Caller)]) throws(StoreError)
        -> [AdmissionAnswer]
    {
        let result = try pool.withConnection { connection throws(StoreError) in
            try connection.executePrepared(
                Self.admitBatchStatement, sql: Self.admitBatchSQL, parameters: admitBatchParameters(batch))
        }
        return try AdmissionAnswer.all(result, count: batch.count)
    }

    private func authenticateInStore(_ caller: Caller) throws(StoreError) -> AdmissionAnswer {
        let result = try pool.withConnection { connection throws(StoreError) in
            try connection.executePrepared(
                Self.authenticateBatchStatement, sql: Self.authenticateBatchSQL,
                parameters: authenticateParameters(caller))
        }
        return try AdmissionAnswer(result, row: StoreBatch.rows(of: result, count: 1).lowerBound)
    }

    /// The database's answer, or its failure, turned into an admission. `tokens` is the request's
    /// reservation size (0 for listings).
    private func admission(
        _ answer: Result<AdmissionAnswer, StoreError>, caller: Caller, requestID: String, tokens: Int
    ) -> Admission {
        switch answer {
        case .failure(let error):
            return withoutDatabase(caller, requestID: requestID, tokens: tokens, error)
        case .success(let answer):
            outage.learn(answer, caller: caller)
            return decide(answer, requested: tokens, requestID: requestID)
        }
    }

    /// Turns the store's answer into an admission; the decrypted BYOK key goes only into the ticket.
    private func decide(_ answer: AdmissionAnswer, requested: Int, requestID: String) -> Admission {
        if let rejection = answer.outcome.rejection(standing: answer.standing, requested: requested) {
            logRejection(answer.outcome, requestID: requestID)
            return .rejected(rejection)
        }
        let byok = answer.byokKey
        let reserved = byok == nil && answer.standing != nil ? max(0, requested) : 0
        return .admitted(
            AdmissionTicket(
                upstreamKey: byok ?? settings.platformKey, keySource: byok == nil ? .platform : .byok,
                userID: answer.userID, keyID: answer.keyID, reservedTokens: reserved))
    }

    private func logRejection(_ outcome: AdmissionOutcome, requestID: String) {
        switch outcome {
        case .byokSecretMissing:
            Log.error(
                "admission.byok_secret_missing",
                [(.requestID, requestID), (.detail, "TOLLGATE_SECRET is not set; it is required to use BYOK keys")])
        case .byokSecretInvalid:
            Log.error(
                "admission.byok_secret_invalid",
                [(.requestID, requestID), (.detail, "TOLLGATE_SECRET does not decrypt this user's BYOK key")])
        default:
            Log.debug("admission.rejected", [(.requestID, requestID), (.outcome, outcome.rawValue)])
        }
    }

    /// Admission when the database did not answer: the outage policy decides when it is down,
    /// any other failure is a 503.
    private func withoutDatabase(_ caller: Caller, requestID: String, tokens: Int, _ error: StoreError) -> Admission {
        guard OutagePolicy.isOutage(error) else { return unavailable(error, requestID: requestID) }
        return outage.admit(
            caller, requestID: requestID, tokens: tokens, platformKey: settings.platformKey, failure: error)
    }

    private func unavailable(_ error: StoreError, requestID: String) -> Admission {
        Log.error(
            "admission.store_failed",
            [(.requestID, requestID), (.code, error.code.rawValue), (.detail, error.description)])
        return .rejected(.meteringUnavailable())
    }
}
