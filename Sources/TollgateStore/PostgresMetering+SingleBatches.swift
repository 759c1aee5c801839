import TollgateProxy

// Limitation: batches are answered one request at a time here, one round trip each.
extension PostgresMetering {
    public func admit(_ requests: [AdmissionRequest]) -> [Admission] {
        requests.map { admit($0) }
    }

    public func settle(_ settlements: [Settlement]) {
        for settlement in settlements { settle(settlement) }
    }
}
