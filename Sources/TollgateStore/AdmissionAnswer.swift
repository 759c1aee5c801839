/// One row of `tollgate.admit_batch_fast` or `tollgate.authenticate_batch`, read from its text columns.
struct AdmissionAnswer: Sendable {
    var outcome: AdmissionOutcome
    var userID: String?
    var keyID: String?
    /// The decrypted BYOK key; only for BYOK users. Never logged.
    var byokKey: String?
    /// Present when the caller has a quota (admission only).
    var standing: QuotaStanding?

    init(_ result: QueryResult, row: Int = 0) throws(StoreError) {
        guard let text = result.value("outcome", row: row), let outcome = AdmissionOutcome(rawValue: text) else {
            throw StoreError(.unexpectedResult, "admission returned no known outcome")
        }
        self.outcome = outcome
        userID = result.value("user_id", row: row)
        keyID = result.value("key_id", row: row)
        byokKey = result.value("byok_key", row: row)
        if let quota = result.integer("quota", row: row) {
            standing = QuotaStanding(
                quota: quota, used: result.integer("used", row: row) ?? 0,
                reserved: result.integer("reserved", row: row) ?? 0, resetsAt: result.value("resets_at", row: row))
        }
    }

    /// Every row of a batch's answer, in the order of the requests; fails unless there is exactly
    /// one row per request.
    static func all(_ result: QueryResult, count: Int) throws(StoreError) -> [AdmissionAnswer] {
        var answers: [AdmissionAnswer] = []
        for row in try StoreBatch.rows(of: result, count: count) {
            answers.append(try AdmissionAnswer(result, row: row))
        }
        return answers
    }
}
