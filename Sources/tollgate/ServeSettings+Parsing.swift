import TollgateProxy
import TollgateStore

/// A setting that stops start-up, with the one line that names it.
struct SettingsError: Error, CustomStringConvertible {
    let description: String
}

extension ServeSettings {
    /// Resolves settings from `TOLLGATE_*` variables, then from the settings file named by
    /// TOLLGATE_SETTINGS_FILE (its lines win over the environment; SIGHUP re-reads it), then
    /// from flags (`--name value` or `--name=value`), which win over both.
    static func resolve(arguments: [String], environment: [String: String]) throws(SettingsError) -> ServeSettings {
        var settings = ServeSettings()
        var environment = environment
        if let path = environment["TOLLGATE_SETTINGS_FILE"], !path.isEmpty {
            settings.fileEntries = try SettingsFile.read(path)
            environment.merge(settings.fileEntries) { $1 }
        }
        let table = Self.table
        for setting in table {
            guard let value = environment[setting.environmentName] else { continue }
            guard setting.apply(&settings, value) else {
                throw SettingsError(description: "\(setting.environmentName): invalid value '\(value)'")
            }
        }
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            guard argument.hasPrefix("--") else {
                throw SettingsError(description: "unexpected argument '\(argument)'")
            }
            var name = String(argument.dropFirst(2))
            var value: String
            if let equals = name.firstIndex(of: "=") {
                value = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            } else {
                index += 1
                guard index < arguments.count else { throw SettingsError(description: "--\(name): missing value") }
                value = arguments[index]
            }
            guard let setting = table.first(where: { $0.flag == name }) else {
                throw SettingsError(description: "--\(name): unknown setting (see tollgate serve --help)")
            }
            guard setting.apply(&settings, value) else {
                throw SettingsError(description: "--\(name): invalid value '\(value)'")
            }
            index += 1
        }
        settings.upstreamKey = environment["TOLLGATE_UPSTREAM_KEY"] ?? ""
        do {
            _ = try MeteringSettings.resolve(environment: environment, platformKey: settings.upstreamKey)
        } catch {
            throw SettingsError(description: error.description)
        }
        try settings.validateUpstreamKey()
        return settings
    }

    private func validateUpstreamKey() throws(SettingsError) {
        guard !upstreamKey.isEmpty else {
            throw SettingsError(description: "TOLLGATE_UPSTREAM_KEY: not set (the platform key for the upstream)")
        }
        guard upstreamKey.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw SettingsError(description: "TOLLGATE_UPSTREAM_KEY: must be printable ASCII without spaces")
        }
    }

    static var usage: String {
        var text = """
            usage: tollgate serve [--setting value ...]

            Starts a supervisor and a pool of FastCGI worker processes for nginx to pass requests to.
            Each setting can also come from its TOLLGATE_* environment variable; flags win.
            The platform key is read from TOLLGATE_UPSTREAM_KEY only.

            settings:

            """
        for setting in table {
            let flag = "--\(setting.flag)"
            text += "  \(flag)\(String(repeating: " ", count: max(1, 24 - flag.count)))\(setting.help)\n"
            text += "  \(String(repeating: " ", count: 24))[\(setting.environmentName)]\n"
        }
        return text + "\nmetering (environment only):\n" + MeteringSettings.help
    }
}
