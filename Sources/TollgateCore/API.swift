/// The upstream APIs Tollgate meters. The raw value is a stable label for logs and the ledger.
public enum API: String, Sendable {
    case chatCompletions = "chat.completions"
    case responses
}
