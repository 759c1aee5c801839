import TollgateCore
import TollgateProxy

/// Metering in PostgreSQL: every request belongs to a user, is admitted only within that user's
/// quota, and leaves exactly one row in the usage ledger.
///
/// Admission and settlement are one round trip each (`tollgate.admit`, `tollgate.settle`, see
/// sql/002_functions.sql) on a connection borrowed from a small pool, so they block the calling
/// request thread for about a millisecond. Shared by all request threads of a worker.
public final class PostgresMetering: Metering {
    public let settings: MeteringSettings
    let pool: ConnectionPool

    public init(settings: MeteringSettings) {
        self.settings = settings
        self.pool = ConnectionPool(
            conninfo: settings.databaseURL, size: settings.poolSize, waitLimit: settings.timeout,
            statementTimeout: settings.timeout)
    }

    /// Metering from TOLLGATE_* variables (see `MeteringSettings`); nil when no database is set.
    public static func fromEnvironment(
        _ environment: [String: String], platformKey: String
    ) throws(StoreError) -> PostgresMetering? {
        try MeteringSettings.resolve(environment: environment, platformKey: platformKey).map(PostgresMetering.init)
    }

    /// Checks once, at start-up, that the database answers and has been migrated.
    public func verify() throws(StoreError) {
        let result = try pool.withConnection { connection throws(StoreError) in
            try connection.execute(
                "SELECT to_regprocedure('tollgate.admit(uuid, bytea, text, bigint, bigint, text, text, boolean, text, "
                    + "text)') IS NOT NULL AS ready")
        }
        guard result.boolean("ready") == true else {
            throw StoreError(.invalidSetting, "the database has no Tollgate schema yet: run 'tollgate migrate'")
        }
    }

    public func admit(_ request: AdmissionRequest) -> Admission {
        let caller: Caller
        switch Caller.identify(request.client, mode: settings.authMode, userHeader: settings.userHeader) {
        case .failure(let error): return .rejected(error)
        case .success(let identified): caller = identified
        }

        let answer: AdmissionAnswer
        do {
            answer = try pool.withConnection { connection throws(StoreError) in
                try AdmissionAnswer(
                    connection.executePrepared(
                        Self.admitStatement, sql: Self.admitSQL, parameters: admitParameters(request, caller)))
            }
        } catch {
            return unavailable(error, requestID: request.requestID)
        }
        return decide(answer, requested: request.reservedTokens, requestID: request.requestID)
    }

    public func admitListing(from client: ProxyRequest) -> Admission {
        let caller: Caller
        switch Caller.identify(client, mode: settings.authMode, userHeader: settings.userHeader) {
        case .failure(let error): return .rejected(error)
        case .success(let identified): caller = identified
        }

        let answer: AdmissionAnswer
        do {
            answer = try pool.withConnection { connection throws(StoreError) in
                try AdmissionAnswer(
                    connection.executePrepared(
                        Self.authenticateStatement, sql: Self.authenticateSQL,
                        parameters: authenticateParameters(caller)))
            }
        } catch {
            return unavailable(error, requestID: client.id)
        }
        return decide(answer, requested: 0, requestID: client.id)
    }

    public func settle(_ settlement: Settlement) {
        guard settlement.ticket.userID != nil else {
            Log.error("usage.settle_failed", settlement.logFields + [(.detail, "ticket without a user")])
            return
        }
        do {
            let result = try pool.withConnection { connection throws(StoreError) in
                try connection.executePrepared(
                    Self.settleStatement, sql: Self.settleSQL, parameters: Self.settleParameters(settlement))
            }
            if result.scalar == "t" {
                Log.info("usage.settled", settlement.logFields)
            } else {
                Log.warning("usage.already_settled", [(.requestID, settlement.requestID)])
            }
        } catch {
            // Limitation: a settlement the database refuses or cannot take is only logged here, with
            // every count, and the reservation stays until its worker is released; a local durable
            // journal replayed on recovery is the next issue's job.
            Log.error(
                "usage.settle_failed",
                settlement.logFields + [(.code, error.code.rawValue), (.detail, error.description)])
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

    private func unavailable(_ error: StoreError, requestID: String) -> Admission {
        Log.error(
            "admission.store_failed",
            [(.requestID, requestID), (.code, error.code.rawValue), (.detail, error.description)])
        return .rejected(.meteringUnavailable())
    }
}
