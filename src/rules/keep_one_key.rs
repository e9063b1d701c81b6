//! `--keep-one-key`: a plain unbind never leaves its instance without a key.
//!
//! The run's unbinds are held behind a `look` (`DescribeInstances`) of their
//! instances. An instance that keeps a key after its held unbinds has them released;
//! one that would be left with none has them skipped ([`LAST_KEY`]), with the keys it
//! holds in the reason; one the look cannot find, or could not look at, keeps them.
//!
//! Across runs (issue 26, M2): the look waits out an operation in progress on its
//! instances (it looks again while one is OPERATING, up to `--verify-wait`), and
//! gives up on an instance still OPERATING after it; a run that releases an
//! instance's unbinds claims it ([`Effect::Claim`]), so a second run on the database
//! looks again until the first lets it go, and then sees the key the first removed as
//! gone; keys another run had accepted for unbinding and not yet verified count as
//! gone whatever the look shows.

use std::collections::{BTreeMap, BTreeSet};

use super::{Claim, ClaimReason, Effect, ErrorInfo, JobFacts, JobKind, NewJob, Pair, ReadPayload};

/// The code recorded on an unbind skipped because it would leave its instance with
/// no key.
pub(crate) const LAST_KEY: &str = "KeepOneKey.LastKey";
/// The code recorded on an unbind skipped because an operation was still in progress
/// on its instance when the look's wait ended.
pub(crate) const OPERATING: &str = "KeepOneKey.Operating";
/// How long a look waits before looking again at instances still OPERATING or held
/// by another run.
pub(crate) const LOOK_AGAIN_MS: i64 = 1_000;

/// What the store read beside a look's reply, in the look's transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LookView {
    pub now: i64,
    /// Until when (Unix ms) instances still OPERATING, or held by another run, are
    /// looked at again (`--verify-wait` after the first look).
    pub recheck_until: i64,
    /// Instances whose latest operation is OPERATING.
    pub operating: BTreeSet<String>,
    /// Instances another run of the database holds.
    pub claims: BTreeMap<String, Claim>,
    /// Keys of an instance that another run had accepted for unbinding and not yet
    /// verified: gone, whatever the look shows (the cloud may not show it yet).
    pub removing: BTreeMap<String, Vec<String>>,
}

/// A look's answer, recorded: release the instances that keep a key (and claim
/// them), skip the others, look again at those another run holds.
///
/// `seen` holds the keys each instance the reply showed holds; `held` the held unbind
/// pairs of the job's instances.
pub(crate) fn looked(
    job: &JobFacts,
    seen: &BTreeMap<String, Vec<String>>,
    held: &[Pair],
    view: &LookView,
) -> Vec<Effect> {
    let mut removing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for pair in held {
        removing
            .entry(&pair.instance_id)
            .or_default()
            .push(&pair.key_id);
    }
    let mut effects = Vec::new();
    let mut ready = Vec::new();
    let mut again = Vec::new();
    for (instance, mut removed) in removing {
        removed.sort_unstable();
        let elsewhere: &[String] = view.removing.get(instance).map_or(&[], Vec::as_slice);
        let claim = view.claims.get(instance).filter(|c| c.blocks());
        let refusal = match (seen.get(instance), claim) {
            (None, _) => Some(ErrorInfo::new(
                "InvalidInstanceId.NotFound",
                format!("--keep-one-key: DescribeInstances does not know {instance}"),
            )),
            (Some(_), Some(_)) if view.now < view.recheck_until => {
                again.push(instance.to_string());
                continue;
            }
            (Some(_), Some(claim)) => Some(ErrorInfo::new(
                super::CLAIMED,
                format!(
                    "--keep-one-key: run {} of this database holds {instance} (it unbinds its keys \
                     or has it down); nothing was unbound from it: finish (or resume) run {}, then \
                     run this again",
                    claim.run_id(),
                    claim.run_id()
                ),
            )),
            (Some(_), None)
                if view.operating.contains(instance) && view.now < view.recheck_until =>
            {
                again.push(instance.to_string());
                continue;
            }
            (Some(_), None) if view.operating.contains(instance) => Some(ErrorInfo::new(
                OPERATING,
                format!(
                    "--keep-one-key: an operation was still in progress on {instance} when the look \
                     gave up waiting (--verify-wait); nothing was unbound from it"
                ),
            )),
            (Some(bound), None)
                if bound
                    .iter()
                    .any(|k| !removed.contains(&k.as_str()) && !elsewhere.contains(k)) =>
            {
                None
            }
            (Some(bound), None) => Some(ErrorInfo::new(
                LAST_KEY,
                format!(
                    "--keep-one-key: unbinding {} would leave {instance} with no key (it holds {}{}); \
                     nothing was unbound from it",
                    removed.join(" "),
                    if bound.is_empty() {
                        "none".to_string()
                    } else {
                        bound.join(" ")
                    },
                    if elsewhere.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", and another run of this database is unbinding {}",
                            elsewhere.join(" ")
                        )
                    }
                ),
            )),
        };
        match refusal {
            None => ready.push(instance.to_string()),
            Some(reason) => effects.push(Effect::SkipHeld {
                region: job.region.clone(),
                instances: vec![instance.to_string()],
                reason,
            }),
        }
    }
    if !ready.is_empty() {
        effects.push(Effect::Claim {
            region: job.region.clone(),
            instances: ready.clone(),
            reason: ClaimReason::LastKey,
        });
        effects.push(Effect::Release {
            region: job.region.clone(),
            force_stop: job.force_stop,
            instances: ready,
        });
    }
    if !again.is_empty() {
        effects.push(Effect::AddJob(NewJob {
            kind: JobKind::Look,
            region: job.region.clone(),
            account: None,
            force_stop: job.force_stop,
            instance_ids: again,
            key_ids: Vec::new(),
            payload: Some(
                ReadPayload {
                    recheck_until: view.recheck_until,
                    items: Vec::new(),
                }
                .encode(),
            ),
            item_ids: Vec::new(),
            due_at: view.now + LOOK_AGAIN_MS,
        }));
    }
    effects
}

/// A look failed for good: without the cloud's word nothing held is unbound.
pub(crate) fn look_failed(job: &JobFacts, error: &ErrorInfo) -> Vec<Effect> {
    vec![Effect::SkipHeld {
        region: job.region.clone(),
        instances: job.instance_ids.clone(),
        reason: ErrorInfo::new(
            &error.code,
            format!(
                "--keep-one-key: could not look at the instance ({})",
                error.code
            ),
        ),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(instances: &[&str]) -> JobFacts {
        JobFacts {
            id: 1,
            kind: JobKind::Look,
            region: "ap-guangzhou".into(),
            account: None,
            force_stop: false,
            instance_ids: instances.iter().map(|s| s.to_string()).collect(),
            key_ids: Vec::new(),
        }
    }

    fn keys(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(i, k)| (i.to_string(), k.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn only_instances_that_keep_a_key_are_released() {
        let job = look(&["ins-a0000001", "ins-b0000001", "ins-c0000001"]);
        let seen = keys(&[
            ("ins-a0000001", &["skey-leak0001", "skey-other001"]),
            ("ins-b0000001", &["skey-leak0001"]),
        ]);
        let held = [
            Pair::new(1, "ins-a0000001", "skey-leak0001"),
            Pair::new(2, "ins-b0000001", "skey-leak0001"),
            Pair::new(3, "ins-c0000001", "skey-leak0001"),
        ];
        let effects = looked(&job, &seen, &held, &LookView::default());
        assert_eq!(effects.len(), 4, "{effects:#?}");
        let Effect::SkipHeld {
            instances, reason, ..
        } = &effects[0]
        else {
            panic!("{effects:?}");
        };
        assert_eq!(
            (instances.as_slice(), reason.code.as_str()),
            (&["ins-b0000001".to_string()][..], LAST_KEY)
        );
        assert_eq!(
            reason.message,
            "--keep-one-key: unbinding skey-leak0001 would leave ins-b0000001 with no key \
             (it holds skey-leak0001); nothing was unbound from it"
        );
        let Effect::SkipHeld { reason, .. } = &effects[1] else {
            panic!("{effects:?}");
        };
        assert_eq!(reason.code, "InvalidInstanceId.NotFound");
        assert!(matches!(effects[2], Effect::Claim { .. }), "{effects:?}");
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
    fn removing_every_key_an_instance_holds_is_refused() {
        let job = look(&["ins-a0000001"]);
        let seen = keys(&[("ins-a0000001", &["skey-a0000001", "skey-b0000001"])]);
        let held = [
            Pair::new(1, "ins-a0000001", "skey-b0000001"),
            Pair::new(2, "ins-a0000001", "skey-a0000001"),
        ];
        let effects = looked(&job, &seen, &held, &LookView::default());
        let [Effect::SkipHeld { reason, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        assert!(
            reason
                .message
                .contains("unbinding skey-a0000001 skey-b0000001 would leave")
        );
    }

    #[test]
    fn only_instances_that_keep_a_key_are_released_and_claimed() {
        let job = look(&["ins-a0000001"]);
        let seen = keys(&[("ins-a0000001", &["skey-a0000001", "skey-b0000001"])]);
        let held = [Pair::new(1, "ins-a0000001", "skey-a0000001")];
        let effects = looked(&job, &seen, &held, &LookView::default());
        assert_eq!(
            effects[0],
            Effect::Claim {
                region: "ap-guangzhou".into(),
                instances: vec!["ins-a0000001".into()],
                reason: ClaimReason::LastKey,
            }
        );
        assert!(matches!(effects[1], Effect::Release { .. }), "{effects:?}");
    }

    /// The review's M2: another run is unbinding skey-a0000001 (accepted, the cloud
    /// still lists it); removing skey-b0000001 as well would leave nothing.
    #[test]
    fn a_key_another_run_is_removing_counts_as_gone() {
        let job = look(&["ins-a0000001"]);
        let seen = keys(&[("ins-a0000001", &["skey-a0000001", "skey-b0000001"])]);
        let held = [Pair::new(1, "ins-a0000001", "skey-b0000001")];
        let view = LookView {
            removing: BTreeMap::from([(
                "ins-a0000001".to_string(),
                vec!["skey-a0000001".to_string()],
            )]),
            ..LookView::default()
        };
        let effects = looked(&job, &seen, &held, &view);
        let [Effect::SkipHeld { reason, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        assert_eq!(reason.code, LAST_KEY);
        assert!(
            reason
                .message
                .contains("another run of this database is unbinding skey-a0000001"),
            "{}",
            reason.message
        );
    }

    #[test]
    fn an_instance_another_run_holds_is_looked_at_again_then_given_up() {
        let job = look(&["ins-a0000001", "ins-b0000001"]);
        let seen = keys(&[
            ("ins-a0000001", &["skey-a0000001", "skey-b0000001"]),
            ("ins-b0000001", &["skey-a0000001", "skey-b0000001"]),
        ]);
        let held = [
            Pair::new(1, "ins-a0000001", "skey-a0000001"),
            Pair::new(2, "ins-b0000001", "skey-a0000001"),
        ];
        let mut view = LookView {
            now: 1_000,
            recheck_until: 5_000,
            claims: BTreeMap::from([
                ("ins-a0000001".to_string(), Claim::Busy { run_id: 7 }),
                ("ins-b0000001".to_string(), Claim::Stale { run_id: 6 }),
            ]),
            ..LookView::default()
        };
        let effects = looked(&job, &seen, &held, &view);
        // The stale claim is taken over; the busy one is looked at again later.
        assert!(
            matches!(&effects[0], Effect::Claim { instances, .. } if instances == &["ins-b0000001".to_string()])
        );
        assert!(
            matches!(&effects[1], Effect::Release { instances, .. } if instances == &["ins-b0000001".to_string()])
        );
        let Effect::AddJob(again) = &effects[2] else {
            panic!("{effects:?}");
        };
        assert_eq!(
            (again.kind, again.instance_ids.as_slice(), again.due_at),
            (JobKind::Look, &["ins-a0000001".to_string()][..], 2_000)
        );
        view.now = 5_000;
        let effects = looked(&job, &seen, &held, &view);
        let Effect::SkipHeld {
            instances, reason, ..
        } = &effects[0]
        else {
            panic!("{effects:?}");
        };
        assert_eq!(instances, &["ins-a0000001".to_string()]);
        assert_eq!(reason.code, crate::rules::CLAIMED);
        assert!(
            reason
                .message
                .contains("run 7 of this database holds ins-a0000001")
        );
    }

    #[test]
    fn an_instance_still_operating_after_the_wait_is_not_unbound() {
        let job = look(&["ins-a0000001"]);
        let seen = keys(&[("ins-a0000001", &["skey-a0000001", "skey-b0000001"])]);
        let held = [Pair::new(1, "ins-a0000001", "skey-a0000001")];
        let view = LookView {
            operating: BTreeSet::from(["ins-a0000001".to_string()]),
            ..LookView::default()
        };
        let effects = looked(&job, &seen, &held, &view);
        let [Effect::SkipHeld { reason, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        assert_eq!(reason.code, OPERATING);
        // Before the wait is over, it looks again.
        let waiting = LookView {
            now: 10,
            recheck_until: 20,
            ..view
        };
        let effects = looked(&job, &seen, &held, &waiting);
        assert!(
            matches!(effects.as_slice(), [Effect::AddJob(j)] if j.kind == JobKind::Look),
            "{effects:?}"
        );
    }

    #[test]
    fn a_failed_look_unbinds_nothing() {
        let job = look(&["ins-a0000001"]);
        let effects = look_failed(&job, &ErrorInfo::new("UnauthorizedOperation", "no"));
        let [Effect::SkipHeld { reason, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        assert_eq!(
            reason.message,
            "--keep-one-key: could not look at the instance (UnauthorizedOperation)"
        );
    }
}
