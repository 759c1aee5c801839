import CFastCGI

/// One FastCGI record: its type, the request it belongs to, and its content.
struct FastCGIRecord: Equatable {
    /// What a record is for (FastCGI specification, section 8).
    enum Kind: UInt8 {
        case beginRequest = 1
        case abortRequest = 2
        case endRequest = 3
        case params = 4
        case standardInput = 5
        case standardOutput = 6
        case standardError = 7
        case data = 8
        case getValues = 9
        case getValuesResult = 10
        case unknownType = 11
    }

    var type: UInt8
    var requestID: UInt16
    var content: [UInt8]

    var kind: Kind? { Kind(rawValue: type) }

    static let headerLength = Int(FCGI_HEADER_LEN)
    static let largestContent = Int(FCGI_MAX_LENGTH)
    static let version = UInt8(FCGI_VERSION_1)

    /// Appends a record with `content` (at most `largestContent` bytes) to `output`, with no
    /// padding (nginx needs none).
    static func append(
        _ kind: Kind, requestID: UInt16, content: UnsafeRawBufferPointer, to output: inout [UInt8]
    ) {
        let length = content.count
        output.append(contentsOf: [
            version, kind.rawValue, UInt8(requestID >> 8), UInt8(requestID & 0xFF),
            UInt8(length >> 8), UInt8(length & 0xFF), 0, 0,
        ])
        output.append(contentsOf: content)
    }

    /// Appends `bytes` as standard-output records of at most `largestContent` bytes each.
    static func appendOutput(_ bytes: [UInt8], requestID: UInt16, to output: inout [UInt8]) {
        bytes.withUnsafeBytes { all in
            var start = 0
            while start < all.count {
                let end = min(start + largestContent, all.count)
                append(
                    .standardOutput, requestID: requestID, content: UnsafeRawBufferPointer(rebasing: all[start..<end]),
                    to: &output)
                start = end
            }
        }
    }

    /// Appends the end of a response: an empty standard-output record closes the stream, and
    /// END_REQUEST completes the request.
    static func appendEnd(requestID: UInt16, to output: inout [UInt8]) {
        let nothing: [UInt8] = []
        nothing.withUnsafeBytes { append(.standardOutput, requestID: requestID, content: $0, to: &output) }
        appendEndRequest(requestID: requestID, protocolStatus: UInt8(FCGI_REQUEST_COMPLETE), to: &output)
    }

    /// Appends END_REQUEST alone, with application status 0 and `protocolStatus` (a request
    /// refused outright, for an unknown role, gets no output stream).
    static func appendEndRequest(requestID: UInt16, protocolStatus: UInt8, to output: inout [UInt8]) {
        let body: [UInt8] = [0, 0, 0, 0, protocolStatus, 0, 0, 0]
        body.withUnsafeBytes { append(.endRequest, requestID: requestID, content: $0, to: &output) }
    }
}
