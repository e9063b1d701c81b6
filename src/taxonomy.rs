//! What keyfleet does with each API error code: one table, one function.
//!
//! Every code in the reference (the operation's own and the common API 3.0
//! codes) has a row in [`CODES`]; [`classify`] is total over all strings.

use std::fmt;

/// What the executor does with a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Transient: the same job is retried later with backoff, spending an attempt.
    Retry,
    /// Rate limited: retried without spending an attempt, and the sender slows down.
    Throttle,
    /// Caused by particular instances or keys: the batch is split so the rest proceeds.
    Isolate,
    /// No request of this run can succeed until a person acts: the run stops, resumable.
    Fatal,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retry => "retry",
            ErrorClass::Throttle => "throttle",
            ErrorClass::Isolate => "isolate",
            ErrorClass::Fatal => "fatal",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The code keyfleet records for a transport failure; every `Transport.*` code is `Retry`.
pub const TRANSPORT_PREFIX: &str = "Transport.";

use ErrorClass::{Fatal, Isolate, Retry, Throttle};

/// Every documented code with its class and a word on why.
pub const CODES: &[(&str, ErrorClass, &str)] = &[
    // The operation's own codes.
    (
        "InternalServerError",
        Retry,
        "server-side failure; usually passes",
    ),
    (
        "FailedOperation.DisassociateKeyPairFailed",
        Retry,
        "the unbind failed server-side; usually passes",
    ),
    (
        "InvalidInstance.NotSupported",
        Isolate,
        "this instance cannot be operated on",
    ),
    (
        "InvalidInstanceId.Malformed",
        Isolate,
        "an instance id is malformed",
    ),
    (
        "InvalidInstanceId.NotFound",
        Isolate,
        "an instance does not exist (in this region)",
    ),
    (
        "InvalidKeyPairId.Malformed",
        Isolate,
        "a key id is malformed",
    ),
    (
        "InvalidKeyPairId.NotFound",
        Isolate,
        "a key does not exist (in this region)",
    ),
    (
        "InvalidParameterValue",
        Isolate,
        "some value in the batch is refused",
    ),
    (
        "InvalidParameterValue.InstanceIdMalformed",
        Isolate,
        "an instance id is malformed",
    ),
    (
        "InvalidParameterValue.LimitExceeded",
        Fatal,
        "more ids than the API takes: a keyfleet bug, never expected",
    ),
    (
        "MissingParameter",
        Fatal,
        "the request is incomplete: a keyfleet or endpoint problem",
    ),
    (
        "MutexOperation.TaskRunning",
        Retry,
        "an identical task is running; wait for it",
    ),
    (
        "OperationDenied.InstanceOperationInProgress",
        Retry,
        "the instance is busy with another operation",
    ),
    (
        "UnsupportedOperation.InstanceOsWindows",
        Isolate,
        "Windows instances have no SSH key pairs",
    ),
    (
        "UnsupportedOperation.InstanceStateBanning",
        Isolate,
        "the instance is blocked",
    ),
    (
        "UnsupportedOperation.InstanceStateEnterRescueMode",
        Isolate,
        "the instance is entering rescue mode",
    ),
    (
        "UnsupportedOperation.InstanceStateFreezing",
        Isolate,
        "the instance is frozen",
    ),
    (
        "UnsupportedOperation.InstanceStatePending",
        Retry,
        "the instance is being created; it will settle",
    ),
    (
        "UnsupportedOperation.InstanceStateRebooting",
        Retry,
        "the instance is rebooting; it will settle",
    ),
    (
        "UnsupportedOperation.InstanceStateRescueMode",
        Isolate,
        "the instance is in rescue mode",
    ),
    (
        "UnsupportedOperation.InstanceStateRunning",
        Isolate,
        "the instance is RUNNING; stop it or use --force-stop",
    ),
    (
        "UnsupportedOperation.InstanceStateShutdown",
        Isolate,
        "the instance is isolated (SHUTDOWN)",
    ),
    (
        "UnsupportedOperation.InstanceStateStarting",
        Retry,
        "the instance is starting; it will settle",
    ),
    (
        "UnsupportedOperation.InstanceStateStopping",
        Retry,
        "the instance is stopping; it will settle",
    ),
    (
        "UnsupportedOperation.InstanceStateTerminating",
        Isolate,
        "the instance is being terminated",
    ),
    (
        "UnsupportedOperation.StoppedModeStopCharging",
        Isolate,
        "the instance is stopped without charging",
    ),
    // The common codes of every API 3.0 call.
    ("ActionOffline", Fatal, "the action was retired"),
    (
        "AuthFailure.InvalidAuthorization",
        Fatal,
        "the Authorization header is wrong",
    ),
    (
        "AuthFailure.InvalidSecretId",
        Fatal,
        "the SecretId is not valid",
    ),
    (
        "AuthFailure.MFAFailure",
        Fatal,
        "multi-factor authentication failed",
    ),
    (
        "AuthFailure.SecretIdNotFound",
        Fatal,
        "the SecretId does not exist or is disabled",
    ),
    (
        "AuthFailure.SignatureExpire",
        Fatal,
        "the clock is more than 5 minutes off",
    ),
    (
        "AuthFailure.SignatureFailure",
        Fatal,
        "the SecretKey is wrong",
    ),
    (
        "AuthFailure.TokenFailure",
        Fatal,
        "the temporary token is wrong or expired",
    ),
    (
        "AuthFailure.UnauthorizedOperation",
        Fatal,
        "the credentials may not call this action",
    ),
    (
        "DryRunOperation",
        Fatal,
        "a dry run was answered; keyfleet never sends one",
    ),
    (
        "FailedOperation",
        Retry,
        "a server-side failure; bounded by --max-attempts",
    ),
    (
        "InternalError",
        Retry,
        "server-side failure; usually passes",
    ),
    (
        "InvalidAction",
        Fatal,
        "the endpoint does not know the action",
    ),
    (
        "InvalidParameter",
        Fatal,
        "the request's parameters are refused as a whole: not a per-instance problem",
    ),
    (
        "InvalidRequest",
        Fatal,
        "the request body is refused as a whole",
    ),
    ("IpInBlacklist", Fatal, "this machine's address is blocked"),
    (
        "IpNotInWhitelist",
        Fatal,
        "this machine's address is not allowed",
    ),
    (
        "LimitExceeded",
        Fatal,
        "an account quota is exceeded; a person must act",
    ),
    ("NoSuchProduct", Fatal, "the endpoint does not serve CVM"),
    (
        "NoSuchVersion",
        Fatal,
        "the endpoint does not know API version 2017-03-12",
    ),
    (
        "RequestLimitExceeded",
        Throttle,
        "more than the allowed requests per second",
    ),
    (
        "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
        Throttle,
        "the account's global rate limit",
    ),
    (
        "RequestLimitExceeded.IPLimitExceeded",
        Throttle,
        "this address's rate limit",
    ),
    (
        "RequestLimitExceeded.UinLimitExceeded",
        Throttle,
        "the account's rate limit",
    ),
    (
        "RequestSizeLimitExceeded",
        Fatal,
        "the request is too large: a keyfleet bug, never expected",
    ),
    ("ResourceInUse", Retry, "a resource is busy; usually passes"),
    (
        "ResourceInsufficient",
        Retry,
        "capacity is short; usually passes",
    ),
    (
        "ResourceNotFound",
        Isolate,
        "some resource in the batch does not exist",
    ),
    (
        "ResourceUnavailable",
        Retry,
        "a resource is temporarily unavailable",
    ),
    (
        "ResponseSizeLimitExceeded",
        Fatal,
        "the reply is too large: not expected for this action",
    ),
    (
        "ServiceUnavailable",
        Retry,
        "the service is briefly unavailable",
    ),
    (
        "UnauthorizedOperation",
        Fatal,
        "the credentials may not call this action",
    ),
    (
        "UnknownParameter",
        Fatal,
        "the endpoint does not know a parameter keyfleet sent",
    ),
    (
        "UnsupportedOperation",
        Isolate,
        "some instance in the batch does not support the operation",
    ),
    (
        "UnsupportedProtocol",
        Fatal,
        "the endpoint wants another protocol (HTTPS?)",
    ),
    (
        "UnsupportedRegion",
        Fatal,
        "the region does not offer this API",
    ),
];

/// Families of codes not in [`CODES`], matched by prefix.
const PREFIXES: &[(&str, ErrorClass)] = &[
    (TRANSPORT_PREFIX, Retry),
    ("RequestLimitExceeded.", Throttle),
    ("AuthFailure.", Fatal),
    ("UnauthorizedOperation.", Fatal),
    ("InvalidInstanceId.", Isolate),
    ("InvalidKeyPairId.", Isolate),
    ("UnsupportedOperation.InstanceState", Isolate),
    ("UnsupportedOperation.", Isolate),
];

/// The class of an error code; total over every string.
///
/// A code that is neither listed nor in a known family is `Fatal`: keyfleet cannot
/// know whether a resend is harmless or whether every request will meet the same
/// error, and a stopped run loses nothing (no pair is failed, `resume` continues),
/// while guessing Retry or Isolate would spend requests and could fail good pairs.
pub fn classify(code: &str) -> ErrorClass {
    if let Some((_, class, _)) = CODES.iter().find(|(c, _, _)| *c == code) {
        return *class;
    }
    PREFIXES
        .iter()
        .find(|(prefix, _)| code.starts_with(prefix))
        .map_or(Fatal, |(_, class)| *class)
}

/// What keyfleet does for a class, in words for the published table.
pub fn action(class: ErrorClass) -> &'static str {
    match class {
        Retry => {
            "retried later with exponential backoff, spending an attempt (up to --max-attempts)"
        }
        Throttle => "retried without spending an attempt; the sender slows down",
        Isolate => {
            "the batch is split until the offending instance or key is alone; its pair fails, the rest proceeds"
        }
        Fatal => "the run stops (exit 4), no pair is failed; fix the cause and `keyfleet resume`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code named in the reference file, and the class the issue asks for.
    #[test]
    fn every_reference_code_has_its_class() {
        let reference = include_str!("../tests/data/reference-codes.txt");
        let mut seen = 0;
        for line in reference
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let (code, class) = line.split_once(' ').unwrap();
            let want = match class.trim() {
                "retry" => Retry,
                "throttle" => Throttle,
                "isolate" => Isolate,
                "fatal" => Fatal,
                other => panic!("bad class {other}"),
            };
            assert_eq!(classify(code), want, "{code}");
            assert!(
                CODES.iter().any(|(c, _, _)| *c == code),
                "{code} is not in the table"
            );
            seen += 1;
        }
        assert_eq!(
            seen, 62,
            "the reference lists 26 operation codes and 36 more common ones"
        );
    }

    #[test]
    fn table_has_no_duplicates() {
        let mut codes: Vec<_> = CODES.iter().map(|(c, _, _)| *c).collect();
        codes.sort();
        let before = codes.len();
        codes.dedup();
        assert_eq!(before, codes.len());
    }

    /// The published table (docs/errors.md) cannot go stale: every code and every
    /// family appears with its class and what keyfleet does.
    #[test]
    fn published_table_lists_every_code_with_its_class() {
        let doc = include_str!("../docs/errors.md");
        for (code, class, _) in CODES {
            let row = format!("| `{code}` | {class} | ");
            let line = doc.lines().find(|l| l.starts_with(&row));
            let line = line.unwrap_or_else(|| panic!("docs/errors.md has no row {row:?}"));
            assert!(
                line.contains(action(*class)),
                "{code}: stale action in {line}"
            );
        }
        for (prefix, class) in PREFIXES {
            let row = format!("| `{prefix}*` | {class} |");
            assert!(
                doc.contains(&row),
                "docs/errors.md has no family row {row:?}"
            );
        }
        assert!(doc.contains("Any other code is **fatal**"));
        assert_eq!(classify("Never.Heard.Of"), Fatal);
    }

    #[test]
    fn families_and_unknown_codes() {
        assert_eq!(classify("Transport.Timeout"), Retry);
        assert_eq!(classify("RequestLimitExceeded.SomethingNew"), Throttle);
        assert_eq!(classify("AuthFailure.Other"), Fatal);
        assert_eq!(
            classify("UnsupportedOperation.InstanceStateSomethingNew"),
            Isolate
        );
        assert_eq!(classify("InvalidInstanceId.Whatever"), Isolate);
        assert_eq!(classify("Totally.Unknown"), Fatal);
        assert_eq!(classify(""), Fatal);
    }
}
