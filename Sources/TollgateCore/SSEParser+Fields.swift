extension SSEParser {
    /// Interprets one complete line (without its line ending); returns a comment, a dispatched
    /// event, or nil.
    mutating func processLine(_ rawLine: UnsafeRawBufferPointer) -> SSEItem? {
        var line = rawLine[...]
        if atStreamStart {
            atStreamStart = false
            if line.starts(with: [0xEF, 0xBB, 0xBF]) { line = line.dropFirst(3) }
        }
        guard let first = line.first else { return dispatch() }

        if first == UInt8(ascii: ":") {
            return .comment(String(decoding: Self.droppingOneSpace(line.dropFirst()), as: UTF8.self))
        }

        pending.byteCount += rawLine.count
        let colon = line.firstIndex(of: UInt8(ascii: ":"))
        let field = line[..<(colon ?? line.endIndex)]
        let value = colon.map { Self.droppingOneSpace(line[($0 + 1)...]) } ?? line[line.endIndex...]
        apply(field: field, value: value)
        return nil
    }

    private mutating func apply(field: Slice<UnsafeRawBufferPointer>, value: Slice<UnsafeRawBufferPointer>) {
        if field.elementsEqual("data".utf8) {
            if pending.hasData { pending.data.append(0x0A) }
            pending.data.append(contentsOf: value)
            pending.hasData = true
        } else if field.elementsEqual("event".utf8) {
            pending.name = String(decoding: value, as: UTF8.self)
        } else if field.elementsEqual("id".utf8) {
            // WHATWG: an id containing NUL is ignored.
            if !value.contains(0) { pending.id = String(decoding: value, as: UTF8.self) }
        } else if field.elementsEqual("retry".utf8) {
            if let milliseconds = Self.decimal(value) { pending.retry = milliseconds }
        }
    }

    /// Builds the pending event (if it has data lines or an event name) and starts a new one.
    mutating func dispatch() -> SSEItem? {
        defer {
            let keepsCapacity = pending.data.capacity <= 1 << 16
            pending.data.removeAll(keepingCapacity: keepsCapacity)
            pending.hasData = false
            pending.name = nil
            pending.id = nil
            pending.retry = nil
            pending.byteCount = 0
        }
        guard pending.hasData || pending.name != nil else { return nil }

        var event = SSEEvent(event: pending.name, data: String(decoding: pending.data, as: UTF8.self), id: pending.id)
        event.retry = pending.retry
        return .event(event)
    }

    private static func droppingOneSpace(
        _ bytes: Slice<UnsafeRawBufferPointer>
    ) -> Slice<UnsafeRawBufferPointer> {
        bytes.first == UInt8(ascii: " ") ? bytes.dropFirst() : bytes
    }

    /// ASCII digits only, as WHATWG requires for `retry`; nil when empty, not digits, or too big.
    private static func decimal(_ bytes: Slice<UnsafeRawBufferPointer>) -> Int? {
        guard !bytes.isEmpty else { return nil }
        var result = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let (shifted, overflowA) = result.multipliedReportingOverflow(by: 10)
            let (next, overflowB) = shifted.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            guard !overflowA, !overflowB else { return nil }
            result = next
        }
        return result
    }
}
