#if canImport(Glibc)
    import Glibc
#endif

/// Severity of a log line: debug for the data path, info for start-up and settlements,
/// warning for degradation, error when a request failed through Tollgate's fault.
public enum LogLevel: Int, Sendable, Comparable {
    case debug, info, warning, error

    public init?(name: String) {
        switch name.lowercased() {
        case "debug": self = .debug
        case "info": self = .info
        case "warning", "warn": self = .warning
        case "error": self = .error
        default: return nil
        }
    }

    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rawValue < rhs.rawValue }

    var name: String {
        switch self {
        case .debug: "debug"
        case .info: "info"
        case .warning: "warning"
        case .error: "error"
        }
    }
}

/// One line per event on standard error: `ts=… level=… event=… key=value …`.
///
/// Messages are fixed short names; data goes in `LogKey` metadata. Values are escaped so a
/// client-chosen string (a model name) cannot forge a line. Never pass a key, an
/// Authorization header, a password or prompt text.
public enum Log {
    /// Set once at start-up, before any other thread exists; read-only afterwards.
    nonisolated(unsafe) public static var minimumLevel: LogLevel = .info

    public static func debug(_ event: String, _ fields: [(LogKey, String)] = []) {
        write(.debug, event, fields)
    }

    public static func info(_ event: String, _ fields: [(LogKey, String)] = []) {
        write(.info, event, fields)
    }

    public static func warning(_ event: String, _ fields: [(LogKey, String)] = []) {
        write(.warning, event, fields)
    }

    public static func error(_ event: String, _ fields: [(LogKey, String)] = []) {
        write(.error, event, fields)
    }

    public static func write(_ level: LogLevel, _ event: String, _ fields: [(LogKey, String)]) {
        guard level >= minimumLevel else { return }
        var line = "ts=\(timestamp()) level=\(level.name) event=\(event)"
        for (key, value) in fields {
            line += " \(key.rawValue)=\(escaped(value))"
        }
        line += "\n"
        // One write(2) per line keeps lines whole when several threads log at once.
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    /// A duration as whole and fractional milliseconds, e.g. `12.345`.
    public static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let micros = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
        let fraction = String(abs(micros % 1000))
        return "\(micros / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
    }

    static func escaped(_ value: String) -> String {
        let plain = value.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\"") }
        if plain && !value.isEmpty { return value }
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        let millis = Int32(now.tv_nsec / 1_000_000)
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(millis, 3))Z"
    }
}
