import CCurl
import TollgateCore
import TollgateFastCGI
import TollgateProxy
import TollgateStore
import TollgateUpstream

#if canImport(Glibc)
    import Glibc
#endif

/// One `tollgate worker` process: serves FastCGI requests on the socket inherited from the
/// supervisor until SIGTERM, then drains its in-flight requests within the grace period.
enum WorkerProcess {
    /// The descriptor number the supervisor passes the listening socket as.
    static let listenDescriptor: Int32 = 3

    static func run(settings: ServeSettings, index: String) -> Int32 {
        let signals = SignalSet([SIGTERM, SIGINT, SIGHUP])
        signals.block()  // before any thread starts, so all of them inherit the mask
        signal(SIGPIPE, SIG_IGN)
        raiseDescriptorLimit()
        guard CurlUpstream.initializeLibrary() else {
            Log.error("worker.curl_init_failed")
            return 1
        }

        let upstreamSettings = UpstreamSettings(
            baseURL: settings.upstreamURL, connectTimeout: settings.connectTimeout,
            responseTimeout: settings.upstreamTimeout, idleTimeout: settings.upstreamIdleTimeout)
        guard let metering = makeMetering(settings: settings, index: index) else { return 1 }
        let streamLoop: CurlStreamLoop?
        do {
            streamLoop = settings.streamLoop ? try CurlStreamLoop(settings: upstreamSettings) : nil
            try streamLoop?.run { try NativeThread.start(stackSize: 1 << 20, $0) }
        } catch {
            Log.error("worker.start_failed", [(.worker, index), (.detail, String(describing: error))])
            return 1
        }
        let service = ProxyService(
            router: Router(basePath: settings.basePath), metering: metering,
            policy: settings.policy, streamLoop: streamLoop,
            makeUpstream: { CurlUpstream(settings: upstreamSettings) })
        let server = FastCGIServer(
            listenDescriptor: listenDescriptor,
            settings: .init(
                threads: settings.threads, stackSize: settings.stackKiB << 10, maxBodyBytes: settings.maxBodyBytes),
            service: service)
        do {
            try server.start()
        } catch {
            Log.error("worker.start_failed", [(.worker, index), (.detail, error.description)])
            return 1
        }

        let parent = getppid()
        while true {
            let received = signals.wait(milliseconds: 1000)
            // An orphaned worker (its supervisor was killed) stops like on SIGTERM.
            if received == SIGTERM || received == SIGINT || getppid() != parent { break }
        }
        Log.info("worker.stopping", [(.worker, index), (.inFlight, String(server.inFlight))])
        let stopStarted = ContinuousClock.now
        var left = server.stop(grace: settings.grace)
        // Streams the loop serves finish (and settle) within the same grace period.
        left += service.detachedStreams.waitUntilSettled(
            timeout: max(.zero, settings.grace - (ContinuousClock.now - stopStarted)))
        // Replays what this worker journaled while the database was away, rather than leaving
        // it for another worker to adopt.
        (metering as? PostgresMetering)?.finishJournal()
        Log.write(left == 0 ? .info : .warning, "worker.stopped", [(.worker, index), (.inFlight, String(left))])
        return 0
    }

    /// PostgreSQL metering when TOLLGATE_DATABASE_URL is set, otherwise metering off (usage is
    /// only logged). Nil when the metering settings are invalid.
    private static func makeMetering(settings: ServeSettings, index: String) -> (any Metering)? {
        do {
            let environment = ProcessEnvironment.current()
            guard let store = try PostgresMetering.fromEnvironment(environment, platformKey: settings.upstreamKey)
            else { return LogOnlyMetering(platformKey: settings.upstreamKey) }
            do {
                try store.verify()
            } catch {
                // The database may come back; admissions answer 503 until then.
                Log.warning("worker.metering_unverified", [(.worker, index), (.detail, error.description)])
            }
            return store
        } catch {
            Log.error("worker.metering_failed", [(.worker, index), (.detail, error.description)])
            return nil
        }
    }

    /// Each stream holds a FastCGI and an upstream connection: allow as many as the system does.
    private static func raiseDescriptorLimit() {
        var limit = rlimit()
        guard getrlimit(descriptorLimitResource, &limit) == 0 else { return }
        limit.rlim_cur = limit.rlim_max
        setrlimit(descriptorLimitResource, &limit)
    }
}

private let descriptorLimitResource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
