/// Incremental parser for `text/event-stream` bytes that arrive in arbitrary chunks, following
/// the WHATWG rules: lines end in LF, CRLF or CR (a CRLF may be split across chunks); `:` lines
/// are comments; `field: value` loses one optional space; `data` lines are joined with "\n";
/// a blank line dispatches. `event`, `data`, `id` and `retry` are kept, other fields ignored.
/// A block with neither a data line nor an event field is not dispatched. A UTF-8 byte-order
/// mark at the start of the stream is skipped; invalid UTF-8 is decoded with U+FFFD.
///
/// Memory is bounded by `maxEventBytes`: the bytes of one event's lines (or of any one line,
/// comments included) beyond it fail with `.eventTooLarge`. After that error the stream cannot
/// be trusted: every later `feed` throws it again and `finish` returns nothing.
public struct SSEParser: Sendable {
    private let maxEventBytes: Int
    /// Bytes of a line whose end has not arrived yet.
    private var partialLine: [UInt8] = []
    /// The previous chunk ended in CR, so an LF at the start of the next one ends nothing.
    private var skipsLeadingLF = false
    // Internal rather than private so that SSEParser+Fields.swift can reach them.
    var atStreamStart = true
    var pending = PendingEvent()
    private var failure: SSEError?

    /// The fields of the event being assembled.
    struct PendingEvent {
        var data: [UInt8] = []
        var hasData = false
        var name: String?
        var id: String?
        var retry: Int?
        /// Bytes of the lines that make up this event so far.
        var byteCount = 0
    }

    public init(maxEventBytes: Int = 8 << 20) {
        self.maxEventBytes = max(maxEventBytes, 0)
    }

    /// Appends bytes and returns every item completed by them, in order.
    public mutating func feed(_ bytes: [UInt8]) throws(SSEError) -> [SSEItem] {
        // Array.withUnsafeBytes does not carry typed throws; a Result keeps the error type.
        let result = bytes.withUnsafeBytes { raw in Result { () throws(SSEError) in try feed(raw) } }
        return try result.get()
    }

    /// Appends bytes and returns every item completed by them, in order. The bytes are not kept.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) throws(SSEError) -> [SSEItem] {
        if let failure { throw failure }
        var items: [SSEItem] = []
        var lineStart = 0
        var position = 0

        if skipsLeadingLF, !bytes.isEmpty {
            skipsLeadingLF = false
            if bytes[0] == 0x0A { lineStart = 1 }
        }
        position = lineStart

        while position < bytes.count {
            let byte = bytes[position]
            guard byte == 0x0A || byte == 0x0D else {
                position += 1
                continue
            }
            try endLine(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<position]), into: &items)
            if byte == 0x0D {
                if position + 1 < bytes.count {
                    if bytes[position + 1] == 0x0A { position += 1 }
                } else {
                    skipsLeadingLF = true
                }
            }
            position += 1
            lineStart = position
        }

        if lineStart < bytes.count {
            try bufferPartialLine(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<bytes.count]))
        }
        return items
    }

    /// End of stream: an unterminated last line is taken as a line, and an event pending without
    /// its blank line is returned (upstreams that close right after the last data line). The
    /// parser is then reset for a new stream.
    public mutating func finish() -> [SSEItem] {
        defer { self = SSEParser(maxEventBytes: maxEventBytes) }
        guard failure == nil else { return [] }

        var items: [SSEItem] = []
        if !partialLine.isEmpty {
            let line = partialLine
            line.withUnsafeBytes { raw in
                if let item = processLine(raw) { items.append(item) }
            }
        }
        if let item = dispatch() { items.append(item) }
        return items
    }

    private mutating func bufferPartialLine(_ part: UnsafeRawBufferPointer) throws(SSEError) {
        try checkSize(adding: partialLine.count + part.count)
        partialLine.append(contentsOf: part)
    }

    private mutating func endLine(_ part: UnsafeRawBufferPointer, into items: inout [SSEItem]) throws(SSEError) {
        let item: SSEItem?
        if partialLine.isEmpty {
            try checkSize(adding: part.count)
            item = processLine(part)
        } else {
            try checkSize(adding: partialLine.count + part.count)
            // Moved out so that processing (which mutates self) does not overlap the buffer.
            var line: [UInt8] = []
            swap(&line, &partialLine)
            line.append(contentsOf: part)
            item = line.withUnsafeBytes { processLine($0) }
            line.removeAll(keepingCapacity: line.capacity <= 1 << 16)
            partialLine = line
        }
        if let item { items.append(item) }
    }

    private mutating func checkSize(adding lineBytes: Int) throws(SSEError) {
        // Subtraction, not addition, so the comparison cannot overflow.
        guard lineBytes <= maxEventBytes - pending.byteCount else {
            let error = SSEError(code: .eventTooLarge)
            failure = error
            throw error
        }
    }
}
