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
    let settings: ServeSettings
    let socket: ListeningSocket
    let signals = SignalSet([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
    /// Worker pid per slot; 0 while a slot waits to be refilled.
    private var slots: [pid_t]
    private var lastStart: [ContinuousClock.Instant]
    private var stopping = false
    /// When workers still running after SIGTERM are killed: grace plus a margin.
    private var killDeadline: ContinuousClock.Instant?

    init(settings: ServeSettings, socket: ListeningSocket) {
        self.settings = settings
        self.socket = socket
        self.slots = Array(repeating: 0, count: settings.workers)
        self.lastStart = Array(repeating: .now, count: settings.workers)
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
        while !stopping || slots.contains(where: { $0 > 0 }) {
            let signal = signals.wait(milliseconds: 250)
            if signal == SIGTERM || signal == SIGINT { beginStop(signal: signal ?? SIGTERM) }
            reapWorkers()
            if !stopping { refillSlots() }
            if let deadline = killDeadline, ContinuousClock.now >= deadline {
                // A worker that outlives its grace by this much is stuck; end it.
                for pid in slots where pid > 0 { kill(pid, SIGKILL) }
                killDeadline = nil
            }
        }
        Log.info("serve.stopped")
        return 0
    }

    private func beginStop(signal: Int32) {
        guard !stopping else { return }
        stopping = true
        Log.info("serve.stopping", [(.signal, String(signal))])
        socket.unlinkPath()
        for pid in slots where pid > 0 { kill(pid, SIGTERM) }
        killDeadline = ContinuousClock.now + settings.grace + .seconds(5)
    }

    private func reapWorkers() {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            guard pid > 0 else { return }
            guard let slot = slots.firstIndex(of: pid) else { continue }
            slots[slot] = 0
            let level: LogLevel = stopping ? .info : .warning
            Log.write(
                level, "worker.exited", [(.worker, String(slot)), (.pid, String(pid)), (.exitStatus, describe(status))])
        }
    }

    private func refillSlots() {
        for slot in slots.indices where slots[slot] == 0 {
            // A worker that dies right after starting would otherwise be restarted in a tight loop.
            if ContinuousClock.now - lastStart[slot] < .milliseconds(200) { continue }
            spawn(slot)
        }
    }

    private func spawn(_ slot: Int) {
        lastStart[slot] = .now
        var environment = ProcessEnvironment.current()
        for (name, value) in settings.environment { environment[name] = value }
        environment["TOLLGATE_WORKER_INDEX"] = String(slot)
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

    private func describe(_ status: Int32) -> String {
        let signal = status & 0x7F
        return signal == 0 ? "exit \((status >> 8) & 0xFF)" : "signal \(signal)"
    }
}
