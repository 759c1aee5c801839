/// `tollgate usage`: totals per user and model from the ledger.
extension AdminStore {
    /// One user's use of one model. Token counts in tokens.
    public struct UsageTotal: Sendable, Equatable {
        public let user: String
        public let model: String
        public let requests: Int
        public let inputTokens: Int
        public let cachedInputTokens: Int
        public let outputTokens: Int
        public let reasoningTokens: Int
        public let totalTokens: Int
    }

    /// Totals of requests started on or after `since` (a `YYYY-MM-DD` UTC day; nil for all
    /// time), for one user or all, ordered by user then model.
    public func usage(user: String? = nil, since: String? = nil) throws(StoreError) -> [UsageTotal] {
        if let user { try requireUser(user) }
        let result = try connection.execute(
            """
            SELECT u.name AS user_name, l.model, count(*) AS requests,
                   sum(l.input_tokens) AS input, sum(l.cached_input_tokens) AS cached,
                   sum(l.output_tokens) AS output, sum(l.reasoning_tokens) AS reasoning,
                   sum(l.total_tokens) AS total
            FROM tollgate.ledger l JOIN tollgate.users u ON u.id = l.user_id
            WHERE ($1::text IS NULL OR u.name = $1::text)
              AND ($2::date IS NULL OR l.started_at >= $2::date::timestamp AT TIME ZONE 'UTC')
            GROUP BY u.name, l.model
            ORDER BY u.name, l.model
            """,
            parameters: [user, since])
        return result.rows.indices.map { row in
            UsageTotal(
                user: result.value("user_name", row: row) ?? "", model: result.value("model", row: row) ?? "",
                requests: result.integer("requests", row: row) ?? 0,
                inputTokens: result.integer("input", row: row) ?? 0,
                cachedInputTokens: result.integer("cached", row: row) ?? 0,
                outputTokens: result.integer("output", row: row) ?? 0,
                reasoningTokens: result.integer("reasoning", row: row) ?? 0,
                totalTokens: result.integer("total", row: row) ?? 0)
        }
    }
}
