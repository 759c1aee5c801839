/// A C array of `NAME=value` strings ending with a null pointer, as libfcgi hands over CGI
/// parameters and as `environ` holds the environment.
public enum NameValueBlock {
    /// The entries by name; an entry without `=` is skipped, a later duplicate wins.
    public static func parse(_ block: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> [String: String] {
        var result: [String: String] = [:]
        guard var entry = block else { return result }
        while let pair = entry.pointee {
            let text = String(cString: pair)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            entry += 1
        }
        return result
    }
}
