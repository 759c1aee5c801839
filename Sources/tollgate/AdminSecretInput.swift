#if canImport(Glibc)
    import Glibc
#endif

/// Reads a secret from standard input, never from argv (which `ps` shows to every user).
enum SecretInput {
    /// The largest input read, in bytes.
    static let limit = 65_536

    /// From a terminal: prompts on standard error and reads one line without echo. From a pipe
    /// or file: reads to the end. Surrounding whitespace and line ends are dropped; nil when
    /// nothing was read.
    static func read(prompt: String) -> String? {
        let interactive = isatty(0) == 1
        var saved = termios()
        if interactive, tcgetattr(0, &saved) == 0 {
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(0, TCSAFLUSH, &quiet)
            AdminCommand.printPrompt(prompt)
        }
        defer {
            if interactive {
                tcsetattr(0, TCSAFLUSH, &saved)
                AdminCommand.printPrompt("\n")
            }
        }
        let bytes = readInput(untilNewline: interactive)
        let text = String(decoding: bytes, as: UTF8.self)
        let trimmed = text.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed()
        return trimmed.isEmpty ? nil : String(trimmed)
    }

    private static func readInput(untilNewline: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            bytes.append(contentsOf: chunk[0..<count])
            if untilNewline && chunk[0..<count].contains(UInt8(ascii: "\n")) { break }
        }
        return bytes
    }
}

extension AdminCommand {
    /// Text on standard error without a newline or prefix (prompts).
    static func printPrompt(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }
}
