import Testing
import TollgateCore

@testable import TollgateStore

@Suite("API key format")
struct APIKeyTests {
    @Test("issued keys are tg- and 40 characters of [a-z0-9]")
    func format() {
        for _ in 0..<200 {
            let key = APIKey.generate()
            #expect(key.utf8.count == 43)
            #expect(key.hasPrefix("tg-"))
            #expect(key.dropFirst(3).allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) })
            #expect(APIKey.isWellFormed(key))
        }
    }

    @Test("issued keys do not repeat, and use the whole alphabet")
    func randomness() {
        let keys = (0..<1000).map { _ in APIKey.generate() }
        #expect(Set(keys).count == keys.count)
        let characters = Set(keys.flatMap { $0.dropFirst(3) })
        #expect(characters.count == 36)
    }

    @Test("the prefix shows the scheme and 7 characters; the hash is the key's SHA-256")
    func prefixAndHash() {
        let key = "tg-abcdefghij0123456789abcdefghij0123456789"
        #expect(APIKey.isWellFormed(key))
        #expect(APIKey.prefix(of: key) == "tg-abcdefg")
        #expect(APIKey.hash(key) == SHA256.hash(Array(key.utf8)))
        #expect(APIKey.byteaLiteral([0xde, 0xad]) == "\\xdead")
    }
}
