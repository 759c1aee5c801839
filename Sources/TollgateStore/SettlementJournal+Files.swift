import TollgateCore

#if canImport(Glibc)
    import Glibc
#endif

/// The system calls under the journal: names, directories, whole-line writes, locks.
extension SettlementJournal {
    /// The longest part of a file name taken from the worker id, in bytes.
    static let maximumNameBytes = 80

    /// `<worker id with anything but [A-Za-z0-9._-] as '_'>-<8 hex digits of its SHA-256>`.
    static func fileName(forWorker workerID: String) -> String {
        let safe = workerID.utf8.prefix(maximumNameBytes).map { byte -> UInt8 in
            let isLetter = (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            let isKept = isLetter || (byte >= 0x30 && byte <= 0x39) || byte == 0x2E || byte == 0x5F || byte == 0x2D
            return isKept ? byte : 0x5F
        }
        // A leading dot would hide the file (and mark it as being created).
        let name = String(decoding: safe, as: UTF8.self).replacingLeadingDots()
        return name + "-" + String(SHA256.hex(SHA256.hash(workerID)).prefix(8))
    }

    /// The journal directory of a deployment without TOLLGATE_JOURNAL_DIR: /var/lib/tollgate/journal
    /// when /var/lib/tollgate exists and is writable, else `$TMPDIR/tollgate-journal` (`/tmp`
    /// without TMPDIR), which may not survive a reboot.
    public static func defaultDirectory(environment: [String: String]) -> String {
        if access("/var/lib/tollgate", W_OK | X_OK) == 0 { return "/var/lib/tollgate/journal" }
        let temporary = environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        return (temporary.hasSuffix("/") ? String(temporary.dropLast()) : temporary) + "/tollgate-journal"
    }

    /// Creates `path` and missing parents (mode 0700); an existing directory is fine.
    static func makeDirectory(_ path: String) throws(StoreError) {
        var built = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            built += "/" + component
            if mkdir(built, 0o700) != 0 && errno != EEXIST { throw failure("mkdir", path: built) }
        }
        var status = stat()
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
            throw StoreError(.invalidSetting, "the journal directory \(path) is not a directory")
        }
    }

    /// Writes `bytes` (one line or several) whole. A write cut short (disk full) is ended with a
    /// newline, so that only the line it cut is unreadable and the next one starts clean.
    static func writeLine(_ bytes: [UInt8], to descriptor: Int32) throws(StoreError) {
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { buffer in
                write(descriptor, buffer.baseAddress.map { $0 + written }, buffer.count - written)
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                let code = errno
                if written > 0 { _ = "\n".withCString { write(descriptor, $0, 1) } }
                throw StoreError(.invalidSetting, "writing the settlement journal failed: \(describe(code))")
            }
            written += count
        }
    }

    /// Makes a file's creation, renaming or removal durable.
    static func syncDirectory(_ path: String) {
        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        fsync(descriptor)
        Glibc.close(descriptor)
    }

    /// Names of the entries of `path` (not `.` and `..`); empty when it cannot be read.
    static func names(in path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) { pointer in
                String(cString: UnsafeRawPointer(pointer).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Opens and locks another process's journal file when that process is gone (its lock is
    /// free); nil when the file is locked by a live worker, or was removed meanwhile.
    static func lockOrphan(_ path: String) -> LockedFile? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        var opened = stat()
        var named = stat()
        // The lock may come free because its owner just replayed and removed the file: only a
        // file still under its name is an orphan.
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0, fstat(descriptor, &opened) == 0, opened.st_nlink > 0,
            stat(path, &named) == 0, named.st_ino == opened.st_ino, named.st_dev == opened.st_dev
        else {
            Glibc.close(descriptor)
            return nil
        }
        return LockedFile(descriptor: descriptor, path: path)
    }

    static func failure(_ call: String, path: String) -> StoreError {
        StoreError(.invalidSetting, "settlement journal: \(call) \(path) failed: \(describe(errno))")
    }

    static func describe(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text)
    }
}

extension String {
    fileprivate func replacingLeadingDots() -> String {
        guard let first = utf8.first, first == UInt8(ascii: ".") else { return self }
        return "_" + dropFirst()
    }
}
