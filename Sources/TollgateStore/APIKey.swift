import TollgateCore

/// Tollgate API keys: `tg-` followed by 40 characters of [a-z0-9] (about 206 bits of
/// randomness). The store keeps only a key's SHA-256 and its display prefix.
public enum APIKey {
    public static let scheme = "tg-"
    /// Random characters after the scheme.
    public static let randomLength = 40
    /// Characters shown to identify a key in listings: the scheme and the first 7 random ones.
    public static let prefixLength = 10

    private static let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)

    /// A new key from the system's cryptographic random source.
    public static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        var characters: [UInt8] = []
        for _ in 0..<randomLength {
            // random(in:using:) draws without modulo bias.
            characters.append(alphabet[Int.random(in: 0..<alphabet.count, using: &generator)])
        }
        return scheme + String(decoding: characters, as: UTF8.self)
    }

    /// Whether `text` has the exact shape of a Tollgate key; anything else is refused without
    /// asking the database.
    public static func isWellFormed(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == scheme.utf8.count + randomLength, text.hasPrefix(scheme) else { return false }
        return bytes.dropFirst(scheme.utf8.count).allSatisfy { byte in
            (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
        }
    }

    /// The SHA-256 the store looks a key up by.
    public static func hash(_ key: String) -> [UInt8] {
        SHA256.hash(key)
    }

    /// The hash as a PostgreSQL bytea literal in hex format (`\x…`), for a text-format parameter.
    public static func byteaLiteral(_ hash: [UInt8]) -> String {
        "\\x" + SHA256.hex(hash)
    }

    /// What listings show of a key: enough to tell keys apart, far too little to use one.
    public static func prefix(of key: String) -> String {
        String(key.prefix(prefixLength))
    }
}
