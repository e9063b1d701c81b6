//! A rotation's rules: bind the new keys, confirm them, and only then unbind the old.
//!
//! - An accepted `bind` job: a `confirm` of its bind pairs is queued, due
//!   [`FIRST_LOOK_MS`] later (the operation is asynchronous; looking sooner mostly sees
//!   it OPERATING).
//! - A confirmation's verdicts: a new key the cloud reports FAILED (or not bound) is
//!   sent again in a new `bind` job, up to `--max-attempts` operations; an instance
//!   whose every new key is `bound` has its held unbinds released; an instance whose
//!   new key cannot be bound has them skipped with the reason
//!   (`new key skey-... not bound: <code>`). Its old keys stay.
//! - A `bind` job that failed for good: its instances' held unbinds are skipped; a key
//!   the API says does not exist (a key-scoped code) stops every other queued `bind`
//!   job of that key, so the whole rotation to it ends cleanly.
//! - A `confirm` that failed for good: without the cloud's word nothing is unbound.

use std::collections::{BTreeMap, BTreeSet};

use super::{Effect, ErrorInfo, FollowUp, JobFacts, JobKind, NewJob, Pair, ReadItem, ReadPayload};
use crate::states::Verified;
use crate::taxonomy::{Scope, classify};

/// How long after an Associate is accepted its confirmation first looks.
pub(crate) const FIRST_LOOK_MS: i64 = 1_000;

/// The code of an unbind that stayed held with nothing left to release it (a
/// safety net: every path of a rotation ends a hold itself).
pub(crate) const NOT_RELEASED: &str = "KeyFleet.NotReleased";

/// An accepted `bind` job: confirm its accepted pairs (their RequestId is the one
/// whose operation state tells whether it was applied).
pub(crate) fn bind_accepted(
    job: &JobFacts,
    accepted: Vec<ReadItem>,
    now: i64,
    follow_up: &FollowUp,
) -> Vec<Effect> {
    if accepted.is_empty() {
        return Vec::new();
    }
    let instance_ids: Vec<String> = accepted
        .iter()
        .map(|i| i.instance_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let payload = ReadPayload {
        recheck_until: now + FIRST_LOOK_MS + follow_up.confirm_wait_ms,
        items: accepted,
    };
    vec![Effect::AddJob(NewJob {
        kind: JobKind::Confirm,
        region: job.region.clone(),
        account: None,
        force_stop: job.force_stop,
        instance_ids,
        key_ids: job.key_ids.clone(),
        payload: Some(payload.encode()),
        item_ids: Vec::new(),
        due_at: now + FIRST_LOOK_MS,
    })]
}

/// A bind pair a confirmation gave a verdict on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Confirmed {
    pub pair: Pair,
    pub verdict: Verified,
    /// Operations of this pair the cloud reported FAILED before this one.
    pub op_failures: i64,
}

/// A confirmation's verdicts, recorded: send again, skip, or release.
///
/// `unconfirmed` counts, for each instance with a key confirmed `bound` here, its bind
/// pairs in the run that are not (yet) succeeded and `bound`, read after this
/// confirmation's verdicts were stored: an instance is ready when it has none.
pub(crate) fn confirmed(
    job: &JobFacts,
    pairs: &[Confirmed],
    unconfirmed: &BTreeMap<String, i64>,
    now: i64,
    follow_up: &FollowUp,
) -> Vec<Effect> {
    let mut resend: Vec<Pair> = Vec::new();
    let mut lost: BTreeMap<&str, (&str, Verified)> = BTreeMap::new();
    let mut bound: BTreeSet<&str> = BTreeSet::new();
    let mut sorted: Vec<&Confirmed> = pairs.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.pair.instance_id, &a.pair.key_id).cmp(&(&b.pair.instance_id, &b.pair.key_id))
    });
    for c in sorted {
        match c.verdict {
            Verified::Bound => {
                bound.insert(&c.pair.instance_id);
            }
            Verified::OperationFailed | Verified::NotBound
                if c.op_failures + 1 < follow_up.max_attempts =>
            {
                resend.push(c.pair.clone());
            }
            verdict => {
                lost.entry(&c.pair.instance_id)
                    .or_insert((&c.pair.key_id, verdict));
            }
        }
    }
    let mut effects = Vec::new();
    if !resend.is_empty() {
        effects.push(Effect::CountOperationFailure {
            item_ids: resend.iter().map(|p| p.item_id).collect(),
        });
        effects.extend(
            super::jobs_for_pairs(JobKind::Bind, &job.region, job.force_stop, &resend, now)
                .into_iter()
                .map(Effect::AddJob),
        );
    }
    for (instance, (key, verdict)) in lost {
        effects.push(Effect::SkipHeld {
            region: job.region.clone(),
            instances: vec![instance.to_string()],
            reason: ErrorInfo::new(
                verdict.as_str(),
                format!("new key {key} not bound: {verdict}"),
            ),
        });
    }
    let ready: Vec<String> = bound
        .into_iter()
        .filter(|instance| unconfirmed.get(*instance).copied().unwrap_or(0) == 0)
        .map(str::to_string)
        .collect();
    if !ready.is_empty() {
        effects.push(Effect::Release {
            region: job.region.clone(),
            force_stop: job.force_stop,
            instances: ready,
        });
    }
    effects
}

/// The one key whose rotation a failed `bind` job stops: its only key, when the code
/// is about the key (it does not exist, ...). The store then reads that key's other
/// queued `bind` jobs for [`bind_failed`].
pub(crate) fn stopped_key<'a>(job: &'a JobFacts, error: &ErrorInfo) -> Option<&'a str> {
    let key_scoped = classify(JobKind::Bind.action(), &error.code).scope == Scope::Key;
    match job.key_ids.as_slice() {
        [key] if key_scoped => Some(key),
        _ => None,
    }
}

/// Another queued `bind` job of a stopped key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtherBind {
    pub job_id: i64,
    pub region: String,
    pub instance_ids: Vec<String>,
}

/// A `bind` job failed for good: its instances keep their old keys; a key the API
/// does not know stops `others`, the rest of the rotation to it.
pub(crate) fn bind_failed(job: &JobFacts, error: &ErrorInfo, others: &[OtherBind]) -> Vec<Effect> {
    let reason = ErrorInfo::new(
        &error.code,
        format!(
            "new key {} not bound: {}",
            job.key_ids.join(" "),
            error.code
        ),
    );
    let mut effects = vec![Effect::SkipHeld {
        region: job.region.clone(),
        instances: job.instance_ids.clone(),
        reason: reason.clone(),
    }];
    if let Some(key) = stopped_key(job, error) {
        let stopped = ErrorInfo::new(
            &error.code,
            format!(
                "not sent: job {} found that new key {key} cannot be bound ({}: {})",
                job.id, error.code, error.message
            ),
        );
        for other in others {
            effects.push(Effect::FailJob {
                job_id: other.job_id,
                reason: stopped.clone(),
            });
            effects.push(Effect::SkipHeld {
                region: other.region.clone(),
                instances: other.instance_ids.clone(),
                reason: reason.clone(),
            });
        }
    }
    effects
}

/// A `confirm` failed for good: without the cloud's word nothing held is unbound.
pub(crate) fn confirm_failed(job: &JobFacts, error: &ErrorInfo) -> Vec<Effect> {
    vec![Effect::SkipHeld {
        region: job.region.clone(),
        instances: job.instance_ids.clone(),
        reason: ErrorInfo::new(
            &error.code,
            format!(
                "new key {} not bound: not confirmed ({})",
                job.key_ids.join(" "),
                error.code
            ),
        ),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: JobKind, instances: &[&str], keys: &[&str]) -> JobFacts {
        JobFacts {
            id: 7,
            kind,
            region: "ap-guangzhou".into(),
            account: None,
            force_stop: false,
            instance_ids: instances.iter().map(|s| s.to_string()).collect(),
            key_ids: keys.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn confirmed_pair(
        id: i64,
        instance: &str,
        key: &str,
        verdict: Verified,
        op_failures: i64,
    ) -> Confirmed {
        Confirmed {
            pair: Pair::new(id, instance, key),
            verdict,
            op_failures,
        }
    }

    #[test]
    fn an_accepted_bind_is_confirmed_a_second_later_with_its_request_ids() {
        let bind = job(
            JobKind::Bind,
            &["ins-00000002", "ins-00000001"],
            &["skey-new00001"],
        );
        let accepted = vec![
            ReadItem {
                item_id: 3,
                instance_id: "ins-00000002".into(),
                key_id: "skey-new00001".into(),
                request_id: Some("req-1".into()),
                bind: true,
            },
            ReadItem {
                item_id: 4,
                instance_id: "ins-00000001".into(),
                key_id: "skey-new00001".into(),
                request_id: Some("req-1".into()),
                bind: true,
            },
        ];
        let effects = bind_accepted(&bind, accepted.clone(), 10_000, &FollowUp::default());
        let [Effect::AddJob(confirm)] = effects.as_slice() else {
            panic!("one confirmation expected: {effects:?}");
        };
        assert_eq!(confirm.kind, JobKind::Confirm);
        assert_eq!(confirm.due_at, 11_000);
        assert_eq!(confirm.instance_ids, ["ins-00000001", "ins-00000002"]);
        assert!(confirm.item_ids.is_empty(), "a read moves no item");
        let payload: ReadPayload =
            serde_json::from_str(confirm.payload.as_deref().unwrap()).unwrap();
        assert_eq!(payload.items, accepted);
        assert_eq!(payload.recheck_until, 11_000 + 60_000);
        assert!(bind_accepted(&bind, Vec::new(), 0, &FollowUp::default()).is_empty());
    }

    #[test]
    fn a_confirmation_releases_bound_instances_resends_failed_keys_and_skips_lost_ones() {
        let confirm = job(
            JobKind::Confirm,
            &["ins-a0000001", "ins-b0000001", "ins-c0000001"],
            &["skey-new00001"],
        );
        let pairs = [
            confirmed_pair(1, "ins-a0000001", "skey-new00001", Verified::Bound, 0),
            confirmed_pair(
                2,
                "ins-b0000001",
                "skey-new00001",
                Verified::OperationFailed,
                0,
            ),
            confirmed_pair(
                3,
                "ins-c0000001",
                "skey-new00001",
                Verified::OperationFailed,
                9,
            ),
        ];
        let unconfirmed = BTreeMap::from([("ins-a0000001".to_string(), 0)]);
        let effects = confirmed(&confirm, &pairs, &unconfirmed, 5, &FollowUp::default());
        assert_eq!(effects.len(), 4, "{effects:#?}");
        assert_eq!(
            effects[0],
            Effect::CountOperationFailure { item_ids: vec![2] }
        );
        let Effect::AddJob(resend) = &effects[1] else {
            panic!("a resend expected: {effects:?}");
        };
        assert_eq!(
            (resend.kind, resend.item_ids.as_slice()),
            (JobKind::Bind, &[2][..])
        );
        assert_eq!(resend.instance_ids, ["ins-b0000001"]);
        // The tenth operation reported FAILED (--max-attempts 10) is not sent again.
        assert_eq!(
            effects[2],
            Effect::SkipHeld {
                region: "ap-guangzhou".into(),
                instances: vec!["ins-c0000001".into()],
                reason: ErrorInfo::new(
                    "operation_failed",
                    "new key skey-new00001 not bound: operation_failed"
                ),
            }
        );
        assert_eq!(
            effects[3],
            Effect::Release {
                region: "ap-guangzhou".into(),
                force_stop: false,
                instances: vec!["ins-a0000001".into()],
            }
        );
    }

    #[test]
    fn an_instance_waits_until_every_new_key_is_confirmed() {
        let confirm = job(JobKind::Confirm, &["ins-a0000001"], &["skey-new00001"]);
        let pairs = [confirmed_pair(
            1,
            "ins-a0000001",
            "skey-new00001",
            Verified::Bound,
            0,
        )];
        let waiting = BTreeMap::from([("ins-a0000001".to_string(), 1)]);
        assert!(confirmed(&confirm, &pairs, &waiting, 5, &FollowUp::default()).is_empty());
    }

    #[test]
    fn a_key_that_does_not_exist_stops_its_whole_rotation() {
        let bind = job(JobKind::Bind, &["ins-a0000001"], &["skey-new00001"]);
        let missing = ErrorInfo::new("InvalidKeyPairId.NotFound", "no such key");
        assert_eq!(stopped_key(&bind, &missing), Some("skey-new00001"));
        let others = [OtherBind {
            job_id: 9,
            region: "ap-shanghai".into(),
            instance_ids: vec!["ins-b0000001".into()],
        }];
        let effects = bind_failed(&bind, &missing, &others);
        assert_eq!(effects.len(), 3, "{effects:#?}");
        let Effect::FailJob { job_id: 9, reason } = &effects[1] else {
            panic!("job 9 should fail: {effects:?}");
        };
        assert!(
            reason
                .message
                .starts_with("not sent: job 7 found that new key skey-new00001")
        );
        assert!(matches!(&effects[2], Effect::SkipHeld { region, .. } if region == "ap-shanghai"));

        // An instance-scoped refusal keeps the old keys of that job's instances only.
        let windows = ErrorInfo::new("UnsupportedOperation.InstanceOsWindows", "windows");
        assert_eq!(stopped_key(&bind, &windows), None);
        let effects = bind_failed(&bind, &windows, &others);
        assert_eq!(effects.len(), 1);
        let Effect::SkipHeld { reason, .. } = &effects[0] else {
            panic!("{effects:?}");
        };
        assert_eq!(
            reason.message,
            "new key skey-new00001 not bound: UnsupportedOperation.InstanceOsWindows"
        );
    }

    #[test]
    fn an_unconfirmed_bind_keeps_the_old_keys() {
        let confirm = job(JobKind::Confirm, &["ins-a0000001"], &["skey-new00001"]);
        let effects = confirm_failed(&confirm, &ErrorInfo::new("AuthFailure", "no"));
        let [
            Effect::SkipHeld {
                reason, instances, ..
            },
        ] = effects.as_slice()
        else {
            panic!("{effects:?}");
        };
        assert_eq!(instances, &["ins-a0000001"]);
        assert_eq!(
            reason.message,
            "new key skey-new00001 not bound: not confirmed (AuthFailure)"
        );
    }
}
