import Testing

@testable import TollgateCore

@Suite("JSON document splicing")
struct JSONDocumentTests {
    private func splice(_ text: String, _ key: String, _ value: JSONValue) throws -> String {
        let document = try JSONDocument(bytes: Array(text.utf8))
        return String(decoding: document.replacingMember(key, with: value), as: UTF8.self)
    }

    @Test("replaces the first member's value and keeps every other byte")
    func replacesValue() throws {
        let original = "{ \"model\" :\t\"a\" ,\n \"stream_options\":  {\"x\" : 1} ,\"stream_options\":2 }"
        let result = try splice(original, "stream_options", ["x": 1, "include_usage": true])
        #expect(
            result
                == "{ \"model\" :\t\"a\" ,\n \"stream_options\":  {\"x\":1,\"include_usage\":true} ,"
                + "\"stream_options\":2 }"
        )
    }

    @Test("matches keys written with unicode escapes and leaves other escapes untouched")
    func unicodeEscapes() throws {
        let original = #"{"m\u006fdel":"gpt","text":"caf\u00e9 \ud83d\udc4b","n":1.0e1}"#
        let result = try splice(original, "model", "other")
        #expect(result == #"{"m\u006fdel":"other","text":"caf\u00e9 \ud83d\udc4b","n":1.0e1}"#)
    }

    @Test("inserts before the closing brace when the member is absent")
    func inserts() throws {
        #expect(try splice(#"{"a":1}"#, "b", ["c": true]) == #"{"a":1,"b":{"c":true}}"#)
        #expect(try splice("{\"a\":[1, 2] \n}\n", "b", 2) == "{\"a\":[1, 2] \n,\"b\":2}\n")
        #expect(try splice("{}", "k\"", .null) == #"{"k\"":null}"#)
        #expect(try splice("  { \n }  ", "k", 1) == "  { \n \"k\":1}  ")
    }

    @Test("replaces values of every kind, including nested containers and the last member")
    func replacesEveryKind() throws {
        let original = #"{"a":{"x":[1,{"y":"}"}]},"b":"s\"}","c":-1.5e3,"d":null}"#
        #expect(try splice(original, "a", 0) == #"{"a":0,"b":"s\"}","c":-1.5e3,"d":null}"#)
        #expect(try splice(original, "b", 0) == #"{"a":{"x":[1,{"y":"}"}]},"b":0,"c":-1.5e3,"d":null}"#)
        #expect(try splice(original, "c", 0) == #"{"a":{"x":[1,{"y":"}"}]},"b":"s\"}","c":0,"d":null}"#)
        #expect(try splice(original, "d", 0) == #"{"a":{"x":[1,{"y":"}"}]},"b":"s\"}","c":-1.5e3,"d":0}"#)
    }

    @Test("does not touch members of nested objects with the same name")
    func onlyTopLevel() throws {
        #expect(try splice(#"{"o":{"k":1}}"#, "k", 2) == #"{"o":{"k":1},"k":2}"#)
    }

    @Test("returns the bytes unchanged when the root is not an object")
    func nonObjectRoot() throws {
        for text in ["[1]", " \"s\" ", "3", "null"] {
            #expect(try splice(text, "k", 1) == text)
        }
    }

    @Test("records value ranges of top-level members")
    func valueRanges() throws {
        let document = try JSONDocument(bytes: Array(#"{"a" : [1, 2] , "b":"x"}"#.utf8))
        #expect(document.valueRange(ofMember: "a") == 7..<13)
        #expect(document.valueRange(ofMember: "b") == 20..<23)
        #expect(document.valueRange(ofMember: "c") == nil)
        #expect(document.root["b"] == "x")
    }

    @Test("throws the parser's error for invalid bytes")
    func rejectsInvalid() {
        #expect(throws: JSONError(code: .unexpectedEnd, offset: 5)) { try JSONDocument(bytes: Array(#"{"a":"#.utf8)) }
    }
}
