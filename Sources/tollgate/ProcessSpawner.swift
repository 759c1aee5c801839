import TollgateCore

#if canImport(Glibc)
    import Glibc
#endif

/// Starts this executable again as a child process with `posix_spawn`.
enum ProcessSpawner {
    /// Spawns `/proc/self/exe` with `arguments` and `environment`, handing it `descriptor` as
    /// descriptor `target`, with default signal dispositions and an empty signal mask (the
    /// supervisor's blocked signals must not leak into the child). Returns nil on failure.
    static func spawn(
        arguments: [String], environment: [String: String], passing descriptor: Int32, as target: Int32
    ) -> pid_t? {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, descriptor, target)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = SignalSet([SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE]).set
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let code = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, envp)
        guard code == 0 else {
            errno = code
            return nil
        }
        return pid
    }
}

/// The environment of this process as a dictionary.
enum ProcessEnvironment {
    static func current() -> [String: String] {
        NameValueBlock.parse(environ)
    }
}
