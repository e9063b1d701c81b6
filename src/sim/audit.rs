//! The proof that a run did what was asked: the simulator's fleet and journal
//! compared with the run's recorded outcomes.
//!
//! Used by `keyfleet demo` and by the end-to-end and crash tests. It checks the
//! promises keyfleet makes to an operator: no binding was removed that the input
//! did not ask for, every pair reported succeeded is unbound and carries the
//! RequestId of a success reply that covered it, and no pair is left pending.
//!
//! A RequestId proves a request *accepted*, not *applied*: the operation it started
//! may end FAILED (or not have completed yet) with the key still bound. Such pairs
//! are listed in [`Audit::accepted_not_applied`], besides being violations.

use std::collections::{BTreeMap, BTreeSet};

use super::JournalEntry;

/// One valid pair's outcome as keyfleet reports it. The audit's own row type: the
/// simulator is the independent oracle and imports nothing from keyfleet's store
/// (callers copy `store::queue::PairOutcome` rows into it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairOutcome {
    pub region: String,
    pub instance_id: String,
    pub key_id: String,
    pub status: String,
    pub request_id: Option<String>,
    pub error_code: Option<String>,
}

/// A pair as (instance id, key id).
pub type Binding = (String, String);

/// What an audit found. [`Audit::violations`] is empty when every promise held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Bindings removed that the input asked to remove.
    pub removed_as_asked: usize,
    /// Pairs reported succeeded.
    pub succeeded: usize,
    /// Pairs reported failed, still bound as the failure says.
    pub failed_still_bound: usize,
    /// Pairs reported failed whose binding is gone anyway (an earlier attempt was
    /// applied but its reply was lost, and a later one was refused).
    pub failed_but_unbound: usize,
    /// Pairs reported skipped (never sent: a rotation's new key was not bound, or
    /// `--keep-one-key`), still bound as the skip says.
    pub skipped_still_bound: usize,
    /// Bindings gained that a rotation asked for (its bind pairs).
    pub added_as_asked: usize,
    /// Pairs reported succeeded whose key is still bound: the request was accepted but
    /// not applied (its operation ended FAILED, or has not completed). Sorted.
    pub accepted_not_applied: Vec<Binding>,
    /// Broken promises, each in words.
    pub violations: Vec<String>,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Compares `before` and `after` (the fleet's bindings) with `outcomes` (the run's
/// valid pairs) and `journal` (every request the simulator saw).
pub fn audit(
    before: &BTreeSet<Binding>,
    after: &BTreeSet<Binding>,
    outcomes: &[PairOutcome],
    journal: &[JournalEntry],
) -> Audit {
    audit_rotation(before, after, outcomes, &[], journal)
}

/// [`audit`] of a run that also binds keys (a rotation): `binds` are its bind pairs'
/// outcomes. Besides every promise of [`audit`]: a key gained is one a bind pair
/// asked for; a bind reported succeeded is bound; a skipped unbind is still bound;
/// for every rotated instance the journal shows its new key's Associate accepted and
/// applied, then a DescribeInstances of it, before the first Disassociate that names
/// it; and no rotated instance is left without a key.
pub fn audit_rotation(
    before: &BTreeSet<Binding>,
    after: &BTreeSet<Binding>,
    outcomes: &[PairOutcome],
    binds: &[PairOutcome],
    journal: &[JournalEntry],
) -> Audit {
    const SHOWN: usize = 10;
    let mut report = Audit::default();
    let mut violations = Vec::new();
    let requested: BTreeSet<Binding> = outcomes
        .iter()
        .map(|o| (o.instance_id.clone(), o.key_id.clone()))
        .collect();
    let to_bind: BTreeSet<Binding> = binds
        .iter()
        .map(|o| (o.instance_id.clone(), o.key_id.clone()))
        .collect();

    for removed in before.difference(after) {
        if requested.contains(removed) {
            report.removed_as_asked += 1;
        } else {
            violations.push(format!(
                "{} lost key {} although the input did not ask for it",
                removed.0, removed.1
            ));
        }
    }
    for added in after.difference(before) {
        if to_bind.contains(added) {
            report.added_as_asked += 1;
        } else {
            violations.push(format!("{} gained key {}", added.0, added.1));
        }
    }
    for bind in binds {
        let pair = (bind.instance_id.clone(), bind.key_id.clone());
        if bind.status == "succeeded" && !after.contains(&pair) {
            violations.push(format!(
                "{} {} is reported bound (Associate succeeded) but is not bound",
                pair.0, pair.1
            ));
        }
    }
    violations.extend(unbound_before_confirmed(binds, journal));
    let rotated: BTreeSet<&str> = binds.iter().map(|b| b.instance_id.as_str()).collect();
    for instance in &rotated {
        if !after.iter().any(|(i, _)| i == instance) {
            violations.push(format!("{instance} was rotated and is left with no key"));
        }
    }

    // Each accepted disassociation in the journal, by RequestId, with what it covered.
    let successes: BTreeMap<&str, &JournalEntry> = journal
        .iter()
        .filter(|e| e.action == "DisassociateInstancesKeyPairs" && e.code.is_none() && e.applied)
        .filter_map(|e| e.request_id.as_deref().map(|id| (id, e)))
        .collect();

    for outcome in outcomes {
        let pair = (outcome.instance_id.clone(), outcome.key_id.clone());
        match outcome.status.as_str() {
            "succeeded" => {
                report.succeeded += 1;
                if after.contains(&pair) {
                    report.accepted_not_applied.push(pair.clone());
                    violations.push(format!(
                        "{} {} is reported succeeded but is still bound",
                        pair.0, pair.1
                    ));
                }
                let accepted = outcome
                    .request_id
                    .as_deref()
                    .and_then(|id| successes.get(id))
                    .filter(|e| {
                        e.region == outcome.region
                            && e.instance_ids.contains(&pair.0)
                            && e.key_ids.contains(&pair.1)
                    });
                // A FAILED operation proves nothing, unless the key is gone anyway: an
                // earlier request covering it was applied and its reply lost, and the
                // cloud's own state (what verification reads) says the key is gone.
                if let Some(entry) =
                    accepted.filter(|e| e.operation_failed && after.contains(&pair))
                {
                    violations.push(format!(
                        "{} {} is reported succeeded with RequestId {:?}, which was accepted but whose operation ended FAILED",
                        pair.0,
                        pair.1,
                        entry.request_id.as_deref().unwrap_or_default()
                    ));
                }
                if accepted.is_none() {
                    violations.push(format!(
                        "{} {} is reported succeeded with RequestId {:?}, which no success reply covering it carried",
                        pair.0, pair.1, outcome.request_id
                    ));
                }
            }
            "failed" if after.contains(&pair) || !before.contains(&pair) => {
                report.failed_still_bound += 1
            }
            "failed" => report.failed_but_unbound += 1,
            "skipped" if after.contains(&pair) || !before.contains(&pair) => {
                report.skipped_still_bound += 1
            }
            "skipped" => violations.push(format!(
                "{} {} is reported skipped (never sent) but is gone",
                pair.0, pair.1
            )),
            other => violations.push(format!("{} {} is still {other}", pair.0, pair.1)),
        }
    }
    report.accepted_not_applied.sort();
    if violations.len() > SHOWN {
        let more = violations.len() - SHOWN;
        violations.truncate(SHOWN);
        violations.push(format!("... and {more} more"));
    }
    report.violations = violations;
    report
}

/// Rotated instances whose first Disassociate came before their new key was bound
/// and looked at: each in words.
fn unbound_before_confirmed(binds: &[PairOutcome], journal: &[JournalEntry]) -> Vec<String> {
    let rotated: BTreeSet<&str> = binds.iter().map(|b| b.instance_id.as_str()).collect();
    let accepted = |e: &JournalEntry| e.code.is_none() && e.request_id.is_some() && !e.dropped;
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut violations = Vec::new();
    for (n, entry) in journal.iter().enumerate() {
        if entry.action != "DisassociateInstancesKeyPairs" || !accepted(entry) {
            continue;
        }
        for instance in entry.instance_ids.iter().map(String::as_str) {
            if !rotated.contains(instance) || !seen.insert(instance) {
                continue;
            }
            let names = |e: &JournalEntry| e.instance_ids.iter().any(|i| i == instance);
            let bound = journal[..n].iter().rposition(|e| {
                e.action == "AssociateInstancesKeyPairs"
                    && accepted(e)
                    && e.applied
                    && !e.operation_failed
                    && names(e)
            });
            let looked = bound.is_some_and(|b| {
                journal[b + 1..n]
                    .iter()
                    .any(|e| e.action == "DescribeInstances" && accepted(e) && names(e))
            });
            if !looked {
                violations.push(format!(
                    "{instance} was unbound before its new key was bound and confirmed"
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: &str, k: &str) -> Binding {
        (i.to_string(), k.to_string())
    }

    fn outcome(i: &str, k: &str, status: &str, request_id: Option<&str>) -> PairOutcome {
        PairOutcome {
            region: "ap-guangzhou".into(),
            instance_id: i.into(),
            key_id: k.into(),
            status: status.into(),
            request_id: request_id.map(str::to_string),
            error_code: None,
        }
    }

    fn success(request_id: &str, instances: &[&str], keys: &[&str]) -> JournalEntry {
        JournalEntry {
            at_ms: 0,
            host: String::new(),
            action: "DisassociateInstancesKeyPairs".into(),
            region: "ap-guangzhou".into(),
            instance_ids: instances.iter().map(|s| s.to_string()).collect(),
            key_ids: keys.iter().map(|s| s.to_string()).collect(),
            force_stop: false,
            code: None,
            request_id: Some(request_id.into()),
            applied: true,
            dropped: false,
            operation_failed: false,
        }
    }

    #[test]
    fn a_faithful_run_is_clean() {
        let before = BTreeSet::from([
            pair("ins-a", "skey-1"),
            pair("ins-a", "skey-2"),
            pair("ins-b", "skey-1"),
        ]);
        let after = BTreeSet::from([pair("ins-a", "skey-2"), pair("ins-b", "skey-1")]);
        let outcomes = [
            outcome("ins-a", "skey-1", "succeeded", Some("r1")),
            outcome("ins-b", "skey-1", "failed", None),
        ];
        let audit = audit(
            &before,
            &after,
            &outcomes,
            &[success("r1", &["ins-a"], &["skey-1"])],
        );
        assert!(audit.is_clean(), "{:?}", audit.violations);
        assert_eq!(
            (
                audit.removed_as_asked,
                audit.succeeded,
                audit.failed_still_bound
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn accepted_is_not_applied() {
        let before = BTreeSet::from([pair("ins-a", "skey-1"), pair("ins-b", "skey-1")]);
        // r1 was applied; r2 was accepted but its operation ended FAILED.
        let after = BTreeSet::from([pair("ins-b", "skey-1")]);
        let mut failed = success("r2", &["ins-b"], &["skey-1"]);
        failed.operation_failed = true;
        let outcomes = [
            outcome("ins-a", "skey-1", "succeeded", Some("r1")),
            outcome("ins-b", "skey-1", "succeeded", Some("r2")),
        ];
        let journal = [success("r1", &["ins-a"], &["skey-1"]), failed];
        let audit = audit(&before, &after, &outcomes, &journal);
        assert_eq!(audit.accepted_not_applied, vec![pair("ins-b", "skey-1")]);
        assert_eq!(audit.succeeded, 2);
        assert_eq!(audit.removed_as_asked, 1);
        let text = audit.violations.join("\n");
        assert!(
            text.contains("ins-b skey-1 is reported succeeded but is still bound"),
            "{text}"
        );
        assert!(
            text.contains("RequestId \"r2\", which was accepted but whose operation ended FAILED"),
            "{text}"
        );
        assert!(!text.contains("ins-a"), "{text}");
    }

    #[test]
    fn every_broken_promise_is_named() {
        let before = BTreeSet::from([
            pair("ins-a", "skey-1"),
            pair("ins-a", "skey-2"),
            pair("ins-b", "skey-1"),
        ]);
        let after = BTreeSet::from([pair("ins-b", "skey-1")]);
        let outcomes = [
            outcome("ins-a", "skey-1", "succeeded", Some("r-unknown")),
            outcome("ins-b", "skey-1", "succeeded", Some("r2")),
            outcome("ins-c", "skey-1", "pending", None),
        ];
        let journal = [success("r2", &["ins-x"], &["skey-1"])];
        let audit = audit(&before, &after, &outcomes, &journal);
        let text = audit.violations.join("\n");
        assert!(
            text.contains("ins-a lost key skey-2 although the input did not ask for it"),
            "{text}"
        );
        assert!(
            text.contains("ins-a skey-1 is reported succeeded with RequestId"),
            "{text}"
        );
        assert!(
            text.contains("ins-b skey-1 is reported succeeded but is still bound"),
            "{text}"
        );
        assert!(
            text.contains("ins-b skey-1 is reported succeeded with RequestId"),
            "{text}"
        );
        assert!(text.contains("ins-c skey-1 is still pending"), "{text}");
    }

    #[test]
    fn a_rotation_must_bind_and_look_before_it_unbinds() {
        let before = BTreeSet::from([pair("ins-a", "skey-old"), pair("ins-b", "skey-old")]);
        let after = BTreeSet::from([pair("ins-a", "skey-new")]);
        let outcomes = [
            outcome("ins-a", "skey-old", "succeeded", Some("r2")),
            outcome("ins-b", "skey-old", "succeeded", Some("r3")),
        ];
        let binds = [
            outcome("ins-a", "skey-new", "succeeded", Some("r1")),
            outcome("ins-b", "skey-new", "failed", None),
        ];
        let entry = |action: &str, id: &str, instance: &str, key: &str| JournalEntry {
            action: action.into(),
            ..success(id, &[instance], &[key])
        };
        let journal = [
            entry("AssociateInstancesKeyPairs", "r1", "ins-a", "skey-new"),
            entry("DescribeInstances", "r4", "ins-a", ""),
            entry("DisassociateInstancesKeyPairs", "r2", "ins-a", "skey-old"),
            // ins-b: unbound with no bind before it, and left keyless.
            entry("DisassociateInstancesKeyPairs", "r3", "ins-b", "skey-old"),
        ];
        let audit = audit_rotation(&before, &after, &outcomes, &binds, &journal);
        assert_eq!(audit.added_as_asked, 1);
        let text = audit.violations.join("\n");
        assert!(
            text.contains("ins-b was unbound before its new key was bound and confirmed"),
            "{text}"
        );
        assert!(
            text.contains("ins-b was rotated and is left with no key"),
            "{text}"
        );
        assert!(!text.contains("ins-a"), "{text}");
        // Without the look between bind and unbind, ins-a breaks the promise too.
        let unlooked = [journal[0].clone(), journal[2].clone()];
        let audit = audit_rotation(&before, &after, &outcomes[..1], &binds[..1], &unlooked);
        assert!(
            audit
                .violations
                .join("\n")
                .contains("ins-a was unbound before"),
            "{:?}",
            audit.violations
        );
    }
}
