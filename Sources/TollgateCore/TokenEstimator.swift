/// Rough token estimates for when the upstream reported nothing (aborted streams) and for
/// reservations before forwarding: about four UTF-8 bytes per token.
public enum TokenEstimator {
    /// Tokens added per chat message or Responses input item, for roles and framing.
    static let tokensPerItem = 4

    /// ceil(utf8 byte count / 4); 0 for empty (or negative) counts.
    public static func tokens(forTextBytes count: Int) -> Int {
        guard count > 0 else { return 0 }
        return count / 4 + (count % 4 == 0 ? 0 : 1)
    }

    /// Estimated input tokens of a request body: the UTF-8 bytes of every string value under
    /// `messages` (chat) or under `input` and `instructions` (responses), /4 rounded up, plus 4
    /// per message or input item (a string `input` is one item). Never traps.
    public static func inputTokens(of root: JSONValue, api: API) -> Int {
        // Limitation: base64 images and files inside messages count as text, so such requests
        // are overestimated; a closer estimate would need per-model image pricing rules.
        let itemsKey = api == .chatCompletions ? "messages" : "input"
        var textBytes = 0
        var items = 0

        if let itemsValue = root[itemsKey] {
            textBytes = stringBytes(under: itemsValue)
            if let elements = itemsValue.arrayValue {
                items = elements.count
            } else if case .string = itemsValue {
                items = 1
            }
        }
        if api == .responses, let instructions = root["instructions"] {
            textBytes = Usage.saturatingSum(textBytes, stringBytes(under: instructions))
        }

        let (framing, overflow) = items.multipliedReportingOverflow(by: tokensPerItem)
        return Usage.saturatingSum(tokens(forTextBytes: textBytes), overflow ? Int.max : framing)
    }

    /// Total UTF-8 bytes of the string values (not keys) in `value`, walked without recursion.
    static func stringBytes(under value: JSONValue) -> Int {
        var total = 0
        var stack: [JSONValue] = [value]
        while let next = stack.popLast() {
            switch next {
            case .string(let text):
                total = Usage.saturatingSum(total, text.utf8.count)
            case .array(let elements):
                stack.append(contentsOf: elements)
            case .object(let members):
                for member in members { stack.append(member.value) }
            case .null, .bool, .number:
                break
            }
        }
        return total
    }
}
