//! Isolation: how a batch that failed because of some of its instances or keys
//! is split so that the rest can proceed.
//!
//! The API fails a whole batch for one bad instance, and its message names the
//! instance only for some codes (the Windows one does, the RUNNING one does not).
//! So: split off an id the message names; otherwise bisect, instances first. A
//! code that is about an instance fails all pairs of a single-instance job at
//! once (every key would meet the same refusal); a code about a key does the same
//! for a single-key job; any other code is bisected down to one pair.

use crate::taxonomy::Scope;

/// The children (instance ids, key ids) that replace a failed job, or `None` when
/// the job cannot be divided further for this code and its pairs fail.
///
/// `scope` is what the refusal's code is about ([`crate::taxonomy::classify`]).
pub(super) fn split(
    instance_ids: &[String],
    key_ids: &[String],
    scope: Scope,
    message: &str,
) -> Option<Vec<(Vec<String>, Vec<String>)>> {
    let named = |ids: &[String]| ids.iter().position(|id| message.contains(id.as_str()));
    if instance_ids.len() > 1
        && let Some(i) = named(instance_ids)
    {
        let (alone, rest) = take_out(instance_ids, i);
        return Some(vec![(alone, key_ids.to_vec()), (rest, key_ids.to_vec())]);
    }
    if key_ids.len() > 1
        && let Some(k) = named(key_ids)
    {
        let (alone, rest) = take_out(key_ids, k);
        return Some(vec![
            (instance_ids.to_vec(), alone),
            (instance_ids.to_vec(), rest),
        ]);
    }
    let bisect_instances = || {
        let (a, b) = instance_ids.split_at(instance_ids.len() / 2);
        Some(vec![
            (a.to_vec(), key_ids.to_vec()),
            (b.to_vec(), key_ids.to_vec()),
        ])
    };
    let bisect_keys = || {
        let (a, b) = key_ids.split_at(key_ids.len() / 2);
        Some(vec![
            (instance_ids.to_vec(), a.to_vec()),
            (instance_ids.to_vec(), b.to_vec()),
        ])
    };
    match scope {
        Scope::Instance if instance_ids.len() > 1 => bisect_instances(),
        Scope::Key if key_ids.len() > 1 => bisect_keys(),
        Scope::Request if instance_ids.len() > 1 => bisect_instances(),
        Scope::Request if key_ids.len() > 1 => bisect_keys(),
        _ => None,
    }
}

fn take_out(ids: &[String], index: usize) -> (Vec<String>, Vec<String>) {
    let alone = vec![ids[index].clone()];
    let rest = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, id)| id.clone())
        .collect();
    (alone, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scope the taxonomy gives an unbind error code.
    fn sc(code: &str) -> Scope {
        crate::taxonomy::classify(crate::cvm::Action::DisassociateInstancesKeyPairs, code).scope
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:08x}")).collect()
    }

    #[test]
    fn a_named_instance_is_split_off() {
        let instances = ids("ins-", 100);
        let keys = ids("skey-", 2);
        let message = format!(
            "The instance {} with the Xserver windows2012 operating system does not support this operation.",
            instances[42]
        );
        let children = split(
            &instances,
            &keys,
            sc("UnsupportedOperation.InstanceOsWindows"),
            &message,
        )
        .unwrap();
        assert_eq!(children[0], (vec![instances[42].clone()], keys.clone()));
        assert_eq!(children[1].0.len(), 99);
        assert!(!children[1].0.contains(&instances[42]));
    }

    #[test]
    fn an_example_id_in_the_message_that_is_not_in_the_job_is_ignored() {
        let instances = ids("ins-", 4);
        let keys = ids("skey-", 1);
        let children = split(
            &instances,
            &keys,
            sc("InvalidInstanceId.Malformed"),
            "For example, ins-1122 has an invalid ID length.",
        )
        .unwrap();
        assert_eq!(children[0].0, instances[..2]);
        assert_eq!(children[1].0, instances[2..]);
    }

    #[test]
    fn unnamed_codes_bisect_instances_then_keys_down_to_one_pair() {
        let keys = ids("skey-", 3);
        let one = ids("ins-", 1);
        let children = split(
            &one,
            &keys,
            sc("InvalidParameterValue"),
            "Incorrect parameter value.",
        )
        .unwrap();
        assert_eq!(
            children,
            vec![
                (one.clone(), keys[..1].to_vec()),
                (one.clone(), keys[1..].to_vec())
            ]
        );
        assert_eq!(
            split(&one, &keys[..1], sc("InvalidParameterValue"), ""),
            None
        );
    }

    #[test]
    fn instance_codes_fail_a_single_instance_job_whole() {
        let one = ids("ins-", 1);
        let keys = ids("skey-", 50);
        assert_eq!(
            split(
                &one,
                &keys,
                sc("UnsupportedOperation.InstanceStateRunning"),
                "Running instances do not support this operation."
            ),
            None
        );
        let two = ids("ins-", 2);
        assert!(
            split(
                &two,
                &keys,
                sc("UnsupportedOperation.InstanceStateRunning"),
                ""
            )
            .is_some()
        );
    }

    #[test]
    fn key_codes_bisect_keys() {
        let instances = ids("ins-", 10);
        let keys = ids("skey-", 4);
        let children = split(
            &instances,
            &keys,
            sc("InvalidKeyPairId.NotFound"),
            "Invalid key pair ID. The specified key pair ID does not exist.",
        )
        .unwrap();
        assert_eq!(children[0], (instances.clone(), keys[..2].to_vec()));
        assert_eq!(
            split(&instances, &keys[..1], sc("InvalidKeyPairId.NotFound"), ""),
            None
        );
    }

    /// The bound: about 2 x ceil(log2 100) extra requests per bad instance
    /// when the message names nobody.
    #[test]
    fn bisection_cost_for_one_silent_bad_instance() {
        let instances = ids("ins-", 100);
        let keys = ids("skey-", 1);
        let bad = instances[77].clone();
        let mut queue = vec![instances];
        let mut requests = 0;
        while let Some(job) = queue.pop() {
            requests += 1;
            if job.contains(&bad)
                && let Some(children) = split(
                    &job,
                    &keys,
                    sc("UnsupportedOperation.InstanceStateRunning"),
                    "Running instances do not support this operation.",
                )
            {
                queue.extend(children.into_iter().map(|(i, _)| i));
            }
        }
        assert!(requests <= 1 + 2 * 7, "{requests} requests");
    }
}
