import TollgateProxy

/// One setting of `tollgate serve`: its flag, its environment variable, and how to read it.
struct Setting {
    let flag: String
    let help: String
    /// Stores the value; false when the text is not a valid value.
    let apply: (inout ServeSettings, String) -> Bool
    let render: (ServeSettings) -> String

    var environmentName: String {
        "TOLLGATE_" + String(flag.uppercased().map { $0 == "-" ? "_" : $0 })
    }
}

extension ServeSettings {
    /// Every setting, in the order `--help` lists them. The platform key is not among them: it
    /// is read from TOLLGATE_UPSTREAM_KEY only, never from argv.
    static var table: [Setting] {
        [
            text("socket", "unix socket path, or HOST:PORT, that nginx connects to", \.socket) { !$0.isEmpty },
            Setting(flag: "socket-mode", help: "permissions of the unix socket, octal (660)") { settings, text in
                guard let mode = Int(text, radix: 8), (0...0o777).contains(mode) else { return false }
                settings.socketMode = mode
                return true
            } render: {
                String($0.socketMode, radix: 8)
            },
            integer("workers", "worker processes (number of cores)", 1...256, \.workers),
            integer(
                "threads", "event-loop threads per worker, each serving any number of requests (1)", 1...64, \.threads),
            text("upstream-url", "base URL of the provider (https://api.openai.com/v1)", \.upstreamURL) {
                ($0.hasPrefix("http://") || $0.hasPrefix("https://")) && !$0.contains(where: \.isWhitespace)
            },
            text("base-path", "path the API is served under (/v1)", \.basePath) {
                $0.hasPrefix("/") && !$0.contains(where: { $0.isWhitespace || $0 == "?" })
            },
            seconds("connect-timeout", "seconds allowed to connect to the upstream (10)", \.connectTimeout),
            seconds("upstream-timeout", "seconds to wait for the upstream's response head (600)", \.upstreamTimeout),
            seconds(
                "upstream-idle-timeout", "seconds of upstream silence allowed mid-body (300)", \.upstreamIdleTimeout),
            seconds("grace", "seconds in-flight requests get to finish after SIGTERM (30)", \.grace),
            integer("max-body-bytes", "largest request body read, bytes (16777216)", 1024...(1 << 30), \.maxBodyBytes),
            Setting(flag: "allowed-models", help: "comma-separated model patterns, * as wildcard (all)") {
                settings, text in
                settings.policy.allowedModels = text.split(separator: ",").map {
                    ModelPattern(String($0.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()))
                }
                return true
            } render: {
                $0.policy.allowedModels.map(\.text).joined(separator: ",")
            },
            Setting(flag: "max-output-tokens", help: "output tokens one request may ask for, 0 for no cap (16384)") {
                settings, text in
                guard let value = Int(text), value >= 0 else { return false }
                settings.policy.maxOutputTokens = value == 0 ? nil : value
                return true
            } render: {
                String($0.policy.maxOutputTokens ?? 0)
            },
            Setting(flag: "over-cap", help: "clamp or reject a request above max-output-tokens (clamp)") {
                settings, text in
                guard let action = Policy.OverCapAction(rawValue: text) else { return false }
                settings.policy.overCapAction = action
                return true
            } render: {
                $0.policy.overCapAction.rawValue
            },
            Setting(flag: "hosted-tools", help: "refuse or allow Responses hosted tools, billed beyond tokens (refuse)")
            {
                settings, text in
                guard text == "refuse" || text == "allow" else { return false }
                settings.policy.refusesHostedTools = text == "refuse"
                return true
            } render: {
                $0.policy.refusesHostedTools ? "refuse" : "allow"
            },
            Setting(flag: "log-level", help: "debug, info, warning or error (info)") { settings, text in
                guard let level = LogLevel(name: text) else { return false }
                settings.logLevel = level
                return true
            } render: {
                String(describing: $0.logLevel)
            },
        ]
    }

    private static func text(
        _ flag: String, _ help: String, _ field: WritableKeyPath<ServeSettings, String>,
        valid: @escaping (String) -> Bool
    ) -> Setting {
        Setting(flag: flag, help: help) { settings, text in
            guard valid(text) else { return false }
            settings[keyPath: field] = text
            return true
        } render: {
            $0[keyPath: field]
        }
    }

    private static func integer(
        _ flag: String, _ help: String, _ range: ClosedRange<Int>, _ field: WritableKeyPath<ServeSettings, Int>
    ) -> Setting {
        Setting(flag: flag, help: help) { settings, text in
            guard let value = Int(text), range.contains(value) else { return false }
            settings[keyPath: field] = value
            return true
        } render: {
            String($0[keyPath: field])
        }
    }

    private static func seconds(
        _ flag: String, _ help: String, _ field: WritableKeyPath<ServeSettings, Duration>
    ) -> Setting {
        Setting(flag: flag, help: help) { settings, text in
            guard let value = Double(text), value > 0, value <= 86_400 else { return false }
            settings[keyPath: field] = .milliseconds(Int64((value * 1000).rounded()))
            return true
        } render: { settings in
            let (whole, attoseconds) = settings[keyPath: field].components
            let millis = attoseconds / 1_000_000_000_000_000
            return millis == 0 ? String(whole) : String(Double(whole) + Double(millis) / 1000)
        }
    }
}
