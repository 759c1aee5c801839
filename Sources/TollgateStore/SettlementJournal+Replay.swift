import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// Replaying journaled settlements into the database: this worker's own files, then the files
/// of workers that died. Lines go to `settle` in chunks of up to `replayChunkSize` (one round trip
/// each); it is idempotent by request id, so a replay interrupted at any point (a new outage, a
/// crash) is simply run again.
extension SettlementJournal {
    /// Records a batch of settlements and answers each, in order: whether its ledger row is new,
    /// or why it was not recorded (`PostgresMetering.record`). Blocks for a round trip.
    public typealias Settle = ([Settlement]) -> [Result<Bool, StoreError>]

    /// Journal lines sent to `settle` at once.
    static let replayChunkSize = 64

    /// A line read and parsed, waiting in a chunk.
    private struct PendingLine {
        var settlement: Settlement
        var text: Substring
        /// File offset where the line starts: where a replay stopped by an outage resumes.
        var start: Int64
    }

    /// What one replay did.
    public struct Report: Sendable, Equatable {
        /// Lines that became ledger rows now.
        public var settled = 0
        /// Lines whose request was already in the ledger (replayed before, or settled directly).
        public var duplicates = 0
        /// Lines the database refused, or that could not be read; kept in a `.rejected` file.
        public var rejected = 0
        /// Files replayed to the end and deleted.
        public var filesDone = 0
        /// Other workers' files taken over.
        public var adopted = 0
        /// The failure that stopped the replay (the database is still or again unreachable).
        public var failure: StoreError?

        public init() {}
    }

    /// Replays every journal file this worker may replay, stopping at the first failure that
    /// says the database is unavailable. Blocks for `settle`'s round trips.
    public func replay(using settle: Settle) -> Report {
        replaying.withLock { _ in
            var report = Report()
            replaySealed(into: &report, settle)
            if report.failure == nil && seal() {
                replaySealed(into: &report, settle)
            }
            if report.failure == nil {
                adoptOrphans(into: &report, settle)
            }
            log(report)
            return report
        }
    }

    private func log(_ report: Report) {
        guard report.settled + report.duplicates + report.rejected > 0 else { return }
        let summary =
            "\(report.settled) settled, \(report.duplicates) already in the ledger, \(report.rejected) rejected, "
            + "\(report.filesDone) files done"
        Log.info("journal.replayed", [(.worker, workerID), (.detail, summary)])
    }

    private func replaySealed(into report: inout Report, _ settle: Settle) {
        let files = state.withLock { state in
            let files = state.sealed
            state.sealed = []
            return files
        }
        var left: [LockedFile] = []
        for var file in files {
            if report.failure == nil, let resumeAt = replayFile(file, &report, settle) {
                file.replayedOffset = resumeAt
            }
            if report.failure == nil {
                finish(file, &report)
            } else {
                left.append(file)
            }
        }
        state.withLock { state in
            if state.isClosed {
                for file in left { Glibc.close(file.descriptor) }
            } else {
                state.sealed = left + state.sealed
            }
        }
    }

    /// For the supervisor, before it releases the reservations of a worker that exited: replays
    /// the journal files that worker left in `directory`, so that its journaled settlements, not
    /// `worker_lost` estimates, become the ledger rows of its requests. Throws what stopped the
    /// replay (the database is down), or when another worker is replaying one of those files
    /// right now; the release must then wait and be tried again.
    public static func replayLeftovers(
        ofWorker workerID: String, directory: String, using settle: Settle
    ) throws(StoreError) -> Report {
        let prefix = fileName(forWorker: workerID) + "."
        guard names(in: directory).contains(where: { isJournalFile($0) && $0.hasPrefix(prefix) }) else {
            return Report()
        }
        let journal = try SettlementJournal(directory: directory, workerID: "leftovers of " + workerID)
        let (report, busy) = journal.replaying.withLock { _ in
            var report = Report()
            let busy = journal.adoptOrphans(into: &report, settle, only: prefix)
            return (report, busy)
        }
        if let failure = report.failure { throw failure }
        guard busy == 0 else {
            throw StoreError(.timeout, "another worker is replaying the journal of worker \(workerID)")
        }
        return report
    }

    /// Replays the unlocked journal files of dead workers (those starting with `only`, when
    /// given), one at a time, under their lock. Returns how many were locked by a live process.
    @discardableResult
    private func adoptOrphans(
        into report: inout Report, _ settle: Settle, only prefix: String? = nil
    ) -> Int {
        var busy = 0
        // Limitation: an orphan is replayed into this worker's database, whichever database its
        // worker wrote for: two deployments on different databases must not share a directory.
        for name in Self.names(in: directory) where Self.isJournalFile(name) && !name.hasPrefix(baseName + ".") {
            guard report.failure == nil, prefix.map({ name.hasPrefix($0) }) ?? true else { continue }
            guard let file = Self.lockOrphan("\(directory)/\(name)") else {
                if access("\(directory)/\(name)", F_OK) == 0 { busy += 1 }
                continue
            }
            Log.warning("journal.adopted", [(.path, file.path), (.worker, workerID)])
            report.adopted += 1
            _ = replayFile(file, &report, settle)
            if report.failure == nil {
                finish(file, &report)
            } else {
                Glibc.close(file.descriptor)
            }
        }
        return busy
    }

    /// Deletes a file whose every line is in the ledger (or rejected), then drops its lock.
    private func finish(_ file: LockedFile, _ report: inout Report) {
        unlink(file.path)
        Self.syncDirectory(directory)
        Glibc.close(file.descriptor)
        report.filesDone += 1
    }

    /// `<name>` of `<dir>/<name>.<n>.journal` or `.replay`: whose file it is.
    static func stem(of path: String) -> String {
        var name = path.split(separator: "/").last.map(String.init) ?? path
        for _ in 0..<2 {
            guard let dot = name.lastIndex(of: ".") else { break }
            name = String(name[..<dot])
        }
        return name
    }

    static func isJournalFile(_ name: String) -> Bool {
        !name.hasPrefix(".") && (name.hasSuffix(".journal") || name.hasSuffix(".replay"))
    }

    /// Replays `file` from its replayed offset to its end, in chunks of lines. Returns the offset
    /// to resume from when a failure stopped it (then `report.failure` is set), nil when done.
    private func replayFile(_ file: LockedFile, _ report: inout Report, _ settle: Settle) -> Int64? {
        var reader = SettlementJournalReader(descriptor: file.descriptor, offset: file.replayedOffset)
        var chunk: [PendingLine] = []
        while let (line, start) = reader.nextLine() {
            guard let entry = line.isComplete ? SettlementJournalEntry(line: line.text) : nil else {
                // The chunk goes first, so that a resumed replay never meets this line twice.
                if let resumeAt = replayChunk(chunk, of: file, &report, settle) { return resumeAt }
                chunk = []
                reject(line.text, of: file, requestID: nil, reason: "unreadable line", &report)
                if report.failure != nil { return start }
                continue
            }
            chunk.append(PendingLine(settlement: entry.settlement, text: line.text, start: start))
            if chunk.count == Self.replayChunkSize {
                if let resumeAt = replayChunk(chunk, of: file, &report, settle) { return resumeAt }
                chunk = []
            }
        }
        if let resumeAt = replayChunk(chunk, of: file, &report, settle) { return resumeAt }
        if let failure = reader.failure {
            report.failure = failure
            return reader.offset
        }
        return nil
    }

    /// Settles `chunk` in one batch and counts the answers; lines the database refuses are set
    /// aside. Returns the offset to resume from when an outage stopped it, nil when all were taken.
    private func replayChunk(
        _ chunk: [PendingLine], of file: LockedFile, _ report: inout Report, _ settle: Settle
    ) -> Int64? {
        guard let first = chunk.first else { return nil }
        // Limitation: if a request's reservation was released first (its worker exited, or another
        // machine swept this one after a database outage longer than the sweep age), its estimated
        // worker_lost row is already in the append-only ledger and its line only counts as a duplicate.
        let results = settle(chunk.map(\.settlement))
        guard results.count == chunk.count else {
            report.failure = StoreError(
                .unexpectedResult, "a replayed chunk of \(chunk.count) got \(results.count) answers")
            return first.start
        }
        for (line, result) in zip(chunk, results) {
            switch result {
            case .success(true): report.settled += 1
            case .success(false): report.duplicates += 1
            case .failure(let error) where OutagePolicy.isOutage(error):
                report.failure = error
                return line.start
            case .failure(let error):
                reject(line.text, of: file, requestID: line.settlement.requestID, reason: error.description, &report)
                if report.failure != nil { return line.start }
            }
        }
        return nil
    }

    /// Keeps a line the database will never take in `<file>.rejected` beside the journal, for an
    /// operator; the rest of the file goes on. A line that cannot be kept stops the replay.
    private func reject(
        _ text: Substring, of file: LockedFile, requestID: String?, reason: String, _ report: inout Report
    ) {
        let path = "\(directory)/\(Self.stem(of: file.path)).rejected"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        defer { if descriptor >= 0 { Glibc.close(descriptor) } }
        do throws(StoreError) {
            guard descriptor >= 0 else { throw Self.failure("open", path: path) }
            try Self.writeLine(Array((text + "\n").utf8), to: descriptor)
            guard fdatasync(descriptor) == 0 else { throw Self.failure("fdatasync", path: path) }
        } catch {
            report.failure = error
            return
        }
        report.rejected += 1
        Log.error(
            "journal.line_rejected", [(.requestID, requestID ?? "-"), (.path, path), (.detail, reason)])
    }
}
