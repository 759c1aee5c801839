import Synchronization
import TollgateCore
import TollgateProxy

#if canImport(Glibc)
    import Glibc
#endif

/// The local, durable record of settlements the database could not take while it was down:
/// appended and synced to disk before the request counts as settled, then replayed into
/// `tollgate.settle` (idempotent by request id) once the database answers again.
///
/// One directory per deployment (TOLLGATE_JOURNAL_DIR); in it, each worker process writes files
/// named from its worker id, `<name>.<n>.journal`, created at its first journaled settlement and
/// held under an exclusive `flock` until they are replayed and deleted, so an empty directory
/// means nothing is waiting. Replay seals the file being appended to (renamed
/// `<name>.<n>.replay`; the next append opens a fresh one), replays it and deletes it. A file
/// whose lock can be taken belongs to a worker that died: any worker adopts and replays it.
///
/// Shared by a worker's threads. `append` blocks its thread for one `write(2)` and one
/// `fdatasync` per call, whatever the number of settlements, serialised by a mutex; replays are
/// serialised by another, so appends never wait on the database.
public final class SettlementJournal: Sendable {
    /// A journal file this process holds open and locked.
    struct LockedFile: Sendable {
        var descriptor: Int32
        var path: String
        /// Bytes of the file already replayed (a replay interrupted by a new outage resumes there).
        var replayedOffset: Int64 = 0
    }

    struct State: Sendable {
        /// The file appends go to; nil until the first append after the last seal.
        var current: LockedFile?
        /// Sealed files waiting for their replay, oldest first.
        var sealed: [LockedFile] = []
        var isClosed = false
        /// `fdatasync` calls made by appends, for tests and diagnostics.
        var syncs = 0
    }

    public let directory: String
    public let workerID: String
    /// The worker id made safe for a file name, plus a hash of it (two ids never share a name).
    let baseName: String
    let state = Mutex(State())
    /// Held for the whole of a replay, so that two never run at once.
    let replaying = Mutex(0)

    /// Opens (creating it when missing, mode 0700) the journal directory for this worker. Writes
    /// no file yet. Fails when the directory cannot be created or written to.
    public init(directory: String, workerID: String) throws(StoreError) {
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        self.workerID = workerID
        self.baseName = Self.fileName(forWorker: workerID)
        try Self.makeDirectory(self.directory)
        guard access(self.directory, W_OK | X_OK) == 0 else {
            throw StoreError(.invalidSetting, "the journal directory \(self.directory) is not writable")
        }
    }

    deinit {
        close()
    }

    /// Records `settlement` durably: one line, one `write(2)` on an O_APPEND descriptor, then
    /// `fdatasync`. When this returns, the settlement survives a crash of the process or the machine.
    public func append(_ settlement: Settlement) throws(StoreError) {
        try append([settlement])
    }

    /// Records `settlements` durably together: one line each, all in one `write(2)`, then ONE
    /// `fdatasync`. When this returns, every one survives a crash; when it throws, the lines
    /// before a short write may still have reached the file (a replay counts each at most once).
    public func append(_ settlements: [Settlement]) throws(StoreError) {
        guard !settlements.isEmpty else { return }
        let bytes = Array(settlements.map { SettlementJournalEntry($0).line }.joined().utf8)
        try state.withLock { state throws(StoreError) in
            guard !state.isClosed else { throw StoreError(.invalidSetting, "the settlement journal is closed") }
            if state.current == nil { state.current = try createFile() }
            guard let file = state.current else { return }
            try Self.writeLine(bytes, to: file.descriptor)
            state.syncs += 1
            guard fdatasync(file.descriptor) == 0 else { throw Self.failure("fdatasync", path: file.path) }
        }
    }

    /// `fdatasync` calls made by appends so far.
    var syncCount: Int {
        state.withLock { $0.syncs }
    }

    /// Releases every file and lock as the death of the process would: files stay, and the next
    /// replay of any other journal on this directory adopts them. Further appends fail.
    public func close() {
        let files = state.withLock { state in
            state.isClosed = true
            let files = (state.current.map { [$0] } ?? []) + state.sealed
            state.current = nil
            state.sealed = []
            return files
        }
        for file in files { Glibc.close(file.descriptor) }
    }

    /// Whether this process has settlements in the journal not replayed yet.
    public var hasEntries: Bool {
        state.withLock { $0.current != nil || !$0.sealed.isEmpty }
    }

    /// Stops appends to the current file: renames it `….replay` and queues it for replay; the
    /// next append creates a new file. False when there was nothing to seal.
    func seal() -> Bool {
        state.withLock { state in
            guard var file = state.current else { return false }
            let sealedPath = String(file.path.dropLast(".journal".count)) + ".replay"
            // Still locked by us, so no other worker adopts it under either name.
            if rename(file.path, sealedPath) == 0 {
                file.path = sealedPath
                Self.syncDirectory(directory)
            }
            state.current = nil
            state.sealed.append(file)
            return true
        }
    }

    /// A new file, locked before it gets a name another worker's replay would look at: an
    /// unlocked `.journal` file counts as a dead worker's and is adopted.
    private func createFile() throws(StoreError) -> LockedFile {
        // An operator may have removed the directory since start-up.
        try Self.makeDirectory(directory)
        var number = WallClock.nowMicroseconds()
        let temporary = "\(directory)/.\(baseName).\(number).creating"
        let descriptor = open(temporary, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw Self.failure("open", path: temporary) }
        defer { unlink(temporary) }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            Glibc.close(descriptor)
            throw Self.failure("flock", path: temporary)
        }

        // link() never replaces an existing file, unlike rename().
        while true {
            let path = "\(directory)/\(baseName).\(number).journal"
            if link(temporary, path) == 0 {
                Self.syncDirectory(directory)
                return LockedFile(descriptor: descriptor, path: path)
            }
            guard errno == EEXIST else {
                Glibc.close(descriptor)
                throw Self.failure("link", path: path)
            }
            number += 1
        }
    }
}
