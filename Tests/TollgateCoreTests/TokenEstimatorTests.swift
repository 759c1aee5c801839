import Testing

@testable import TollgateCore

@Suite("Token estimates")
struct TokenEstimatorTests {
    @Test("rounds text bytes up to whole tokens", arguments: [(0, 0), (-4, 0), (1, 1), (4, 1), (5, 2), (8, 2)])
    func textBytes(bytes: Int, tokens: Int) {
        #expect(TokenEstimator.tokens(forTextBytes: bytes) == tokens)
    }

    @Test("never overflows on the largest count")
    func largest() {
        #expect(TokenEstimator.tokens(forTextBytes: Int.max) == Int.max / 4 + 1)
    }

    @Test("counts every string under messages plus four per message, and nothing else")
    func chat() {
        // "system" 6 + "Be brief." 9 + "user" 4 + "text" 4 + "héllo" 6 = 29 bytes → 8 tokens; 2 messages → 8.
        let root: JSONValue = [
            "model": "a-model-name-that-must-not-count",
            "messages": [
                ["role": "system", "content": "Be brief."],
                ["role": "user", "content": [["type": "text", "text": "héllo"]], "n": 3],
            ],
            "tools": [["type": "function", "function": ["name": "also-not-counted"]]],
        ]
        #expect(TokenEstimator.inputTokens(of: root, api: .chatCompletions) == 16)
    }

    @Test("counts Responses input and instructions, a string input being one item")
    func responses() {
        let stringInput: JSONValue = ["model": "m", "input": "12345678", "instructions": "abcd"]
        #expect(TokenEstimator.inputTokens(of: stringInput, api: .responses) == 3 + 4)

        let itemsInput: JSONValue = [
            "input": [["role": "user", "content": "hi"], ["type": "function_call_output", "output": "ok"]],
            "messages": ["ignored for responses"],
        ]
        // "user" 4 + "hi" 2 + "function_call_output" 20 + "ok" 2 = 28 bytes → 7 tokens; 2 items → 8.
        #expect(TokenEstimator.inputTokens(of: itemsInput, api: .responses) == 15)
    }

    @Test("is zero for bodies without the relevant members")
    func empty() {
        #expect(TokenEstimator.inputTokens(of: ["model": "m"], api: .chatCompletions) == 0)
        #expect(TokenEstimator.inputTokens(of: .array([]), api: .responses) == 0)
        #expect(TokenEstimator.inputTokens(of: ["messages": []], api: .chatCompletions) == 0)
    }

    @Test("walks deep values without recursion")
    func deepValue() {
        var value: JSONValue = "abcd"
        for _ in 0..<1_000 { value = .array([value]) }
        #expect(TokenEstimator.inputTokens(of: ["messages": value], api: .chatCompletions) == 1 + 4)
    }
}
