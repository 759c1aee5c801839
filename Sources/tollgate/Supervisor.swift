import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// The `tollgate serve` process: owns the listening socket, keeps `workers` worker processes
/// running (replacing any that dies), and on SIGTERM or SIGINT stops them gracefully.
///
/// Workers are this executable started again as `tollgate worker`, with the socket as
/// descriptor 3 and the resolved settings in their environment.
final class Supervisor {
    private(set) var settings: ServeSettings
    /// The command line of `serve`, re-applied over the re-read settings file on SIGHUP.
    let arguments: [String]
    let socket: ListeningSocket
    let signals = SignalSet([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
    /// Reaches the metering store, when there is one.
    let registry: (any WorkerRegistry)?
    /// Worker pid per slot; 0 while a slot waits to be refilled.
    private var slots: [pid_t]
    private var lastStart: [ContinuousClock.Instant]
    /// The id of the worker in each slot, unique across restarts and machines.
    private var workerIDs: [String]
    private var generation = 0
    /// Workers that exited and whose reservations are not yet released (the store may be down).
    private var unreleased: [String] = []
    private var nextMaintenance = ContinuousClock.now
    /// Workers replaced by a reload, finishing their in-flight requests; their kill deadline.
    private var retiring: [pid_t: (workerID: String, deadline: ContinuousClock.Instant)] = [:]
    private var stopping = false
    /// When workers still running after SIGTERM are killed: grace plus a margin.
    private var killDeadline: ContinuousClock.Instant?

    init(settings: ServeSettings, arguments: [String], socket: ListeningSocket, registry: (any WorkerRegistry)?) {
        self.settings = settings
        self.arguments = arguments
        self.socket = socket
        self.registry = registry
        self.slots = Array(repeating: 0, count: settings.workers)
        self.lastStart = Array(repeating: .now, count: settings.workers)
        self.workerIDs = Array(repeating: "", count: settings.workers)
    }

    /// Runs until the pool has stopped; returns the process exit status.
    func run() -> Int32 {
        signals.block()
        for slot in slots.indices { spawn(slot) }
        Log.info(
            "serve.started",
            [
                (.socket, settings.socket), (.workers, String(settings.workers)), (.threads, String(settings.threads)),
                (.upstream, settings.upstreamURL),
            ])
        while !stopping || slots.contains(where: { $0 > 0 }) || !retiring.isEmpty {
            let signal = signals.wait(milliseconds: 250)
            if signal == SIGTERM || signal == SIGINT { beginStop(signal: signal ?? SIGTERM) }
            if signal == SIGHUP && !stopping { reload() }
            reapWorkers()
            releaseExitedWorkers()
            if !stopping { refillSlots() }
            if !stopping && ContinuousClock.now >= nextMaintenance { maintain() }
            for (pid, worker) in retiring where ContinuousClock.now >= worker.deadline {
                kill(pid, SIGKILL)
            }
            if let deadline = killDeadline, ContinuousClock.now >= deadline {
                // A worker that outlives its grace by this much is stuck; end it.
                for pid in slots where pid > 0 { kill(pid, SIGKILL) }
                for pid in retiring.keys { kill(pid, SIGKILL) }
                killDeadline = nil
            }
        }
        releaseExitedWorkers()
        Log.info("serve.stopped")
        return 0
    }

    private func beginStop(signal: Int32) {
        guard !stopping else { return }
        stopping = true
        Log.info("serve.stopping", [(.signal, String(signal))])
        socket.unlinkPath()
        for pid in slots where pid > 0 { kill(pid, SIGTERM) }
        for pid in retiring.keys { kill(pid, SIGTERM) }
        killDeadline = ContinuousClock.now + settings.grace + .seconds(5)
    }

    private func reapWorkers() {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            guard pid > 0 else { return }
            if let worker = retiring.removeValue(forKey: pid) {
                unreleased.append(worker.workerID)
                Log.info("worker.retired", [(.pid, String(pid)), (.exitStatus, describe(status))])
                continue
            }
            guard let slot = slots.firstIndex(of: pid) else { continue }
            slots[slot] = 0
            unreleased.append(workerIDs[slot])
            let level: LogLevel = stopping ? .info : .warning
            Log.write(
                level, "worker.exited", [(.worker, String(slot)), (.pid, String(pid)), (.exitStatus, describe(status))])
        }
    }

    /// SIGHUP: re-reads the settings (environment, settings file, flags) and replaces every
    /// worker by one with the new settings. The old workers stop accepting and finish what they
    /// serve within the grace period, while the new ones already accept on the same socket, so
    /// no admitted request is dropped. A new socket address needs a restart.
    private func reload() {
        let renewed: ServeSettings
        do {
            renewed = try ServeSettings.resolve(arguments: arguments, environment: ProcessEnvironment.current())
        } catch {
            Log.error("serve.reload_failed", [(.detail, error.description)])
            return
        }
        if renewed.socket != settings.socket || renewed.socketMode != settings.socketMode {
            Log.warning("serve.reload_socket_unchanged", [(.socket, settings.socket)])
        }
        let deadline = ContinuousClock.now + renewed.grace + .seconds(5)
        for (slot, pid) in slots.enumerated() where pid > 0 {
            retiring[pid] = (workerIDs[slot], deadline)
            // Retire rather than stop: its connections stay open until nginx has moved on.
            kill(pid, SIGUSR1)
        }
        settings = renewed
        settings.socket = socket.path ?? settings.socket
        slots = Array(repeating: 0, count: renewed.workers)
        lastStart = Array(repeating: .now, count: renewed.workers)
        workerIDs = Array(repeating: "", count: renewed.workers)
        for slot in slots.indices { spawn(slot) }
        Log.info("serve.reloaded", [(.workers, String(renewed.workers)), (.threads, String(renewed.threads))])
    }

    /// Frees the reservations of exited workers; what fails is retried on the next turn.
    private func releaseExitedWorkers() {
        guard let registry, !unreleased.isEmpty else { return }
        do {
            while let workerID = unreleased.first {
                try registry.releaseWorker(workerID)
                unreleased.removeFirst()
            }
        } catch {
            Log.warning("worker.release_failed", [(.detail, String(describing: error))])
        }
    }

    /// Heartbeats this machine's workers and releases the reservations of any machine's workers
    /// that stopped beating, so a dead machine's reservations do not hold quota forever.
    private func maintain() {
        nextMaintenance = ContinuousClock.now + Self.heartbeatInterval
        guard let registry else { return }
        do {
            try registry.heartbeat(zip(slots, workerIDs).filter { $0.0 > 0 }.map(\.1))
            try registry.sweepStaleWorkers(olderThan: Self.heartbeatInterval * 6)
        } catch {
            Log.warning("worker.heartbeat_failed", [(.detail, String(describing: error))])
        }
    }

    static let heartbeatInterval = Duration.seconds(10)

    private func refillSlots() {
        for slot in slots.indices where slots[slot] == 0 {
            // A worker that dies right after starting would otherwise be restarted in a tight loop.
            if ContinuousClock.now - lastStart[slot] < .milliseconds(200) { continue }
            spawn(slot)
        }
    }

    private func spawn(_ slot: Int) {
        lastStart[slot] = .now
        generation += 1
        workerIDs[slot] = "\(Self.hostName)/\(getpid())/\(slot)/\(generation)"
        var environment = ProcessEnvironment.current()
        environment.merge(settings.fileEntries) { $1 }
        for (name, value) in settings.environment { environment[name] = value }
        // The file is already merged: a worker reading it again would let it override flags.
        environment["TOLLGATE_SETTINGS_FILE"] = nil
        // A crash report must not print memory around the registers: it may hold a key or
        // prompt text. Operators can still choose their own setting.
        environment["SWIFT_BACKTRACE"] = environment["SWIFT_BACKTRACE"] ?? "registers=none,sanitize=yes"
        environment["TOLLGATE_WORKER_INDEX"] = String(slot)
        environment["TOLLGATE_WORKER_ID"] = workerIDs[slot]
        environment["TOLLGATE_LISTEN_FD"] = String(WorkerProcess.listenDescriptor)
        guard
            let pid = ProcessSpawner.spawn(
                arguments: ["tollgate", "worker"], environment: environment,
                passing: socket.descriptor, as: WorkerProcess.listenDescriptor)
        else {
            Log.error("worker.spawn_failed", [(.worker, String(slot)), (.detail, String(errno))])
            return
        }
        slots[slot] = pid
        Log.info("worker.started", [(.worker, String(slot)), (.pid, String(pid))])
    }

    static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func describe(_ status: Int32) -> String {
        let signal = status & 0x7F
        return signal == 0 ? "exit \((status >> 8) & 0xFF)" : "signal \(signal)"
    }
}
