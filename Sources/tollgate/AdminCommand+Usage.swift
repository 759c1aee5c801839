import TollgateCore
import TollgateStore

/// `tollgate usage`: token totals per user and model, as a table or JSON.
extension AdminCommand {
    static let usageUsage = """
        usage: tollgate usage [--user NAME] [--since YYYY-MM-DD] [--json]

        Totals of requests, input (of which cached), output (of which reasoning) and total tokens
        per user and model, from the ledger. --since counts requests started on or after that
        UTC day; --user limits the totals to one user; --json prints one JSON object instead of
        a table.

        """

    static func usageTotals(_ arguments: [String]) throws(AdminFailure) {
        if helped(arguments, usageUsage) { return }
        let parsed = try AdminArguments(arguments, options: ["user", "since"], flags: ["json"])
        _ = try parsed.positionals(0, naming: "")
        let user = try parsed.options["user"].map(userName)
        let since = parsed.options["since"]
        if let since, !isCalendarDay(since) { throw .usage("invalid --since '\(since)': a day as YYYY-MM-DD") }

        let store = AdminStore(connection: try connect())
        let totals = try Self.store { () throws(StoreError) in try store.usage(user: user, since: since) }
        if parsed.flags.contains("json") {
            print(String(decoding: json(totals, user: user, since: since).serialized(), as: UTF8.self))
        } else if totals.isEmpty {
            print("no usage recorded")
        } else {
            print(table(totals), terminator: "")
        }
    }

    static func json(_ totals: [AdminStore.UsageTotal], user: String?, since: String?) -> JSONValue {
        let rows = totals.map { total in
            JSONValue.object([
                JSONMember("user", .string(total.user)), JSONMember("model", .string(total.model)),
                JSONMember("requests", number(total.requests)), JSONMember("input_tokens", number(total.inputTokens)),
                JSONMember("cached_input_tokens", number(total.cachedInputTokens)),
                JSONMember("output_tokens", number(total.outputTokens)),
                JSONMember("reasoning_tokens", number(total.reasoningTokens)),
                JSONMember("total_tokens", number(total.totalTokens)),
            ])
        }
        return .object([
            JSONMember("user", user.map { .string($0) } ?? .null),
            JSONMember("since", since.map { .string($0) } ?? .null),
            JSONMember("usage", .array(rows)),
        ])
    }

    /// Columns padded to their widest cell; numbers right-aligned.
    static func table(_ totals: [AdminStore.UsageTotal]) -> String {
        let header = ["USER", "MODEL", "REQUESTS", "INPUT", "CACHED", "OUTPUT", "REASONING", "TOTAL"]
        let rows = totals.map { total in
            [total.user, total.model]
                + [
                    total.requests, total.inputTokens, total.cachedInputTokens, total.outputTokens,
                    total.reasoningTokens,
                    total.totalTokens,
                ].map(String.init)
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        return ([header] + rows).map { cells in
            cells.indices.map { column in
                let padding = String(repeating: " ", count: widths[column] - cells[column].count)
                return column < 2 ? cells[column] + padding : padding + cells[column]
            }.joined(separator: "  ").trimmingTrailingSpaces() + "\n"
        }.joined()
    }

    /// `YYYY-MM-DD` naming a real day of the Gregorian calendar.
    static func isCalendarDay(_ text: String) -> Bool {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
            parts.allSatisfy({ $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
            let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]), year >= 1,
            (1...12).contains(month)
        else { return false }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let lengths = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        return (1...lengths[month - 1]).contains(day)
    }

    private static func number(_ value: Int) -> JSONValue {
        .number(String(value))
    }
}

extension String {
    fileprivate func trimmingTrailingSpaces() -> String {
        var text = self
        while text.last == " " { text.removeLast() }
        return text
    }
}
