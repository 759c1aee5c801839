import TollgateCore
import TollgateProxy

/// A settlement as one line of the settlement journal, and back.
///
/// Twenty tab-separated fields, then `\n`: `v1`, request id, user id, key id (empty: none),
/// api, model, stream (`1`/`0`), key source, outcome, HTTP status, input, cached input, output,
/// reasoning and total tokens, usage source (`reported`/`estimated`), start (microseconds since
/// the Unix epoch), time to first byte (microseconds, empty: none), duration (microseconds),
/// tokens reserved at admission. Text fields escape `\`, tab, newline and carriage return, so a
/// client-chosen model name cannot split a line. The upstream key is never part of it.
struct SettlementJournalEntry {
    static let version = "v1"
    static let fieldCount = 20

    var settlement: Settlement

    init(_ settlement: Settlement) {
        self.settlement = settlement
    }

    /// The line, `\n` included.
    var line: String {
        let s = settlement
        let fields = [
            Self.version, s.requestID, s.ticket.userID ?? "", s.ticket.keyID ?? "", s.api.rawValue, s.model,
            s.stream ? "1" : "0", s.ticket.keySource.rawValue, s.outcome.rawValue, String(s.status),
            String(s.usage.inputTokens), String(s.usage.cachedInputTokens), String(s.usage.outputTokens),
            String(s.usage.reasoningTokens), String(s.usage.totalTokens), s.usageIsEstimated ? "estimated" : "reported",
            String(s.startedAtMicroseconds), s.timeToFirstByte.map { String(Self.microseconds($0)) } ?? "",
            String(Self.microseconds(s.duration)), String(s.ticket.reservedTokens),
        ]
        return fields.map(Self.escaped).joined(separator: "\t") + "\n"
    }

    /// Reads a line without its `\n`; nil when it is not a complete `v1` entry (a torn write).
    init?(line: Substring) {
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(Self.unescaped)
        guard fields.count == Self.fieldCount, fields[0] == Self.version, !fields[1].isEmpty, !fields[2].isEmpty,
            let api = API(rawValue: fields[4]), let keySource = KeySource(rawValue: fields[7]),
            let outcome = RequestOutcome(rawValue: fields[8]), let numbers = Self.integers(fields),
            fields[6] == "1" || fields[6] == "0", fields[15] == "reported" || fields[15] == "estimated"
        else { return nil }

        let ticket = AdmissionTicket(
            upstreamKey: "", keySource: keySource, userID: fields[2], keyID: fields[3].isEmpty ? nil : fields[3],
            reservedTokens: numbers.reserved)
        settlement = Settlement(
            requestID: fields[1], ticket: ticket, api: api, model: fields[5], stream: fields[6] == "1",
            outcome: outcome, status: numbers.status, usage: numbers.usage, usageIsEstimated: fields[15] == "estimated",
            startedAtMicroseconds: numbers.startedAt,
            timeToFirstByte: numbers.timeToFirstByte.map { .microseconds($0) },
            duration: .microseconds(numbers.duration))
    }

    private struct Numbers {
        var status: Int
        var usage: Usage
        var startedAt: Int64
        var timeToFirstByte: Int64?
        var duration: Int64
        var reserved: Int
    }

    private static func integers(_ fields: [String]) -> Numbers? {
        guard let status = Int(fields[9]), let input = Int(fields[10]), let cached = Int(fields[11]),
            let output = Int(fields[12]), let reasoning = Int(fields[13]), let total = Int(fields[14]),
            let startedAt = Int64(fields[16]), let duration = Int64(fields[18]), let reserved = Int(fields[19])
        else { return nil }
        let timeToFirstByte = Int64(fields[17])
        guard fields[17].isEmpty || timeToFirstByte != nil else { return nil }
        let usage = Usage(
            inputTokens: input, cachedInputTokens: cached, outputTokens: output, reasoningTokens: reasoning,
            totalTokens: total)
        return Numbers(
            status: status, usage: usage, startedAt: startedAt, timeToFirstByte: timeToFirstByte, duration: duration,
            reserved: reserved)
    }

    /// Whole microseconds of a duration (the ledger keeps no finer precision).
    static func microseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }

    static func escaped(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 == 0x5C || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) else { return text }
        var out = ""
        for character in text.unicodeScalars {
            switch character {
            case "\\": out += "\\\\"
            case "\t": out += "\\t"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            default: out.unicodeScalars.append(character)
            }
        }
        return out
    }

    static func unescaped(_ text: Substring) -> String {
        guard text.contains("\\") else { return String(text) }
        var out = ""
        var escaping = false
        for character in text.unicodeScalars {
            if escaping {
                switch character {
                case "t": out += "\t"
                case "n": out += "\n"
                case "r": out += "\r"
                default: out.unicodeScalars.append(character)
                }
                escaping = false
            } else if character == "\\" {
                escaping = true
            } else {
                out.unicodeScalars.append(character)
            }
        }
        return out
    }
}
