import TollgateCore
import TollgateProxy

/// The hot-path statements, prepared once per pooled connection, and their parameters. Each
/// takes a batch as parallel arrays, one array literal per column (see `PostgresArray`).
extension PostgresMetering {
    static let admitBatchSignature =
        "tollgate.admit_batch_fast(uuid[], bytea[], text[], bigint[], bigint[], text[], text[], boolean[], text, text)"
    static let settleBatchSignature =
        "tollgate.settle_batch(uuid[], bigint[], bigint[], text[], text[], boolean[], text[], text[], integer[], "
        + "bigint[], bigint[], bigint[], bigint[], bigint[], text[], timestamptz[], double precision[], "
        + "double precision[])"

    static let admitBatchStatement = "tollgate_admit_batch"
    static let admitBatchSQL = """
        SELECT ordinal, outcome, user_id, key_id, byok_key, quota, used, reserved,
               to_char(period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS resets_at
        FROM tollgate.admit_batch_fast($1::uuid[], $2::bytea[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],
                                       $7::text[], $8::boolean[], $9::text, $10::text)
        ORDER BY ordinal
        """

    static let authenticateBatchStatement = "tollgate_authenticate_batch"
    static let authenticateBatchSQL = """
        SELECT ordinal, outcome, user_id, key_id, byok_key
        FROM tollgate.authenticate_batch($1::bytea[], $2::text[], $3::text) ORDER BY ordinal
        """

    static let settleBatchStatement = "tollgate_settle_batch"
    static let settleBatchSQL = """
        SELECT ordinal, recorded
        FROM tollgate.settle_batch($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::boolean[],
                                   $7::text[], $8::text[], $9::integer[], $10::bigint[], $11::bigint[], $12::bigint[],
                                   $13::bigint[], $14::bigint[], $15::text[],
                                   ARRAY(SELECT timestamptz 'epoch' + s.microseconds * interval '1 microsecond'
                                         FROM unnest($16::bigint[]) WITH ORDINALITY AS s(microseconds, n)
                                         ORDER BY s.n),
                                   $17::double precision[], $18::double precision[])
        ORDER BY ordinal
        """

    /// The parameters of `admitBatchSQL`: the columns of `admissionRow`, then the worker and the secret.
    func admitBatchParameters(_ batch: [(request: AdmissionRequest, caller: Caller)]) -> [String?] {
        PostgresArray.columns(batch.map(admissionRow)) + [settings.workerID, settings.secret]
    }

    /// One request's values for `admit_batch_fast`, in the order of its array parameters.
    func admissionRow(_ request: AdmissionRequest, _ caller: Caller) -> [String?] {
        let (keyHash, userName) = caller.parameters
        return [
            request.requestID, keyHash, userName, String(max(0, request.reservedTokens)),
            String(max(0, request.estimatedInputTokens)), request.api.rawValue, request.model, String(request.stream),
        ]
    }

    /// The parameters of `authenticateBatchSQL` for one caller.
    func authenticateParameters(_ caller: Caller) -> [String?] {
        let (keyHash, userName) = caller.parameters
        return PostgresArray.columns([[keyHash, userName]]) + [settings.secret]
    }

    /// The parameters of `settleBatchSQL`: one array per column of `settleParameters`.
    static func settleBatchParameters(_ settlements: [Settlement]) -> [String?] {
        PostgresArray.columns(settlements.map(settleParameters))
    }

    /// One settlement's values for `settle_batch`, in the order of its array parameters (the
    /// start in microseconds since the epoch, durations in milliseconds).
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
