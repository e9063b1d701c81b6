//! What keyfleet does with each API error code: one table, one function.
//!
//! Every code in the reference (the operation's own and the common API 3.0
//! codes) has a row in [`CODES`] with its class and its scope (what the code is
//! about: an instance, a key, or the request as a whole); [`ACTION_CODES`] holds the
//! few codes that mean something else for one action. [`classify`] is total over all
//! (action, code) pairs, and the executor's isolation reads the scope from it.

use std::fmt;

use crate::cvm::Action;

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

/// What an error code is about, which decides how a failing batch is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Some instance of the batch (the batch is split by instances).
    Instance,
    /// Some key of the batch (the batch is split by keys).
    Key,
    /// The request as a whole, or not known: bisected, instances first.
    Request,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Instance => "instance",
            Scope::Key => "key",
            Scope::Request => "request",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the table: a code, what keyfleet does with it, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub code: &'static str,
    pub class: ErrorClass,
    pub scope: Scope,
    pub why: &'static str,
}

const fn rule(code: &'static str, class: ErrorClass, scope: Scope, why: &'static str) -> Rule {
    Rule {
        code,
        class,
        scope,
        why,
    }
}

/// What [`classify`] says about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub class: ErrorClass,
    pub scope: Scope,
}

impl Classification {
    /// A transient condition of one instance (busy, starting, stopping): when its batch
    /// has used up its attempts it is split, so one stuck instance does not fail 99.
    pub fn is_instance_condition(self) -> bool {
        self.class == ErrorClass::Retry && self.scope == Scope::Instance
    }
}

/// The code keyfleet records, never the API, for a key-pair job whose `InstanceIds` x
/// `KeyIds` names a pair that is not one of its planned pairs (a job row changed
/// after planning). Such a job is never sent; it fails as an isolated pair does
/// (its pairs are `failed`, the run goes on): the rest of the plan is still the
/// operator's, and `resume` must not send the changed row either.
pub const NOT_PLANNED: &str = "KeyFleet.NotPlanned";

/// The code keyfleet records for a transport failure; every `Transport.*` code is `Retry`.
pub const TRANSPORT_PREFIX: &str = "Transport.";

use ErrorClass::{Fatal, Isolate, Retry, Throttle};
use Scope::{Instance, Key, Request};

/// Every documented code with its class, its scope and a word on why.
pub const CODES: &[Rule] = &[
    // The operation's own codes.
    rule(
        "InternalServerError",
        Retry,
        Request,
        "server-side failure; usually passes",
    ),
    rule(
        "FailedOperation.DisassociateKeyPairFailed",
        Retry,
        Request,
        "the unbind failed server-side; usually passes",
    ),
    rule(
        "InvalidInstance.NotSupported",
        Isolate,
        Instance,
        "this instance cannot be operated on",
    ),
    rule(
        "InvalidInstanceId.Malformed",
        Isolate,
        Instance,
        "an instance id is malformed",
    ),
    rule(
        "InvalidInstanceId.NotFound",
        Isolate,
        Instance,
        "an instance does not exist (in this region)",
    ),
    rule(
        "InvalidKeyPairId.Malformed",
        Isolate,
        Key,
        "a key id is malformed",
    ),
    rule(
        "InvalidKeyPairId.NotFound",
        Isolate,
        Key,
        "a key does not exist (in this region)",
    ),
    rule(
        "InvalidParameterCombination",
        Fatal,
        Request,
        "parameters that may not go together (StopType with ForceStop): a keyfleet bug, never expected",
    ),
    rule(
        "InvalidParameterValue",
        Isolate,
        Request,
        "some value in the batch is refused",
    ),
    rule(
        "InvalidParameterValue.InstanceIdMalformed",
        Isolate,
        Instance,
        "an instance id is malformed",
    ),
    rule(
        "InvalidParameterValue.LimitExceeded",
        Fatal,
        Request,
        "more ids than the API takes: a keyfleet bug, never expected",
    ),
    rule(
        "MissingParameter",
        Fatal,
        Request,
        "the request is incomplete: a keyfleet or endpoint problem",
    ),
    rule(
        "MutexOperation.TaskRunning",
        Retry,
        Request,
        "an identical task is running; wait for it",
    ),
    rule(
        "OperationDenied.InstanceOperationInProgress",
        Retry,
        Instance,
        "the instance is busy with another operation",
    ),
    rule(
        "UnsupportedOperation.InstanceOsWindows",
        Isolate,
        Instance,
        "Windows instances have no SSH key pairs",
    ),
    rule(
        "UnsupportedOperation.InstanceStateBanning",
        Isolate,
        Instance,
        "the instance is blocked",
    ),
    rule(
        "UnsupportedOperation.InstanceStateEnterRescueMode",
        Isolate,
        Instance,
        "the instance is entering rescue mode",
    ),
    rule(
        "UnsupportedOperation.InstanceStateFreezing",
        Isolate,
        Instance,
        "the instance is frozen",
    ),
    rule(
        "UnsupportedOperation.InstanceStatePending",
        Retry,
        Instance,
        "the instance is being created; it will settle",
    ),
    rule(
        "UnsupportedOperation.InstanceStateRebooting",
        Retry,
        Instance,
        "the instance is rebooting; it will settle",
    ),
    rule(
        "UnsupportedOperation.InstanceStateRescueMode",
        Isolate,
        Instance,
        "the instance is in rescue mode",
    ),
    rule(
        "UnsupportedOperation.InstanceStateRunning",
        Isolate,
        Instance,
        "the instance is RUNNING; stop it or use --force-stop",
    ),
    rule(
        "UnsupportedOperation.InstanceStateShutdown",
        Isolate,
        Instance,
        "the instance is isolated (SHUTDOWN)",
    ),
    rule(
        "UnsupportedOperation.InstanceStateStarting",
        Retry,
        Instance,
        "the instance is starting; it will settle",
    ),
    rule(
        "UnsupportedOperation.InstanceStateStopping",
        Retry,
        Instance,
        "the instance is stopping; it will settle",
    ),
    rule(
        "UnsupportedOperation.InstanceStateStopped",
        Isolate,
        Instance,
        "StopInstances: the instance is already STOPPED; look before calling the stop failed (a lost reply of our own stop reads the same)",
    ),
    rule(
        "UnsupportedOperation.InstanceStateTerminating",
        Isolate,
        Instance,
        "the instance is being terminated",
    ),
    rule(
        "UnsupportedOperation.StoppedModeStopCharging",
        Isolate,
        Instance,
        "the instance is stopped without charging",
    ),
    // The common codes of every API 3.0 call.
    rule("ActionOffline", Fatal, Request, "the action was retired"),
    rule(
        "AuthFailure.InvalidAuthorization",
        Fatal,
        Request,
        "the Authorization header is wrong",
    ),
    rule(
        "AuthFailure.InvalidSecretId",
        Fatal,
        Request,
        "the SecretId is not valid",
    ),
    rule(
        "AuthFailure.MFAFailure",
        Fatal,
        Request,
        "multi-factor authentication failed",
    ),
    rule(
        "AuthFailure.SecretIdNotFound",
        Fatal,
        Request,
        "the SecretId does not exist or is disabled",
    ),
    rule(
        "AuthFailure.SignatureExpire",
        Fatal,
        Request,
        "the clock is more than 5 minutes off",
    ),
    rule(
        "AuthFailure.SignatureFailure",
        Fatal,
        Request,
        "the SecretKey is wrong",
    ),
    rule(
        "AuthFailure.TokenFailure",
        Fatal,
        Request,
        "the temporary token is wrong or expired",
    ),
    rule(
        "AuthFailure.UnauthorizedOperation",
        Fatal,
        Request,
        "the credentials may not call this action",
    ),
    rule(
        "DryRunOperation",
        Fatal,
        Request,
        "a dry run was answered; keyfleet never sends one",
    ),
    rule(
        "FailedOperation",
        Retry,
        Request,
        "a server-side failure; bounded by --max-attempts",
    ),
    rule(
        "InternalError",
        Retry,
        Request,
        "server-side failure; usually passes",
    ),
    rule(
        "InvalidAction",
        Fatal,
        Request,
        "the endpoint does not know the action",
    ),
    rule(
        "InvalidParameter",
        Fatal,
        Request,
        "the request's parameters are refused as a whole: not a per-instance problem",
    ),
    rule(
        "InvalidRequest",
        Fatal,
        Request,
        "the request body is refused as a whole",
    ),
    rule(
        "IpInBlacklist",
        Fatal,
        Request,
        "this machine's address is blocked",
    ),
    rule(
        "IpNotInWhitelist",
        Fatal,
        Request,
        "this machine's address is not allowed",
    ),
    rule(
        "LimitExceeded",
        Fatal,
        Request,
        "an account quota is exceeded; a person must act",
    ),
    rule(
        "NoSuchProduct",
        Fatal,
        Request,
        "the endpoint does not serve CVM",
    ),
    rule(
        "NoSuchVersion",
        Fatal,
        Request,
        "the endpoint does not know API version 2017-03-12",
    ),
    rule(
        "RequestLimitExceeded",
        Throttle,
        Request,
        "more than the allowed requests per second",
    ),
    rule(
        "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
        Throttle,
        Request,
        "the account's global rate limit",
    ),
    rule(
        "RequestLimitExceeded.IPLimitExceeded",
        Throttle,
        Request,
        "this address's rate limit",
    ),
    rule(
        "RequestLimitExceeded.UinLimitExceeded",
        Throttle,
        Request,
        "the account's rate limit",
    ),
    rule(
        "RequestSizeLimitExceeded",
        Fatal,
        Request,
        "the request is too large: a keyfleet bug, never expected",
    ),
    rule(
        "ResourceInUse",
        Retry,
        Request,
        "a resource is busy; usually passes",
    ),
    rule(
        "ResourceInsufficient",
        Retry,
        Request,
        "capacity is short; usually passes",
    ),
    rule(
        "ResourceNotFound",
        Isolate,
        Request,
        "some resource in the batch does not exist",
    ),
    // Many accounts (issue 23): AssumeRole's refusals end the account's work, not the
    // others'; a person fixes the role or the trust policy, then resumes.
    rule(
        "ResourceNotFound.RoleNotFound",
        Fatal,
        Request,
        "AssumeRole: the account has no such role; the account's work stops, the others go on",
    ),
    rule(
        "KeyFleet.UnknownAccount",
        Fatal,
        Request,
        "keyfleet: a job names an account the command was not given; that account stops",
    ),
    rule(
        "InvalidParameter.OverTimeError",
        Fatal,
        Request,
        "AssumeRole: DurationSeconds is more than the role allows",
    ),
    rule(
        "ResourceUnavailable",
        Retry,
        Request,
        "a resource is temporarily unavailable",
    ),
    rule(
        "ResponseSizeLimitExceeded",
        Fatal,
        Request,
        "the reply is too large: not expected for this action",
    ),
    rule(
        "ServiceUnavailable",
        Retry,
        Request,
        "the service is briefly unavailable",
    ),
    rule(
        "UnauthorizedOperation",
        Fatal,
        Request,
        "the credentials may not call this action",
    ),
    rule(
        "UnknownParameter",
        Fatal,
        Request,
        "the endpoint does not know a parameter keyfleet sent",
    ),
    rule(
        "UnsupportedOperation",
        Isolate,
        Request,
        "some instance in the batch does not support the operation",
    ),
    rule(
        "UnsupportedProtocol",
        Fatal,
        Request,
        "the endpoint wants another protocol (HTTPS?)",
    ),
    rule(
        "UnsupportedRegion",
        Fatal,
        Request,
        "the region does not offer this API",
    ),
    // Closing an incident (issue 22): key pairs, launch templates, launch configurations.
    rule(
        "InvalidParameterValue.KeyPairNotSupported",
        Isolate,
        Key,
        "the key pair is bound to an instance: it cannot be deleted",
    ),
    rule(
        "InvalidKeyPair.NotSupported",
        Isolate,
        Key,
        "the key pair is referenced by an image (or bound): it cannot be deleted",
    ),
    rule(
        "InvalidPublicKey.Malformed",
        Fatal,
        Request,
        "the public key to import is not in OpenSSH format",
    ),
    rule(
        "InvalidPublicKey.Duplicate",
        Fatal,
        Request,
        "the account already holds this public key",
    ),
    rule(
        "InvalidKeyPairName.Duplicate",
        Fatal,
        Request,
        "the account already holds a key pair of this name",
    ),
    rule(
        "InvalidKeyPair.LimitExceeded",
        Fatal,
        Request,
        "the account holds the most key pairs it may",
    ),
    rule(
        "InvalidParameterValue.LaunchTemplateIdMalformed",
        Fatal,
        Request,
        "a launch template id is not lt- and 8 characters",
    ),
    rule(
        "InvalidParameterValue.LaunchTemplateIdNotExisted",
        Fatal,
        Request,
        "the launch template does not exist (in this region)",
    ),
    rule(
        "InvalidParameterValue.LaunchTemplateIdVerNotExisted",
        Fatal,
        Request,
        "the launch template has no such version",
    ),
    rule(
        "LimitExceeded.LaunchTemplateVersionQuota",
        Fatal,
        Request,
        "the launch template holds the most versions it may (30)",
    ),
    rule(
        "InvalidParameterValue.InvalidLaunchConfigurationId",
        Fatal,
        Request,
        "a launch configuration id is not asc- and 8 characters",
    ),
    rule(
        "ResourceNotFound.LaunchConfigurationIdNotFound",
        Fatal,
        Request,
        "the launch configuration does not exist (in this region)",
    ),
];

/// Families of codes not in [`CODES`], matched by prefix.
const PREFIXES: &[(&str, ErrorClass, Scope)] = &[
    (TRANSPORT_PREFIX, Retry, Request),
    ("RequestLimitExceeded.", Throttle, Request),
    ("AuthFailure.", Fatal, Request),
    ("UnauthorizedOperation.", Fatal, Request),
    ("InvalidInstanceId.", Isolate, Instance),
    ("InvalidKeyPairId.", Isolate, Key),
    ("UnsupportedOperation.InstanceState", Isolate, Instance),
    ("UnsupportedOperation.", Isolate, Request),
];

/// Where an action gives a code another meaning than [`CODES`] does.
pub const ACTION_CODES: &[(Action, Rule)] = &[
    (
        Action::DescribeKeyPairs,
        rule(
            "InvalidKeyPairId.NotFound",
            Fatal,
            Key,
            "a key asked about does not exist: there is nothing to look for",
        ),
    ),
    (
        Action::DescribeInstances,
        rule(
            "InvalidInstanceId.NotFound",
            Isolate,
            Instance,
            "the instance no longer exists: recorded as instance_missing, not retried",
        ),
    ),
    (
        Action::StartInstances,
        rule(
            "UnsupportedOperation.InstanceStateRunning",
            Isolate,
            Instance,
            "already RUNNING: the start's goal holds; split off and confirmed by a look, not a failure of the instance",
        ),
    ),
    (
        Action::DescribeLaunchTemplateVersions,
        rule(
            "InvalidParameterValue.LaunchTemplateIdNotExisted",
            Isolate,
            Request,
            "the template no longer exists: its change fails with the code, the run goes on",
        ),
    ),
    (
        Action::CreateLaunchTemplateVersion,
        rule(
            "LimitExceeded.LaunchTemplateVersionQuota",
            Isolate,
            Request,
            "the template holds 30 versions: its change fails with the code (delete an old version), the run goes on",
        ),
    ),
    (
        Action::CreateLaunchTemplateVersion,
        rule(
            "InvalidParameterValue.LaunchTemplateIdVerNotExisted",
            Isolate,
            Request,
            "the source version no longer exists: its change fails with the code, the run goes on",
        ),
    ),
    (
        Action::CreateLaunchTemplateVersion,
        rule(
            "InvalidParameterValue.LaunchTemplateIdNotExisted",
            Isolate,
            Request,
            "the template no longer exists: its change fails with the code, the run goes on",
        ),
    ),
    (
        Action::ModifyLaunchTemplateDefaultVersion,
        rule(
            "InvalidParameterValue.LaunchTemplateIdVerNotExisted",
            Isolate,
            Request,
            "the version made no longer exists: its change fails with the code, the run goes on",
        ),
    ),
    (
        Action::ModifyLaunchTemplateDefaultVersion,
        rule(
            "InvalidParameterValue.LaunchTemplateIdNotExisted",
            Isolate,
            Request,
            "the template no longer exists: its change fails with the code, the run goes on",
        ),
    ),
    (
        Action::ModifyLaunchConfigurationAttributes,
        rule(
            "ResourceNotFound.LaunchConfigurationIdNotFound",
            Isolate,
            Request,
            "the launch configuration no longer exists: its change fails with the code, the run goes on",
        ),
    ),
];

/// The class and scope of an error code from `action`; total over every string.
///
/// A code that is neither listed nor in a known family is `Fatal`: keyfleet cannot
/// know whether a resend is harmless or whether every request will meet the same
/// error, and a stopped run loses nothing (no pair is failed, `resume` continues),
/// while guessing Retry or Isolate would spend requests and could fail good pairs.
pub fn classify(action: Action, code: &str) -> Classification {
    let listed = ACTION_CODES
        .iter()
        .find(|(a, rule)| *a == action && rule.code == code)
        .map(|(_, rule)| rule)
        .or_else(|| CODES.iter().find(|rule| rule.code == code));
    let (class, scope) = match listed {
        Some(rule) => (rule.class, rule.scope),
        None => PREFIXES
            .iter()
            .find(|(prefix, _, _)| code.starts_with(prefix))
            .map_or((Fatal, Request), |(_, class, scope)| (*class, *scope)),
    };
    Classification { class, scope }
}

/// True for a rate-limit code, whatever the action (no action gives a throttle code
/// another meaning: a test holds [`ACTION_CODES`] to that).
pub fn is_throttle(code: &str) -> bool {
    classify(Action::DisassociateInstancesKeyPairs, code).class == Throttle
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

    const UNBIND: Action = Action::DisassociateInstancesKeyPairs;

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
            assert_eq!(classify(UNBIND, code).class, want, "{code}");
            assert!(
                CODES.iter().any(|rule| rule.code == code),
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
        let mut codes: Vec<_> = CODES.iter().map(|rule| rule.code).collect();
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
        for rule in CODES {
            let row = format!("| `{}` | {} | {} | ", rule.code, rule.class, rule.scope);
            let line = doc.lines().find(|l| l.starts_with(&row));
            let line = line.unwrap_or_else(|| panic!("docs/errors.md has no row {row:?}"));
            assert!(
                line.contains(action(rule.class)),
                "{}: stale action in {line}",
                rule.code
            );
        }
        for (action_name, rule) in ACTION_CODES {
            let row = format!(
                "| {action_name} | `{}` | {} | {} | ",
                rule.code, rule.class, rule.scope
            );
            assert!(
                doc.lines().any(|l| l.starts_with(&row)),
                "docs/errors.md has no action row {row:?}"
            );
        }
        for (prefix, class, scope) in PREFIXES {
            let row = format!("| `{prefix}*` | {class} | {scope} |");
            assert!(
                doc.contains(&row),
                "docs/errors.md has no family row {row:?}"
            );
        }
        assert!(doc.contains("Any other code is **fatal**"));
        assert_eq!(classify(UNBIND, "Never.Heard.Of").class, Fatal);
    }

    #[test]
    fn families_and_unknown_codes() {
        assert_eq!(classify(UNBIND, "Transport.Timeout").class, Retry);
        assert_eq!(
            classify(UNBIND, "RequestLimitExceeded.SomethingNew").class,
            Throttle
        );
        assert_eq!(classify(UNBIND, "AuthFailure.Other").class, Fatal);
        assert_eq!(
            classify(UNBIND, "UnsupportedOperation.InstanceStateSomethingNew").class,
            Isolate
        );
        assert_eq!(
            classify(UNBIND, "InvalidInstanceId.Whatever").class,
            Isolate
        );
        assert_eq!(classify(UNBIND, "Totally.Unknown").class, Fatal);
        assert_eq!(classify(UNBIND, "").class, Fatal);
    }

    /// The scopes the executor's isolation relied on before they moved into the table.
    #[test]
    fn scopes_of_the_operation_codes() {
        let scope = |code| classify(UNBIND, code).scope;
        assert_eq!(scope("UnsupportedOperation.InstanceOsWindows"), Instance);
        assert_eq!(scope("UnsupportedOperation.InstanceStateRunning"), Instance);
        assert_eq!(scope("InvalidInstanceId.NotFound"), Instance);
        assert_eq!(scope("InvalidInstanceId.SomethingNew"), Instance);
        assert_eq!(scope("InvalidKeyPairId.NotFound"), Key);
        assert_eq!(scope("InvalidKeyPairId.SomethingNew"), Key);
        assert_eq!(scope("InvalidParameterValue"), Request);
        assert_eq!(scope("MutexOperation.TaskRunning"), Request);
        let conditions: Vec<_> = CODES
            .iter()
            .filter(|rule| classify(UNBIND, rule.code).is_instance_condition())
            .map(|rule| rule.code)
            .collect();
        assert_eq!(
            conditions,
            [
                "OperationDenied.InstanceOperationInProgress",
                "UnsupportedOperation.InstanceStatePending",
                "UnsupportedOperation.InstanceStateRebooting",
                "UnsupportedOperation.InstanceStateStarting",
                "UnsupportedOperation.InstanceStateStopping",
            ]
        );
    }

    #[test]
    fn throttling_means_the_same_for_every_action() {
        assert!(is_throttle("RequestLimitExceeded"));
        assert!(is_throttle("RequestLimitExceeded.UinLimitExceeded"));
        assert!(!is_throttle("InternalServerError"));
        for action in Action::ALL {
            for code in [
                "RequestLimitExceeded",
                "RequestLimitExceeded.IPLimitExceeded",
            ] {
                assert_eq!(classify(action, code).class, Throttle, "{action} {code}");
            }
        }
        assert!(ACTION_CODES.iter().all(|(_, rule)| rule.class != Throttle
            && classify(Action::DisassociateInstancesKeyPairs, rule.code).class != Throttle));
    }

    /// StopInstances and StartInstances: transient codes are retried, state refusals
    /// are what the reference says, and the "already there" refusals isolate one instance.
    #[test]
    fn power_codes_have_their_classes() {
        for action in [Action::StopInstances, Action::StartInstances] {
            for code in [
                "InternalServerError",
                "MutexOperation.TaskRunning",
                "OperationDenied.InstanceOperationInProgress",
                "ResourceInsufficient",
                "UnsupportedOperation.InstanceStatePending",
                "UnsupportedOperation.InstanceStateRebooting",
                "UnsupportedOperation.InstanceStateStarting",
                "UnsupportedOperation.InstanceStateStopping",
            ] {
                assert_eq!(classify(action, code).class, Retry, "{action} {code}");
            }
            for code in [
                "UnsupportedOperation.InstanceStateShutdown",
                "UnsupportedOperation.InstanceStateTerminating",
                "UnsupportedOperation.InstanceStateFreezing",
                "UnsupportedOperation.InstanceStateBanning",
                "UnsupportedOperation.StoppedModeStopCharging",
                "InvalidInstanceId.NotFound",
            ] {
                assert_eq!(
                    classify(action, code),
                    Classification {
                        class: Isolate,
                        scope: Instance
                    },
                    "{action} {code}"
                );
            }
            assert_eq!(classify(action, "InvalidParameterCombination").class, Fatal);
            assert_eq!(
                classify(action, "InvalidParameterValue.LimitExceeded").class,
                Fatal
            );
        }
        let already = |action, code| classify(action, code);
        let isolated = Classification {
            class: Isolate,
            scope: Instance,
        };
        assert_eq!(
            already(
                Action::StopInstances,
                "UnsupportedOperation.InstanceStateStopped"
            ),
            isolated
        );
        assert_eq!(
            already(
                Action::StartInstances,
                "UnsupportedOperation.InstanceStateRunning"
            ),
            isolated
        );
    }

    #[test]
    fn an_action_can_give_a_code_its_own_meaning() {
        let missing = "InvalidKeyPairId.NotFound";
        assert_eq!(classify(UNBIND, missing).class, Isolate);
        assert_eq!(classify(Action::DescribeKeyPairs, missing).class, Fatal);
        for (action, rule) in ACTION_CODES {
            assert_eq!(
                classify(*action, rule.code),
                Classification {
                    class: rule.class,
                    scope: rule.scope
                }
            );
        }
    }
}
