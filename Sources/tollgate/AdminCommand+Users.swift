import TollgateStore

/// `tollgate user add | quota | disable`.
extension AdminCommand {
    static let userUsage = """
        usage: tollgate user add NAME [--quota TOKENS [--period day|month|total]]
               tollgate user quota NAME TOKENS|unlimited [--period day|month|total]
               tollgate user disable NAME

        add      creates a user; with --quota, limits them to TOKENS per period (month unless
                 --period says otherwise). Without a quota a user is unlimited, and still metered.
        quota    sets or replaces the quota (keeping its period unless --period is given), or
                 removes it with 'unlimited'. Periods restart at each UTC day or month; 'total'
                 never restarts.
        disable  stops the user's requests at once, whatever key they use.

        """

    static func user(_ arguments: [String]) throws(AdminFailure) {
        if helped(arguments, userUsage) { return }
        let parsed = try AdminArguments(arguments, options: ["quota", "period"])
        guard let action = parsed.positionals.first else { throw .usage("missing action: add, quota or disable") }
        switch action {
        case "add": try addUser(parsed)
        case "quota": try setQuota(parsed)
        case "disable": try disableUser(parsed)
        default: throw .usage("unknown action '\(action)': add, quota or disable")
        }
    }

    private static func addUser(_ parsed: AdminArguments) throws(AdminFailure) {
        let name = try userName(parsed.positionals(2, naming: "user name")[1])
        let period = try parsed.options["period"].map(quotaPeriod)
        var quota: (tokens: Int, period: QuotaPeriod)?
        if let text = parsed.options["quota"] {
            quota = (try tokens(text), period ?? .month)
        } else if period != nil {
            throw .usage("--period needs --quota")
        }
        let store = AdminStore(connection: try connect())
        let id = try Self.store { () throws(StoreError) in try store.addUser(name, quota: quota) }
        let limit = quota.map { "quota \($0.tokens) tokens \(describe($0.period))" } ?? "unlimited"
        print("added user \(name) (id \(id)), \(limit)")
    }

    private static func setQuota(_ parsed: AdminArguments) throws(AdminFailure) {
        let positionals = try parsed.positionals(3, naming: "user name and token count")
        let name = try userName(positionals[1])
        let period = try parsed.options["period"].map(quotaPeriod)
        let store = AdminStore(connection: try connect())
        if positionals[2] == "unlimited" {
            guard period == nil else { throw .usage("--period makes no sense with 'unlimited'") }
            let removed = try Self.store { () throws(StoreError) in try store.removeQuota(name) }
            print(removed ? "\(name) is now unlimited" : "\(name) had no quota")
            return
        }
        let count = try tokens(positionals[2])
        try Self.store { () throws(StoreError) in try store.setQuota(name, tokens: count, period: period) }
        print("quota of \(name) set to \(count) tokens" + (period.map { " \(describe($0))" } ?? ""))
    }

    private static func disableUser(_ parsed: AdminArguments) throws(AdminFailure) {
        let name = try userName(parsed.positionals(2, naming: "user name")[1])
        let store = AdminStore(connection: try connect())
        let changed = try Self.store { () throws(StoreError) in try store.disableUser(name) }
        print(changed ? "disabled user \(name)" : "user \(name) was already disabled")
    }

    /// 1 to 200 bytes, no control characters, no surrounding spaces (what the identity header
    /// of header mode can carry).
    static func userName(_ text: String) throws(AdminFailure) -> String {
        guard !text.isEmpty, text.utf8.count <= 200, text.first?.isWhitespace == false,
            text.last?.isWhitespace == false,
            !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F })
        else { throw .usage("invalid user name '\(text)': 1 to 200 characters, no control characters") }
        return text
    }

    private static func tokens(_ text: String) throws(AdminFailure) -> Int {
        guard let count = Int(text), count > 0 else {
            throw .usage("invalid token count '\(text)': a whole number above 0")
        }
        return count
    }

    private static func quotaPeriod(_ text: String) throws(AdminFailure) -> QuotaPeriod {
        guard let period = QuotaPeriod(rawValue: text) else {
            throw .usage("invalid period '\(text)': day, month or total")
        }
        return period
    }

    private static func describe(_ period: QuotaPeriod) -> String {
        period == .total ? "in total" : "per \(period.rawValue)"
    }
}
