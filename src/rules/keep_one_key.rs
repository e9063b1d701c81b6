//! `--keep-one-key`: a plain unbind never leaves its instance without a key.
//!
//! The run's unbinds are held behind a `look` (`DescribeInstances`) of their
//! instances. An instance that keeps a key after its held unbinds has them released;
//! one that would be left with none has them skipped ([`LAST_KEY`]), with the keys it
//! holds in the reason; one the look cannot find, or could not look at, keeps them.

use std::collections::BTreeMap;

use super::{Effect, ErrorInfo, JobFacts, Pair};

/// The code recorded on an unbind skipped because it would leave its instance with
/// no key.
pub(crate) const LAST_KEY: &str = "KeepOneKey.LastKey";

/// A look's answer, recorded: release the instances that keep a key, skip the others.
///
/// `seen` holds the keys each instance the reply showed holds; `held` the held unbind
/// pairs of the job's instances.
pub(crate) fn looked(
    job: &JobFacts,
    seen: &BTreeMap<String, Vec<String>>,
    held: &[Pair],
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
    for (instance, mut removed) in removing {
        removed.sort_unstable();
        let refusal = match seen.get(instance) {
            None => Some(ErrorInfo::new(
                "InvalidInstanceId.NotFound",
                format!("--keep-one-key: DescribeInstances does not know {instance}"),
            )),
            Some(bound) if bound.iter().any(|k| !removed.contains(&k.as_str())) => None,
            Some(bound) => Some(ErrorInfo::new(
                LAST_KEY,
                format!(
                    "--keep-one-key: unbinding {} would leave {instance} with no key (it holds {}); \
                     nothing was unbound from it",
                    removed.join(" "),
                    if bound.is_empty() {
                        "none".to_string()
                    } else {
                        bound.join(" ")
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
        effects.push(Effect::Release {
            region: job.region.clone(),
            force_stop: job.force_stop,
            instances: ready,
        });
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
    use crate::rules::JobKind;

    fn look(instances: &[&str]) -> JobFacts {
        JobFacts {
            id: 1,
            kind: JobKind::Look,
            region: "ap-guangzhou".into(),
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
        let effects = looked(&job, &seen, &held);
        assert_eq!(effects.len(), 3, "{effects:#?}");
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
        assert_eq!(
            effects[2],
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
        let effects = looked(&job, &seen, &held);
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
