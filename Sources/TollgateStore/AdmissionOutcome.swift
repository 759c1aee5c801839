import TollgateCore

/// The `outcome` column of `tollgate.admit` and `tollgate.authenticate`.
public enum AdmissionOutcome: String, Sendable, CaseIterable {
    case admitted
    case unknownKey = "unknown_key"
    case revokedKey = "revoked_key"
    case unknownUser = "unknown_user"
    case disabledUser = "disabled_user"
    case insufficientQuota = "insufficient_quota"
    /// The user has a BYOK key and TOLLGATE_SECRET is not set.
    case byokSecretMissing = "byok_secret_missing"
    /// The user has a BYOK key that TOLLGATE_SECRET does not decrypt.
    case byokSecretInvalid = "byok_secret_invalid"

    /// The error the client gets, nil when admitted. `standing` is needed only for
    /// `insufficientQuota` (without it the request is refused as if nothing remained).
    public func rejection(standing: QuotaStanding?, requested: Int) -> OpenAIError? {
        switch self {
        case .admitted: nil
        case .unknownKey: .incorrectAPIKey()
        case .revokedKey: .revokedAPIKey()
        case .unknownUser: .unknownUser()
        case .disabledUser: .disabledUser()
        case .insufficientQuota:
            .insufficientQuota(
                standing ?? QuotaStanding(quota: 0, used: 0, reserved: 0, resetsAt: nil), requested: requested)
        case .byokSecretMissing, .byokSecretInvalid: .byokUnavailable()
        }
    }
}
