import Testing

@testable import TollgateProxy

@Suite("Request ids")
struct RequestIDTests {
    @Test("an id is a lowercase version 4 UUID, and ids do not repeat")
    func versionFourUUID() {
        var seen = Set<String>()
        for _ in 0..<1000 {
            let id = RequestID.make()
            let groups = id.split(separator: "-", omittingEmptySubsequences: false).map(\.count)
            #expect(groups == [8, 4, 4, 4, 12], "\(id)")
            #expect(id.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) || $0 == 45 }, "\(id)")
            #expect(Array(id)[14] == "4", "version nibble of \(id)")
            #expect("89ab".contains(Array(id)[19]), "variant nibble of \(id)")
            seen.insert(id)
        }
        #expect(seen.count == 1000)
    }
}
