import Testing

@testable import TollgateFastCGI

@Suite("FastCGI records")
struct FastCGIRecordReaderTests {
    /// A BEGIN_REQUEST, PARAMS with padding, an empty PARAMS and a STDIN, as nginx sends them.
    static func requestBytes() -> [UInt8] {
        var bytes: [UInt8] = []
        [UInt8]([0, 1, 1, 0, 0, 0, 0, 0]).withUnsafeBytes {
            FastCGIRecord.append(.beginRequest, requestID: 1, content: $0, to: &bytes)
        }
        let parameters = FastCGIParameters.encode([("REQUEST_METHOD", "POST")])
        bytes += [1, 4, 0, 1, 0, UInt8(parameters.count), 3, 0] + parameters + [0, 0, 0]
        [UInt8]().withUnsafeBytes { FastCGIRecord.append(.params, requestID: 1, content: $0, to: &bytes) }
        Array("{}".utf8).withUnsafeBytes { FastCGIRecord.append(.standardInput, requestID: 1, content: $0, to: &bytes) }
        return bytes
    }

    static let expected = [
        FastCGIRecord(type: 1, requestID: 1, content: [0, 1, 1, 0, 0, 0, 0, 0]),
        FastCGIRecord(type: 4, requestID: 1, content: FastCGIParameters.encode([("REQUEST_METHOD", "POST")])),
        FastCGIRecord(type: 4, requestID: 1, content: []),
        FastCGIRecord(type: 5, requestID: 1, content: Array("{}".utf8)),
    ]

    @Test("records come out whole however the bytes are split, padding skipped")
    func anySplit() throws {
        let bytes = Self.requestBytes()
        for split in 0...bytes.count {
            var reader = FastCGIRecordReader()
            var records: [FastCGIRecord] = []
            for piece in [Array(bytes[..<split]), Array(bytes[split...])] {
                piece.withUnsafeBytes { reader.append($0) }
                while let record = try reader.next() { records.append(record) }
            }
            #expect(records == Self.expected, "split at \(split)")
            #expect(reader.buffered == 0)
        }
    }

    @Test("a byte at a time works too, and nothing comes out of an incomplete record")
    func byteByByte() throws {
        var reader = FastCGIRecordReader()
        var records: [FastCGIRecord] = []
        for byte in Self.requestBytes() {
            [byte].withUnsafeBytes { reader.append($0) }
            while let record = try reader.next() { records.append(record) }
        }
        #expect(records == Self.expected)
    }

    @Test("a peer that does not speak FastCGI version 1 is refused")
    func wrongVersion() {
        var reader = FastCGIRecordReader()
        Array("GET / HTTP/1.1\r\n".utf8).withUnsafeBytes { reader.append($0) }
        #expect(throws: FastCGIRecordReader.Failure.unsupportedVersion(71)) { try reader.next() }
    }

    @Test("output longer than one record's 65,535 bytes is split, and the end closes the stream")
    func outputRecords() throws {
        var output: [UInt8] = []
        FastCGIRecord.appendOutput(Array(repeating: 7, count: 70_000), requestID: 9, to: &output)
        FastCGIRecord.appendEnd(requestID: 9, to: &output)
        var reader = FastCGIRecordReader()
        output.withUnsafeBytes { reader.append($0) }
        var records: [FastCGIRecord] = []
        while let record = try reader.next() { records.append(record) }

        #expect(records.map(\.type) == [6, 6, 6, 3])
        #expect(records.map(\.content.count) == [65_535, 4_465, 0, 8])
        #expect(records.allSatisfy { $0.requestID == 9 })
        #expect(records.last?.content == [0, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test("a large body read whole leaves no large buffer behind")
    func shrinksAfterLargeBody() throws {
        var reader = FastCGIRecordReader()
        var bytes: [UInt8] = []
        for _ in 0..<4 {
            [UInt8](repeating: 1, count: 60_000).withUnsafeBytes {
                FastCGIRecord.append(.standardInput, requestID: 1, content: $0, to: &bytes)
            }
        }
        bytes.withUnsafeBytes { reader.append($0) }
        var records = 0
        while try reader.next() != nil { records += 1 }
        #expect(records == 4)
        #expect(reader.capacity >= 240_000)

        reader.shrink()

        #expect(reader.capacity <= FastCGIRecordReader.retainedCapacity)
        [UInt8]([1, 1, 0, 2, 0, 0, 0, 0]).withUnsafeBytes { reader.append($0) }
        #expect(try reader.next() == FastCGIRecord(type: 1, requestID: 2, content: []))
    }
}
