#if canImport(Glibc)
    import Glibc
#endif

/// The id of this worker process in `tollgate.reservations` and `tollgate.workers`: the one its
/// supervisor gave it in TOLLGATE_WORKER_ID, else `host:pid`. Either way unique across the
/// machines sharing a database and new whenever a worker process is replaced, so that releasing
/// a dead worker frees exactly its own reservations.
public enum WorkerIdentity {
    public static func current(environment: [String: String] = [:]) -> String {
        if let given = environment["TOLLGATE_WORKER_ID"], !given.isEmpty { return given }
        return "\(hostName()):\(getpid())"
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }
}
