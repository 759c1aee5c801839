import TollgateCore
import TollgateProxy

/// The hot-path statements, prepared once per pooled connection, and their parameters.
extension PostgresMetering {
    static let admitStatement = "tollgate_admit"
    static let admitSQL = """
        SELECT outcome, user_id, key_id, byok_key, quota, used, reserved,
               to_char(period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS resets_at
        FROM tollgate.admit($1::uuid, $2::bytea, $3::text, $4::bigint, $5::bigint, $6::text, $7::text,
                            $8::boolean, $9::text, $10::text)
        """

    static let authenticateStatement = "tollgate_authenticate"
    static let authenticateSQL = """
        SELECT outcome, user_id, key_id, byok_key FROM tollgate.authenticate($1::bytea, $2::text, $3::text)
        """

    static let settleStatement = "tollgate_settle"
    static let settleSQL = """
        SELECT tollgate.settle($1::uuid, $2::bigint, $3::bigint, $4::text, $5::text, $6::boolean, $7::text,
                               $8::text, $9::integer, $10::bigint, $11::bigint, $12::bigint, $13::bigint,
                               $14::bigint, $15::text, timestamptz 'epoch' + $16::bigint * interval '1 microsecond',
                               $17::double precision, $18::double precision)
        """

    func admitParameters(_ request: AdmissionRequest, _ caller: Caller) -> [String?] {
        let (keyHash, userName) = caller.parameters
        return [
            request.requestID, keyHash, userName, String(max(0, request.reservedTokens)),
            String(max(0, request.estimatedInputTokens)), request.api.rawValue, request.model,
            String(request.stream), settings.workerID, settings.secret,
        ]
    }

    func authenticateParameters(_ caller: Caller) -> [String?] {
        let (keyHash, userName) = caller.parameters
        return [keyHash, userName, settings.secret]
    }

    static func settleParameters(_ settlement: Settlement) -> [String?] {
        let usage = settlement.usage
        return [
            settlement.requestID, settlement.ticket.userID, settlement.ticket.keyID, settlement.api.rawValue,
            settlement.model, String(settlement.stream), settlement.ticket.keySource.rawValue,
            settlement.outcome.rawValue, String(settlement.status), String(usage.inputTokens),
            String(usage.cachedInputTokens), String(usage.outputTokens), String(usage.reasoningTokens),
            String(usage.totalTokens), settlement.usageIsEstimated ? "estimated" : "reported",
            String(settlement.startedAtMicroseconds), settlement.timeToFirstByte.map(milliseconds),
            milliseconds(settlement.duration),
        ]
    }

    /// A duration in milliseconds with microsecond precision, as PostgreSQL reads a double.
    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let microseconds = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
        return String(Double(microseconds) / 1000)
    }
}
