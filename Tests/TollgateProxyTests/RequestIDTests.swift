import Testing

@testable import TollgateProxy

@Suite("Request ids")
struct RequestIDTests {
    @Test("an id is a lowercase version 7 UUID, and ids do not repeat")
    func versionSevenUUID() {
        var seen = Set<String>()
        var generator = RequestID()
        // More ids than one pool of random bytes serves, so a refill is exercised too.
        for index in 0..<2000 {
            let id = index % 2 == 0 ? generator.next() : RequestID.make()
            let groups = id.split(separator: "-", omittingEmptySubsequences: false).map(\.count)
            #expect(groups == [8, 4, 4, 4, 12], "\(id)")
            #expect(id.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) || $0 == 45 }, "\(id)")
            #expect(Array(id)[14] == "7", "version nibble of \(id)")
            #expect("89ab".contains(Array(id)[19]), "variant nibble of \(id)")
            seen.insert(id)
        }
        #expect(seen.count == 2000)
    }

    @Test("an id starts with the current Unix time in milliseconds, so later ids sort after earlier ones")
    func timeOrdered() {
        var generator = RequestID()
        let before = WallClock.nowMicroseconds() / 1000
        let id = generator.next()
        let after = WallClock.nowMicroseconds() / 1000
        let hex = id.filter { $0 != "-" }.prefix(12)
        let stamp = Int64(hex, radix: 16) ?? -1
        #expect((before...after).contains(stamp), "\(id)")

        var previous = generator.next()
        var ordered = true
        for _ in 0..<200 {
            let next = generator.next()
            // Ids of the same millisecond may come in any order; across milliseconds they sort.
            if next.prefix(13) < previous.prefix(13) { ordered = false }
            previous = next
        }
        #expect(ordered)
    }
}
