import TollgateProxy

/// Everything `tollgate serve` and its workers need, resolved from flags and `TOLLGATE_*`
/// environment variables (flags win).
struct ServeSettings {
    var socket = "/run/tollgate/tollgate.sock"
    var socketMode = 0o660
    var workers = ServeSettings.coreCount
    /// Event loops per worker, each on a thread of its own and serving any number of requests,
    /// streams included. One per worker process is the norm; workers scale across cores.
    var threads = 1
    var upstreamURL = "https://api.openai.com/v1"
    var upstreamKey = ""
    var basePath = "/v1"
    var connectTimeout = Duration.seconds(10)
    var upstreamTimeout = Duration.seconds(600)
    var upstreamIdleTimeout = Duration.seconds(300)
    var grace = Duration.seconds(30)
    var maxBodyBytes = 16 << 20
    var logLevel = LogLevel.info
    var policy = Policy(maxOutputTokens: 16384)
    /// The lines of the settings file (TOLLGATE_SETTINGS_FILE), handed to workers as they are,
    /// so metering variables set there reach them too.
    var fileEntries: [String: String] = [:]

    static var coreCount: Int {
        max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }

    /// The settings a worker process receives from its supervisor, as environment entries.
    var environment: [String: String] {
        var entries: [String: String] = [:]
        for setting in Self.table {
            entries[setting.environmentName] = setting.render(self)
        }
        return entries
    }
}

#if canImport(Glibc)
    import Glibc
#endif
