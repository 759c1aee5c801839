import TollgateCore

/// How a batch of requests to the store succeeds or fails: together, or one by one.
enum StoreBatch {
    /// Runs `items` through `call`, which answers each of them, in order, with one round trip.
    ///
    /// When the database is away (an outage, see `OutagePolicy.isOutage`) every item fails with
    /// that error. When it refuses the call for another reason (a constraint, a value it cannot
    /// read), each item is run again alone, so that one bad item fails alone and the others still
    /// get their answer; after an outage in that pass, the items left fail without being tried.
    /// Blocks for the round trips.
    static func results<Item, Answer>(
        _ items: [Item], _ call: ([Item]) throws(StoreError) -> [Answer]
    ) -> [Result<Answer, StoreError>] {
        guard !items.isEmpty else { return [] }
        do throws(StoreError) {
            let answers = try call(items)
            guard answers.count == items.count else {
                throw StoreError(.unexpectedResult, "a batch of \(items.count) got \(answers.count) answers")
            }
            return answers.map { .success($0) }
        } catch {
            guard items.count > 1, !OutagePolicy.isOutage(error) else { return items.map { _ in .failure(error) } }
            var results: [Result<Answer, StoreError>] = []
            for item in items {
                if case .failure(let failure)? = results.last, OutagePolicy.isOutage(failure) {
                    results.append(.failure(failure))
                } else {
                    results += Self.results([item], call)
                }
            }
            return results
        }
    }

    /// The rows of a batch's answer, checked: one per item, in order (`ordinal` 1, 2, ...).
    static func rows(of result: QueryResult, count: Int) throws(StoreError) -> Range<Int> {
        guard result.rows.count == count else {
            throw StoreError(.unexpectedResult, "a batch of \(count) got \(result.rows.count) rows")
        }
        for row in 0..<count where result.integer("ordinal", row: row) != row + 1 {
            throw StoreError(.unexpectedResult, "a batch's answers are out of order")
        }
        return 0..<count
    }
}
