import Testing

@testable import TollgateStore

@Suite("Metering settings from the environment")
struct MeteringSettingsTests {
    @Test("no TOLLGATE_DATABASE_URL means metering off")
    func off() throws {
        #expect(try MeteringSettings.resolve(environment: [:], platformKey: "k") == nil)
        #expect(try MeteringSettings.resolve(environment: ["TOLLGATE_DATABASE_URL": ""], platformKey: "k") == nil)
    }

    @Test("defaults: pool of 4, bearer mode, x-tollgate-user, no secret, a host:pid worker id")
    func defaults() throws {
        let settings = try #require(
            try MeteringSettings.resolve(environment: ["TOLLGATE_DATABASE_URL": "dbname=t"], platformKey: "k"))
        #expect(settings.poolSize == 4)
        #expect(settings.timeout == .seconds(5))
        #expect(settings.authMode == .bearer)
        #expect(settings.userHeader == "x-tollgate-user")
        #expect(settings.secret == nil)
        #expect(settings.platformKey == "k")
        #expect(settings.workerID == WorkerIdentity.current())
        #expect(settings.workerID.hasSuffix(":\(getpid())"))
    }

    @Test("every variable is read; the header name is lower-cased")
    func overrides() throws {
        let environment = [
            "TOLLGATE_DATABASE_URL": "dbname=t", "TOLLGATE_DATABASE_POOL": "9", "TOLLGATE_DATABASE_TIMEOUT": "1.5",
            "TOLLGATE_AUTH_MODE": "header", "TOLLGATE_USER_HEADER": "X-Remote-User", "TOLLGATE_SECRET": "s3cret",
            "TOLLGATE_WORKER_ID": "host-a/77/1/4",
        ]
        let settings = try #require(try MeteringSettings.resolve(environment: environment, platformKey: "k"))
        #expect(settings.poolSize == 9)
        #expect(settings.timeout == .milliseconds(1500))
        #expect(settings.authMode == .header)
        #expect(settings.userHeader == "x-remote-user")
        #expect(settings.secret == "s3cret")
        #expect(settings.workerID == "host-a/77/1/4")
    }

    @Test(
        "invalid values are refused with the variable's name",
        arguments: [
            ("TOLLGATE_DATABASE_POOL", "0"), ("TOLLGATE_DATABASE_POOL", "lots"), ("TOLLGATE_DATABASE_TIMEOUT", "-1"),
            ("TOLLGATE_AUTH_MODE", "basic"), ("TOLLGATE_USER_HEADER", "x user"), ("TOLLGATE_USER_HEADER", ""),
        ])
    func invalid(name: String, value: String) throws {
        #expect {
            try MeteringSettings.resolve(
                environment: ["TOLLGATE_DATABASE_URL": "dbname=t", name: value], platformKey: "")
        } throws: { error in
            let storeError = error as? StoreError
            return storeError?.code == .invalidSetting && storeError?.message.hasPrefix(name) == true
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
