import TollgateStore

/// `tollgate key issue | revoke` and `tollgate byok set | clear`.
extension AdminCommand {
    static let keyUsage = """
        usage: tollgate key issue USER
               tollgate key revoke KEY_ID

        issue    creates an API key for USER and prints it, with its id and prefix. The key is
                 shown this once: only its SHA-256 and prefix are stored.
        revoke   stops the key with that id at once.

        """

    static let byokUsage = """
        usage: tollgate byok set USER < key-file
               tollgate byok clear USER

        set      stores USER's own provider key (bring your own key), read from standard input
                 (never from the command line), encrypted in the database with TOLLGATE_SECRET.
                 That user's requests then go upstream with it and count against no quota.
                 tollgate serve needs the same TOLLGATE_SECRET to use it.
        clear    removes it: the user's requests use the platform key (and quota) again.

        """

    static func key(_ arguments: [String]) throws(AdminFailure) {
        if helped(arguments, keyUsage) { return }
        let parsed = try AdminArguments(arguments)
        switch parsed.positionals.first {
        case "issue":
            let name = try userName(parsed.positionals(2, naming: "user name")[1])
            let store = AdminStore(connection: try connect())
            let issued = try Self.store { () throws(StoreError) in try store.issueKey(for: name) }
            // The key alone on the first line, for scripts: `tollgate key issue bob | head -n 1`.
            print("\(issued.key)\nid: \(issued.id)\nprefix: \(issued.prefix)")
            printError("store the key now: it cannot be shown again")
        case "revoke":
            let text = try parsed.positionals(2, naming: "key id")[1]
            guard let id = Int(text), id > 0 else { throw .usage("invalid key id '\(text)'") }
            let store = AdminStore(connection: try connect())
            let changed = try Self.store { () throws(StoreError) in try store.revokeKey(id: id) }
            print(changed ? "revoked key \(id)" : "key \(id) was already revoked")
        case let action?:
            throw .usage("unknown action '\(action)': issue or revoke")
        case nil:
            throw .usage("missing action: issue or revoke")
        }
    }

    static func byok(_ arguments: [String]) throws(AdminFailure) {
        if helped(arguments, byokUsage) { return }
        let parsed = try AdminArguments(arguments)
        switch parsed.positionals.first {
        case "set":
            try setBYOKKey(parsed)
        case "clear":
            let name = try userName(parsed.positionals(2, naming: "user name")[1])
            let store = AdminStore(connection: try connect())
            let removed = try Self.store { () throws(StoreError) in try store.clearBYOKKey(for: name) }
            print(removed ? "removed the BYOK key of \(name)" : "\(name) has no BYOK key")
        case let action?:
            throw .usage("unknown action '\(action)': set or clear")
        case nil:
            throw .usage("missing action: set or clear")
        }
    }

    private static func setBYOKKey(_ parsed: AdminArguments) throws(AdminFailure) {
        // A key typed on the command line must not be echoed back in an error line.
        guard parsed.positionals.count <= 2 else {
            throw .usage("byok set takes only USER: the key is read from standard input, never from arguments")
        }
        let name = try userName(parsed.positionals(2, naming: "user name")[1])
        guard let secret = ProcessEnvironment.current()["TOLLGATE_SECRET"], !secret.isEmpty else {
            throw .failed(
                "TOLLGATE_SECRET is not set; it is required to store a BYOK key (and tollgate serve needs it)")
        }

        let key = try providerKey(SecretInput.read(prompt: "provider key for \(name) (not shown): "))
        let store = AdminStore(connection: try connect())
        let hint = try Self.store { () throws(StoreError) in try store.setBYOKKey(for: name, key: key, secret: secret) }
        print("stored the BYOK key of \(name) (…\(hint))")
    }

    /// A provider key as it goes into an Authorization header: printable ASCII, no spaces.
    private static func providerKey(_ text: String?) throws(AdminFailure) -> String {
        guard let text, !text.isEmpty else { throw .failed("no key on standard input") }
        guard text.utf8.count <= 1024, text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw .failed("the key on standard input is not printable ASCII without spaces (at most 1024 characters)")
        }
        return text
    }
}
