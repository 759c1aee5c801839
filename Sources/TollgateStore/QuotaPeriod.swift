/// The period a quota applies to; counters restart at each UTC day or month, never for `total`.
public enum QuotaPeriod: String, Sendable, CaseIterable {
    case day
    case month
    case total
}
