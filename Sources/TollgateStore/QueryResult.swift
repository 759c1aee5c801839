/// The rows of one statement, copied out of libpq's result in text format. NULL is nil.
public struct QueryResult: Sendable {
    public let columns: [String]
    public let rows: [[String?]]
    /// Rows inserted, updated or deleted by the statement (0 for a SELECT's own count).
    public let affectedRows: Int

    public init(columns: [String], rows: [[String?]], affectedRows: Int) {
        self.columns = columns
        self.rows = rows
        self.affectedRows = affectedRows
    }

    /// The value in `row` of the column named `column`; nil for NULL, a missing column or row.
    public func value(_ column: String, row: Int = 0) -> String? {
        guard row < rows.count, let index = columns.firstIndex(of: column) else { return nil }
        return rows[row][index]
    }

    /// The first column of the first row, the usual shape of `SELECT f(...)`.
    public var scalar: String? {
        rows.first?.first ?? nil
    }

    /// `value` read as an integer; nil for NULL or text that is not one.
    public func integer(_ column: String, row: Int = 0) -> Int? {
        value(column, row: row).flatMap { Int($0) }
    }

    /// PostgreSQL's text form of a boolean is `t` or `f`.
    public func boolean(_ column: String, row: Int = 0) -> Bool? {
        switch value(column, row: row) {
        case "t": true
        case "f": false
        default: nil
        }
    }
}
