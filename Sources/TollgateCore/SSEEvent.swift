/// One server-sent event, as dispatched by `SSEParser` or written to a client.
public struct SSEEvent: Sendable, Equatable {
    /// The `event:` field; nil when the event had none (all chat chunks).
    public var event: String?
    /// The `data:` lines joined with "\n".
    public var data: String
    /// The `id:` field of this event, if it had one.
    public var id: String?
    /// The `retry:` field (milliseconds) of this event, if it had a valid one.
    public var retry: Int?

    public init(event: String? = nil, data: String, id: String? = nil) {
        self.event = event
        self.data = data
        self.id = id
    }

    /// "event: X\n" (if any) + one "data: line\n" per line of `data` + "id: …\n" (if any) +
    /// "retry: N\n" (if any) + "\n". Line breaks in `data` (LF, CRLF or CR) start a new data line;
    /// line breaks in `event` and `id` are dropped so a value can never inject a field.
    public func encoded() -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(data.utf8.count + 16)
        if let event { Self.appendField("event", event, to: &output) }
        appendDataLines(to: &output)
        if let id { Self.appendField("id", id, to: &output) }
        if let retry, retry >= 0 { Self.appendField("retry", String(retry), to: &output) }
        output.append(0x0A)
        return output
    }

    private func appendDataLines(to output: inout [UInt8]) {
        output.append(contentsOf: "data: ".utf8)
        var previousWasCR = false
        for byte in data.utf8 {
            switch byte {
            case 0x0A where previousWasCR:
                previousWasCR = false
            case 0x0A, 0x0D:
                output.append(contentsOf: "\ndata: ".utf8)
                previousWasCR = byte == 0x0D
            default:
                output.append(byte)
                previousWasCR = false
            }
        }
        output.append(0x0A)
    }

    private static func appendField(_ name: String, _ value: String, to output: inout [UInt8]) {
        output.append(contentsOf: name.utf8)
        output.append(contentsOf: ": ".utf8)
        for byte in value.utf8 where byte != 0x0A && byte != 0x0D {
            output.append(byte)
        }
        output.append(0x0A)
    }
}
