import Testing

@testable import TollgateStore

@Suite("Outage settings from the environment")
struct OutageSettingsTests {
    private func resolve(_ extra: [String: String]) throws -> MeteringSettings {
        var environment = ["TOLLGATE_DATABASE_URL": "dbname=t"]
        environment.merge(extra) { _, new in new }
        return try #require(try MeteringSettings.resolve(environment: environment, platformKey: "k"))
    }

    @Test("defaults: refuse, 10000 tokens, identities vouch for 10 minutes, a journal directory is always set")
    func defaults() throws {
        let settings = try resolve([:])
        #expect(settings.outagePolicy == .refuse)
        #expect(settings.outageAllowance == 10_000)
        #expect(settings.outageIdentityLifetime == .seconds(600))
        #expect(
            settings.journalDirectory
                == SettlementJournal.defaultDirectory(environment: ["TOLLGATE_DATABASE_URL": "dbname=t"]))
        #expect(MeteringSettings(databaseURL: "x", platformKey: "k").journalDirectory == nil)
    }

    @Test("every outage variable is read")
    func overrides() throws {
        let settings = try resolve([
            "TOLLGATE_OUTAGE_POLICY": "allow", "TOLLGATE_OUTAGE_ALLOWANCE": "2500",
            "TOLLGATE_OUTAGE_IDENTITY_TTL": "30",
            "TOLLGATE_JOURNAL_DIR": "/srv/tollgate/journal",
        ])
        #expect(settings.outagePolicy == .allow)
        #expect(settings.outageAllowance == 2500)
        #expect(settings.outageIdentityLifetime == .seconds(30))
        #expect(settings.journalDirectory == "/srv/tollgate/journal")
    }

    @Test(
        "invalid values are refused with the variable's name",
        arguments: [
            ("TOLLGATE_OUTAGE_POLICY", "maybe"), ("TOLLGATE_OUTAGE_POLICY", "ALLOW"),
            ("TOLLGATE_OUTAGE_ALLOWANCE", "-1"), ("TOLLGATE_OUTAGE_ALLOWANCE", "lots"),
            ("TOLLGATE_OUTAGE_IDENTITY_TTL", "0"), ("TOLLGATE_OUTAGE_IDENTITY_TTL", "86401"),
        ])
    func invalid(name: String, value: String) {
        #expect {
            try resolve([name: value])
        } throws: { error in
            (error as? StoreError)?.code == .invalidSetting && (error as? StoreError)?.message.contains(name) == true
        }
    }

    @Test("without /var/lib/tollgate the default journal lives under TMPDIR")
    func defaultDirectory() {
        let chosen = SettlementJournal.defaultDirectory(environment: ["TMPDIR": "/scratch/"])
        #expect(chosen == "/var/lib/tollgate/journal" || chosen == "/scratch/tollgate-journal")
        if chosen != "/var/lib/tollgate/journal" {
            #expect(SettlementJournal.defaultDirectory(environment: [:]) == "/tmp/tollgate-journal")
        }
    }

    @Test("--help lists the outage variables")
    func help() {
        for name in [
            "TOLLGATE_JOURNAL_DIR", "TOLLGATE_OUTAGE_POLICY", "TOLLGATE_OUTAGE_ALLOWANCE",
            "TOLLGATE_OUTAGE_IDENTITY_TTL",
        ] {
            #expect(MeteringSettings.help.contains(name))
        }
    }
}
