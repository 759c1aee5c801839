import Testing
import TollgateCore

@testable import TollgateStore

@Suite("Admission outcomes as OpenAI errors")
struct RejectionMappingTests {
    let standing = QuotaStanding(quota: 1000, used: 700, reserved: 250, resetsAt: "2026-02-01T00:00:00Z")

    @Test("admitted is no error")
    func admitted() {
        #expect(AdmissionOutcome.admitted.rejection(standing: standing, requested: 10) == nil)
    }

    @Test(
        "unknown, revoked, unknown user and disabled are 401 invalid_api_key",
        arguments: [AdmissionOutcome.unknownKey, .revokedKey, .unknownUser, .disabledUser])
    func unauthorized(outcome: AdmissionOutcome) throws {
        let error = try #require(outcome.rejection(standing: nil, requested: 10))
        #expect(error.status == 401)
        #expect(error.type == "invalid_request_error")
        #expect(error.code == "invalid_api_key")
        #expect(error.param == nil)
    }

    @Test("insufficient quota is a 429 that says what remains, when it resets, and not to retry")
    func insufficientQuota() throws {
        let error = try #require(AdmissionOutcome.insufficientQuota.rejection(standing: standing, requested: 120))
        #expect(error.status == 429)
        #expect(error.type == "insufficient_quota")
        #expect(error.code == "insufficient_quota")
        #expect(error.message.contains("120"))
        #expect(error.message.contains("50 of your 1000"))
        #expect(error.headers.contains { $0 == ("x-should-retry", "false") })
        #expect(error.headers.contains { $0 == ("x-tollgate-quota-limit", "1000") })
        #expect(error.headers.contains { $0 == ("x-tollgate-quota-remaining", "50") })
        #expect(error.headers.contains { $0 == ("x-tollgate-quota-reset", "2026-02-01T00:00:00Z") })
    }

    @Test("a total quota has no reset header, and remaining never goes below zero")
    func totalQuota() throws {
        let exhausted = QuotaStanding(quota: 100, used: 90, reserved: 30, resetsAt: nil)
        #expect(exhausted.remaining == 0)
        let error = try #require(AdmissionOutcome.insufficientQuota.rejection(standing: exhausted, requested: 5))
        #expect(!error.headers.contains { $0.0 == "x-tollgate-quota-reset" })
        #expect(error.headers.contains { $0 == ("x-tollgate-quota-remaining", "0") })
    }

    @Test(
        "a BYOK key the gateway cannot decrypt is a non-retryable 500",
        arguments: [AdmissionOutcome.byokSecretMissing, .byokSecretInvalid])
    func byok(outcome: AdmissionOutcome) throws {
        let error = try #require(outcome.rejection(standing: nil, requested: 1))
        #expect(error.status == 500)
        #expect(error.type == "server_error")
        #expect(error.code == "byok_unavailable")
        #expect(error.headers.contains { $0 == ("x-should-retry", "false") })
    }

    @Test("an unreachable store is a retryable 503 metering_unavailable")
    func unavailable() {
        let error = OpenAIError.meteringUnavailable()
        #expect(error.status == 503)
        #expect(error.type == "server_error")
        #expect(error.code == "metering_unavailable")
        #expect(!error.headers.contains { $0.0 == "x-should-retry" })
    }

    @Test("every outcome the SQL functions return is known")
    func outcomesMatchSQL() throws {
        let sql = try String(contentsOfSQL: "002_functions.sql")
        for outcome in AdmissionOutcome.allCases {
            #expect(sql.contains("'\(outcome.rawValue)'"))
        }
    }
}

extension String {
    /// A file of the repository's sql/ directory.
    init(contentsOfSQL name: String) throws {
        let migrations = try Migration.load(directory: TestDatabase.sqlDirectory)
        self = try #require(migrations.first { $0.name == name }).sql
    }
}
