/// A user's quota in the current period, as admission saw it. All counts in tokens.
public struct QuotaStanding: Sendable, Equatable {
    public var quota: Int
    /// Settled usage in the period.
    public var used: Int
    /// Held by requests in flight.
    public var reserved: Int
    /// When the period ends, RFC 3339 in UTC (`2026-01-02T00:00:00Z`); nil for a 'total' quota.
    public var resetsAt: String?

    public init(quota: Int, used: Int, reserved: Int, resetsAt: String?) {
        self.quota = quota
        self.used = used
        self.reserved = reserved
        self.resetsAt = resetsAt
    }

    /// What may still be reserved; never negative.
    public var remaining: Int {
        max(0, quota - used - reserved)
    }
}
