import CCurl
import TollgateProxy

/// The request headers of one upstream call as a libcurl `curl_slist`, freed in `deinit`.
final class CurlHeaderList {
    private(set) var pointer: UnsafeMutablePointer<curl_slist>?

    /// Nil when a header value (the key included) holds a control character, which would let
    /// it split into several headers on the wire.
    init?(request: UpstreamRequest) {
        var lines = [
            "Authorization: Bearer \(request.apiKey)",
            // An uncompressed answer keeps the usage parser on plain bytes.
            "Accept-Encoding: identity",
            // libcurl would otherwise wait for `100 Continue` before sending larger bodies.
            "Expect:",
            "User-Agent: tollgate",
        ]
        if request.method == "POST" { lines.append("Content-Type: application/json") }
        for (name, value) in request.headers { lines.append("\(name): \(value)") }
        for line in lines {
            guard !line.utf8.contains(where: { $0 < 0x20 && $0 != 9 }) else {
                Log.warning("upstream.header_rejected")
                curl_slist_free_all(pointer)
                pointer = nil
                return nil
            }
            guard let appended = curl_slist_append(pointer, line) else {
                curl_slist_free_all(pointer)
                pointer = nil
                return nil
            }
            pointer = appended
        }
    }

    deinit {
        curl_slist_free_all(pointer)
    }
}
