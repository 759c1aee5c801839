import Testing
import TollgateCore

@testable import TollgateStore

@Suite("PostgreSQL array literals")
struct PostgresArrayTests {
    @Test("NULL, quotes, backslashes, commas and braces; a NUL ends an element; columns of rows")
    func literals() {
        #expect(PostgresArray.literal([]) == "{}")
        #expect(PostgresArray.literal(["a", nil, "b\"c", "d\\e", "f,{g}"]) == #"{"a",NULL,"b\"c","d\\e","f,{g}"}"#)
        #expect(PostgresArray.literal(["gpt\u{0}x", "NULL"]) == #"{"gpt","NULL"}"#)
        #expect(PostgresArray.columns([["1", "x"], ["2", nil]]) == [#"{"1","2"}"#, #"{"x",NULL}"#])
        #expect(PostgresArray.columns([]) == [])
    }

    @Test(
        "PostgreSQL reads back each element as sent, bytea included",
        .enabled(if: TestDatabase.isConfigured, TestDatabase.disabledReason))
    func roundTrip() throws {
        let connection = try TestDatabase.migrated()
        let texts: [String?] = ["plain", nil, "quote\" back\\slash", "comma, {brace}", "ünïcode ✓", "", "NULL"]
        let hash = APIKey.hash("tg-round-trip")

        let result = try connection.execute(
            """
            SELECT t.value IS NULL AS missing, coalesce(t.value, '') AS value
            FROM unnest($1::text[]) WITH ORDINALITY AS t(value, n) ORDER BY t.n
            """, parameters: [PostgresArray.literal(texts)])
        let bytes = try connection.execute(
            "SELECT encode(($1::bytea[])[1], 'hex') AS hex",
            parameters: [PostgresArray.literal([APIKey.byteaLiteral(hash)])])

        #expect(result.rows.map { $0[0] == "t" ? nil : $0[1] } == texts)
        #expect(bytes.value("hex") == SHA256.hex(hash))
    }
}
