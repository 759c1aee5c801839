/// One row of `tollgate.admit` or `tollgate.authenticate`, read from its text columns.
struct AdmissionAnswer: Sendable {
    var outcome: AdmissionOutcome
    var userID: String?
    var keyID: String?
    /// The decrypted BYOK key; only for BYOK users. Never logged.
    var byokKey: String?
    /// Present when the caller has a quota (admit only).
    var standing: QuotaStanding?

    init(_ result: QueryResult) throws(StoreError) {
        guard result.rows.count == 1, let text = result.value("outcome"), let outcome = AdmissionOutcome(rawValue: text)
        else { throw StoreError(.unexpectedResult, "admission returned no known outcome") }
        self.outcome = outcome
        userID = result.value("user_id")
        keyID = result.value("key_id")
        byokKey = result.value("byok_key")
        if let quota = result.integer("quota") {
            standing = QuotaStanding(
                quota: quota, used: result.integer("used") ?? 0, reserved: result.integer("reserved") ?? 0,
                resetsAt: result.value("resets_at"))
        }
    }
}
