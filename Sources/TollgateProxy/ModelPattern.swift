/// A model name pattern of the allowlist: `*` matches any run of characters, everything else
/// matches itself (`gpt-4o*`, `*-mini`, `o3`).
public struct ModelPattern: Sendable, Equatable {
    /// The pattern as written.
    public let text: String
    let pieces: [Substring]

    public init(_ pattern: String) {
        text = pattern
        pieces = pattern.split(separator: "*", omittingEmptySubsequences: false)
    }

    public func matches(_ model: String) -> Bool {
        guard pieces.count > 1 else { return model == pieces.first.map(String.init) ?? "" }
        var rest = Substring(model)
        guard let first = pieces.first, rest.hasPrefix(first) else { return false }
        rest = rest.dropFirst(first.count)
        for piece in pieces.dropFirst().dropLast() where !piece.isEmpty {
            guard let found = rest.firstRange(of: piece) else { return false }
            rest = rest[found.upperBound...]
        }
        let last = pieces[pieces.count - 1]
        return rest.count >= last.count && rest.hasSuffix(last)
    }
}
