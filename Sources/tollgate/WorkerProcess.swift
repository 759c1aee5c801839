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
/// supervisor until SIGTERM (the service stops) or SIGUSR1 (a reload replaces it), then
/// drains its in-flight requests within the grace period.
enum WorkerProcess {
    /// The descriptor number the supervisor passes the listening socket as.
    static let listenDescriptor: Int32 = 3

    static func run(settings: ServeSettings, index: String) -> Int32 {
        let signals = SignalSet([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
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
        guard let (metering, store) = makeMetering(settings: settings, index: index) else { return 1 }
        let service = ProxyService(
            router: Router(basePath: settings.basePath), metering: metering, policy: settings.policy)
        let server = FastCGIServer(
            listenDescriptor: listenDescriptor,
            settings: .init(loops: settings.threads, maxBodyBytes: settings.maxBodyBytes))
        do {
            try server.start { loop in
                service.makeHandler(upstream: try CurlUpstream(settings: upstreamSettings, loop: loop), executor: loop)
            }
        } catch {
            Log.error("worker.start_failed", [(.worker, index), (.detail, error.description)])
            return 1
        }

        let parent = getppid()
        var received: Int32?
        while true {
            received = signals.wait(milliseconds: 1000)
            // An orphaned worker (its supervisor was killed) stops like on SIGTERM.
            if received == SIGTERM || received == SIGINT || received == SIGUSR1 || getppid() != parent { break }
        }
        Log.info("worker.stopping", [(.worker, index), (.inFlight, String(server.inFlight))])
        let stopStarted = ContinuousClock.now
        // SIGUSR1: replaced by a reload, while the service goes on. SIGTERM: the service stops.
        var left = received == SIGUSR1 ? server.retire(grace: settings.grace) : server.stop(grace: settings.grace)
        // Settlements still queued are recorded within the same grace period.
        left += metering.waitUntilSettled(timeout: max(Duration.zero, settings.grace - (.now - stopStarted)))
        // Replays what this worker journaled while the database was away, rather than leaving
        // it for another worker to adopt.
        store?.finishJournal()
        Log.write(left == 0 ? .info : .warning, "worker.stopped", [(.worker, index), (.inFlight, String(left))])
        return 0
    }

    /// PostgreSQL metering, through the worker's metering threads, when TOLLGATE_DATABASE_URL is
    /// set; otherwise metering off (usage is only logged). Nil when the metering settings are
    /// invalid or its threads cannot start.
    private static func makeMetering(
        settings: ServeSettings, index: String
    ) -> (any Metering, PostgresMetering?)? {
        do {
            let environment = ProcessEnvironment.current()
            guard let store = try PostgresMetering.fromEnvironment(environment, platformKey: settings.upstreamKey)
            else { return (LogOnlyMetering(platformKey: settings.upstreamKey), nil) }
            do {
                try store.verify()
            } catch {
                // The database may come back; admissions answer 503 until then.
                Log.warning("worker.metering_unverified", [(.worker, index), (.detail, error.description)])
            }
            // One thread per pooled connection: each takes a batch and holds a connection for it.
            return (try MeteringThreads(store: store, threads: store.settings.poolSize), store)
        } catch let error as StoreError {
            Log.error("worker.metering_failed", [(.worker, index), (.detail, error.description)])
            return nil
        } catch {
            Log.error("worker.metering_failed", [(.worker, index), (.detail, "cannot start a metering thread")])
            return nil
        }
    }

    /// Each open stream holds a FastCGI and an upstream connection: allow as many as the system does.
    private static func raiseDescriptorLimit() {
        var limit = rlimit()
        guard getrlimit(descriptorLimitResource, &limit) == 0 else { return }
        limit.rlim_cur = limit.rlim_max
        setrlimit(descriptorLimitResource, &limit)
    }
}

private let descriptorLimitResource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
