#if canImport(Glibc)
    import Glibc
#endif

/// The socket nginx connects to, created by the supervisor and inherited by every worker.
struct ListeningSocket {
    let descriptor: Int32
    /// The unix socket's path, removed at shutdown; nil for TCP.
    let path: String?

    /// Listens on a unix socket path (a stale socket file is replaced) or on `HOST:PORT`.
    static func open(_ address: String, mode: Int, backlog: Int32 = 4096) throws(SettingsError) -> ListeningSocket {
        if address.hasPrefix("/") || address.hasPrefix(".") || !address.contains(":") {
            return try openUnix(address, mode: mode, backlog: backlog)
        }
        return try openTCP(address, backlog: backlog)
    }

    private static func openUnix(_ path: String, mode: Int, backlog: Int32) throws(SettingsError) -> ListeningSocket {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else { throw SettingsError(description: "TOLLGATE_SOCKET: path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (offset, byte) in path.utf8.enumerated() { raw[offset] = byte }
        }
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !directory.isEmpty { mkdir(directory, 0o755) }
        unlink(path)

        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw failure("socket") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw failure("cannot bind \(path)") }
        guard chmod(path, mode_t(mode)) == 0, listen(descriptor, backlog) == 0 else {
            throw failure("cannot listen on \(path)")
        }
        return ListeningSocket(descriptor: descriptor, path: path)
    }

    private static func openTCP(_ address: String, backlog: Int32) throws(SettingsError) -> ListeningSocket {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw SettingsError(description: "TOLLGATE_SOCKET: expected a path or HOST:PORT, got '\(address)'")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &found) == 0, let info = found else {
            throw SettingsError(description: "TOLLGATE_SOCKET: '\(host)' is not a numeric address")
        }
        defer { freeaddrinfo(found) }
        let descriptor = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw failure("socket") }
        var one: Int32 = 1
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(descriptor, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(descriptor, backlog) == 0
        else { throw failure("cannot listen on \(address)") }
        return ListeningSocket(descriptor: descriptor, path: nil)
    }

    private static func failure(_ what: String) -> SettingsError {
        SettingsError(description: "TOLLGATE_SOCKET: \(what): \(String(cString: strerror(errno)))")
    }

    /// Removes the socket file, so nginx's new connections fail at once instead of queueing.
    func unlinkPath() {
        if let path { unlink(path) }
    }
}
