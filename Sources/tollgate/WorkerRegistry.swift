/// What the supervisor needs from the metering store so that reservations never outlive the
/// worker that made them: liveness of its workers, and the release of a dead worker's
/// reservations (which records its in-flight requests in the ledger as lost).
protocol WorkerRegistry {
    /// Marks these workers alive now.
    func heartbeat(_ workerIDs: [String]) throws
    /// Releases every reservation of a worker that has exited. Idempotent.
    func releaseWorker(_ workerID: String) throws
    /// Releases the reservations of workers on any machine whose heartbeat is older than `age`.
    func sweepStaleWorkers(olderThan age: Duration) throws
}
