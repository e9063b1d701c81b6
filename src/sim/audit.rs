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
//!
//! [`audit_power`] proves a live-fleet run's power promises from the simulator's own
//! power timeline: never more instances down at once than the budget (total, per zone),
//! every instance RUNNING at the start RUNNING at the end, none that was not RUNNING
//! started, no HARD stop, ForceStop or STOP_CHARGING unless asked; and it measures the
//! time-averaged budget use and the downtime per instance for the benchmark.

use std::collections::{BTreeMap, BTreeSet};

use crate::cvm::{Action, STOPPED_MODE_STOP_CHARGING, StopType};

use super::{Fleet, InstanceState, JournalEntry, PowerEvent};

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

/// What a run promised about power, for [`audit_power`]. The default promises the
/// most: nothing stopped at all (a budget of 0) and no HARD stop, ForceStop or
/// STOP_CHARGING.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerRules {
    /// At most this many instances down at once over the whole fleet (`--max-down`).
    pub max_down: usize,
    /// At most this many down at once in any one zone (`--max-down-per zone`).
    pub max_down_per_zone: Option<usize>,
    /// At most this many down at once among the instances sharing a value of this tag
    /// (`--max-down-per tag:KEY`), e.g. (`service`, 1): instances without the tag share
    /// the empty value. Tags are read from the fleet at the start.
    pub max_down_per_tag: Option<(String, usize)>,
    /// At most this many down at once among the instances of one group, each
    /// instance's group given (`--max-down-per COLUMN`: the input column's value);
    /// instances not in the map share the empty group. Checked like a tag, and its
    /// peaks reported in [`PowerAudit::max_down_per_tag_value`].
    pub max_down_per_group: Option<(BTreeMap<String, String>, usize)>,
    /// StopInstances with `StopType` HARD (or the deprecated `ForceStop`) was asked for.
    pub allow_hard_stop: bool,
    /// Key-pair requests with `ForceStop=true` were asked for (`--running force-stop`):
    /// each powers a RUNNING instance off hard.
    pub allow_force_stop: bool,
    /// `StoppedMode` STOP_CHARGING was asked for (keyfleet never does).
    pub allow_stop_charging: bool,
}

/// What [`audit_power`] found. [`PowerAudit::violations`] is empty when every promise held.
///
/// **Down**, as the simulator sees it: from the moment a request's operation takes a
/// RUNNING instance out of RUNNING (a StopInstances accepted, or a key-pair request with
/// ForceStop) until the instance is RUNNING again. keyfleet's own count is never
/// smaller (it counts from before it sends until it has seen RUNNING), so a run within its
/// budget is within it here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PowerAudit {
    /// Instances RUNNING at the start.
    pub running_at_start: usize,
    /// Instances taken down at least once.
    pub taken_down: usize,
    /// The most instances down at once, and when (ms since the simulator started).
    pub max_down: usize,
    pub max_down_at_ms: i64,
    /// The most down at once in each zone (zones where one went down).
    pub max_down_per_zone: BTreeMap<String, usize>,
    /// With [`PowerRules::max_down_per_tag`] (or `max_down_per_group`): the most down
    /// at once for each value of the tag (or group; values where one went down).
    pub max_down_per_tag_value: BTreeMap<String, usize>,
    /// From the first instance taken down to the last one RUNNING again (or to the last
    /// event, for one still down), in ms since the simulator started.
    pub window_ms: Option<(i64, i64)>,
    /// The sum over instances of their time down, in ms (the integral of the number down).
    pub down_ms_total: i64,
    /// Each instance taken down: its total time down, in ms.
    pub downtime_ms: BTreeMap<String, i64>,
    /// Instances RUNNING at the start and not RUNNING at the end (with their end state).
    pub left_down: Vec<(String, InstanceState)>,
    /// Instances that were not RUNNING at the start and were started by a request.
    pub started_not_running_before: Vec<String>,
    /// StopInstances requests accepted with StopType HARD (or ForceStop).
    pub hard_stops: usize,
    /// Instances taken down by a key-pair request with ForceStop.
    pub force_stops: usize,
    /// StopInstances requests accepted with StoppedMode STOP_CHARGING.
    pub stop_charging_stops: usize,
    /// Broken promises, each in words.
    pub violations: Vec<String>,
}

impl PowerAudit {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The time-averaged number down divided by `budget`, over [`PowerAudit::window_ms`]:
    /// 1.0 when the budget was full the whole time. `None` when nothing went down (or
    /// for no time) or the budget is 0.
    pub fn budget_use(&self, budget: usize) -> Option<f64> {
        let (first, last) = self.window_ms?;
        let window = last - first;
        if window <= 0 || budget == 0 {
            return None;
        }
        Some(self.down_ms_total as f64 / window as f64 / budget as f64)
    }

    /// The downtime of an instance at quantile `q` (0..=1, nearest rank) over the
    /// instances taken down: `downtime_quantile(0.95)` is the p95. `None` when none was.
    pub fn downtime_quantile(&self, q: f64) -> Option<i64> {
        let mut times: Vec<i64> = self.downtime_ms.values().copied().collect();
        if times.is_empty() {
            return None;
        }
        times.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * times.len() as f64).ceil() as usize;
        Some(times[rank.clamp(1, times.len()) - 1])
    }
}

/// Audits power over a run: `before` and `after` are the simulator's fleet at the start
/// and the end ([`super::SimHandle::fleet`]), `timeline` its power timeline
/// ([`super::SimHandle::power_timeline`], complete: check
/// [`super::SimHandle::power_dropped`]) and `journal` every request it saw.
pub fn audit_power(
    before: &Fleet,
    after: &Fleet,
    timeline: &[PowerEvent],
    journal: &[JournalEntry],
    rules: &PowerRules,
) -> PowerAudit {
    const SHOWN: usize = 10;
    let mut report = PowerAudit::default();
    let mut violations = Vec::new();
    let start: BTreeMap<&str, InstanceState> = before
        .instances()
        .iter()
        .map(|i| (i.instance_id.as_str(), i.state))
        .collect();
    report.running_at_start = start
        .values()
        .filter(|s| **s == InstanceState::Running)
        .count();

    let mut events: Vec<&PowerEvent> = timeline.iter().collect();
    // Stable: events of one moment keep the order they happened in.
    events.sort_by_key(|e| e.at_ms);
    let end_ms = events.last().map_or(0, |e| e.at_ms);
    let mut state: BTreeMap<&str, InstanceState> = start.clone();
    let mut down_since: BTreeMap<&str, i64> = BTreeMap::new();
    let mut down_in_zone: BTreeMap<&str, usize> = BTreeMap::new();
    let mut over_zone: BTreeSet<String> = BTreeSet::new();
    // Instances grouped by a tag's value, or by the groups given: one check.
    let per_group: Option<(String, usize)> =
        match (&rules.max_down_per_tag, &rules.max_down_per_group) {
            (Some((key, budget)), _) => Some((format!("tagged {key}="), *budget)),
            (None, Some((_, budget))) => Some(("in group ".to_string(), *budget)),
            (None, None) => None,
        };
    let tag_of: BTreeMap<&str, &str> = match (&rules.max_down_per_tag, &rules.max_down_per_group) {
        (Some((key, _)), _) => before
            .instances()
            .iter()
            .map(|i| {
                let value = i.tags.get(key).map_or("", String::as_str);
                (i.instance_id.as_str(), value)
            })
            .collect(),
        (None, Some((groups, _))) => before
            .instances()
            .iter()
            .map(|i| {
                let value = groups.get(&i.instance_id).map_or("", String::as_str);
                (i.instance_id.as_str(), value)
            })
            .collect(),
        (None, None) => BTreeMap::new(),
    };
    let mut down_with_tag: BTreeMap<&str, usize> = BTreeMap::new();
    let mut over_tag: BTreeSet<&str> = BTreeSet::new();
    let mut over_total = false;
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    for event in &events {
        let id = event.instance_id.as_str();
        let was = state.insert(id, event.state);
        let by_request = event.action.is_some();
        if event.state == InstanceState::Starting
            && by_request
            && start.get(id) != Some(&InstanceState::Running)
            && !report.started_not_running_before.iter().any(|s| s == id)
        {
            report.started_not_running_before.push(id.to_string());
        }
        if was == Some(InstanceState::Running)
            && event.state != InstanceState::Running
            && by_request
            && !down_since.contains_key(id)
        {
            down_since.insert(id, event.at_ms);
            taken.insert(id);
            if event
                .action
                .as_deref()
                .and_then(Action::from_name)
                .is_some_and(Action::is_key_pair_operation)
            {
                report.force_stops += 1;
            }
            let in_zone = down_in_zone.entry(event.zone.as_str()).or_default();
            *in_zone += 1;
            let peak = report
                .max_down_per_zone
                .entry(event.zone.clone())
                .or_default();
            *peak = (*peak).max(*in_zone);
            if rules
                .max_down_per_zone
                .is_some_and(|budget| *in_zone > budget)
                && over_zone.insert(event.zone.clone())
            {
                violations.push(format!(
                    "{} instances of zone {} were down at once at {} ms, over the budget of {} per zone",
                    in_zone,
                    event.zone,
                    event.at_ms,
                    rules.max_down_per_zone.unwrap_or_default()
                ));
            }
            if let Some((label, budget)) = &per_group {
                let value = tag_of.get(id).copied().unwrap_or("");
                let with_tag = down_with_tag.entry(value).or_default();
                *with_tag += 1;
                let peak = report
                    .max_down_per_tag_value
                    .entry(value.to_string())
                    .or_default();
                *peak = (*peak).max(*with_tag);
                if *with_tag > *budget && over_tag.insert(value) {
                    violations.push(format!(
                        "{with_tag} instances {label}{value:?} were down at once at {} ms, over the budget of {budget} per value",
                        event.at_ms
                    ));
                }
            }
            if down_since.len() > report.max_down {
                report.max_down = down_since.len();
                report.max_down_at_ms = event.at_ms;
            }
            if down_since.len() > rules.max_down && !over_total {
                over_total = true;
                violations.push(format!(
                    "{} instances were down at once at {} ms, over the budget of {}",
                    down_since.len(),
                    event.at_ms,
                    rules.max_down
                ));
            }
            let first = report.window_ms.map_or(event.at_ms, |(f, _)| f);
            report.window_ms = Some((first, event.at_ms.max(report.window_ms.map_or(0, |w| w.1))));
        } else if event.state == InstanceState::Running
            && let Some(since) = down_since.remove(id)
        {
            close_down(&mut report, id, since, event.at_ms);
            if let Some(in_zone) = down_in_zone.get_mut(event.zone.as_str()) {
                *in_zone = in_zone.saturating_sub(1);
            }
            if let Some(with_tag) = tag_of
                .get(id)
                .and_then(|value| down_with_tag.get_mut(value))
            {
                *with_tag = with_tag.saturating_sub(1);
            }
        }
    }
    for (id, since) in down_since {
        close_down(&mut report, id, since, end_ms);
    }
    report.taken_down = taken.len();

    for instance in after.instances() {
        if start.get(instance.instance_id.as_str()) == Some(&InstanceState::Running)
            && instance.state != InstanceState::Running
        {
            report
                .left_down
                .push((instance.instance_id.clone(), instance.state));
        }
    }
    for (id, now) in &report.left_down {
        violations.push(format!(
            "{id} was RUNNING at the start and is {} at the end",
            now.as_str()
        ));
    }
    for id in &report.started_not_running_before {
        violations.push(format!(
            "{id} was {} at the start and was started",
            start.get(id.as_str()).map_or("unknown", |s| s.as_str())
        ));
    }

    for entry in journal
        .iter()
        .filter(|e| e.action == Action::StopInstances.name() && e.applied)
    {
        let hard = match entry.stop_type.as_deref() {
            Some(name) => StopType::from_api_name(name) == Some(StopType::Hard),
            None => entry.force_stop,
        };
        report.hard_stops += usize::from(hard);
        report.stop_charging_stops +=
            usize::from(entry.stopped_mode.as_deref() == Some(STOPPED_MODE_STOP_CHARGING));
    }
    if report.hard_stops > 0 && !rules.allow_hard_stop {
        violations.push(format!(
            "{} StopInstances requests were HARD stops, which nobody asked for",
            report.hard_stops
        ));
    }
    if report.force_stops > 0 && !rules.allow_force_stop {
        violations.push(format!(
            "{} instances were powered off by a ForceStop key-pair request, which nobody asked for",
            report.force_stops
        ));
    }
    if report.stop_charging_stops > 0 && !rules.allow_stop_charging {
        violations.push(format!(
            "{} StopInstances requests asked for STOP_CHARGING (the restart may fail, the public IP changes)",
            report.stop_charging_stops
        ));
    }
    if violations.len() > SHOWN {
        let more = violations.len() - SHOWN;
        violations.truncate(SHOWN);
        violations.push(format!("... and {more} more"));
    }
    report.violations = violations;
    report
}

/// Ends a down interval of `id` from `since` to `until`.
fn close_down(report: &mut PowerAudit, id: &str, since: i64, until: i64) {
    let length = (until - since).max(0);
    report.down_ms_total += length;
    *report.downtime_ms.entry(id.to_string()).or_default() += length;
    report.window_ms = report
        .window_ms
        .map(|(first, last)| (first.min(since), last.max(until)))
        .or(Some((since, until)));
}

/// [`audit_power`] of a running simulator: its fleet now, its timeline and journal,
/// against `before` (its fleet at the start).
pub fn audit_power_of(sim: &super::SimHandle, before: &Fleet, rules: &PowerRules) -> PowerAudit {
    let timeline = sim.power_timeline();
    let journal = sim.journal();
    let mut report = audit_power(before, &sim.fleet(), &timeline, &journal, rules);
    let dropped = sim.power_dropped();
    if dropped > 0 {
        report.violations.push(format!(
            "the power timeline dropped its {dropped} oldest events: the audit is incomplete"
        ));
    }
    report
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
            stop_type: None,
            stopped_mode: None,
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

    mod power {
        use super::super::*;
        use crate::sim::{Instance, PowerEvent};

        const STOP: &str = "StopInstances";
        const START: &str = "StartInstances";

        fn ev(at_ms: i64, id: &str, zone: &str, state: InstanceState, action: &str) -> PowerEvent {
            PowerEvent {
                at_ms,
                instance_id: id.into(),
                region: "ap-guangzhou".into(),
                zone: zone.into(),
                state,
                action: (!action.is_empty()).then(|| action.to_string()),
                request_id: (!action.is_empty()).then(|| format!("r-{at_ms}")),
            }
        }

        /// A full stop-start cycle of `id` in `zone`: down at `from`, up at `to`.
        fn cycle(id: &str, zone: &str, from: i64, to: i64) -> Vec<PowerEvent> {
            use InstanceState::*;
            vec![
                ev(from, id, zone, Stopping, STOP),
                ev(from + 100, id, zone, Stopped, STOP),
                ev(to - 100, id, zone, Starting, START),
                ev(to, id, zone, Running, START),
            ]
        }

        fn running(ids: &[(&str, &str)]) -> Fleet {
            ids.iter().fold(Fleet::new(), |fleet, (id, zone)| {
                fleet.with(
                    Instance::new(*id, "ap-guangzhou")
                        .state(InstanceState::Running)
                        .zone(*zone),
                )
            })
        }

        const Z3: &str = "ap-guangzhou-3";
        const Z4: &str = "ap-guangzhou-4";

        #[test]
        fn a_rolling_run_within_its_budget_is_clean_and_measured() {
            let fleet = running(&[("ins-a", Z3), ("ins-b", Z3), ("ins-c", Z4)]);
            // a and c overlap (one per zone); b goes when a is back.
            let mut timeline = cycle("ins-a", Z3, 0, 1000);
            timeline.extend(cycle("ins-c", Z4, 500, 1500));
            timeline.extend(cycle("ins-b", Z3, 1000, 2000));
            let rules = PowerRules {
                max_down: 2,
                max_down_per_zone: Some(1),
                ..PowerRules::default()
            };
            let audit = audit_power(&fleet, &fleet, &timeline, &[], &rules);
            assert!(audit.is_clean(), "{:?}", audit.violations);
            assert_eq!(audit.running_at_start, 3);
            assert_eq!(audit.taken_down, 3);
            assert_eq!(audit.max_down, 2);
            assert_eq!(audit.max_down_at_ms, 500);
            assert_eq!(audit.max_down_per_zone[Z3], 1, "b went down as a came up");
            assert_eq!(audit.max_down_per_zone[Z4], 1);
            assert_eq!(audit.window_ms, Some((0, 2000)));
            assert_eq!(audit.down_ms_total, 3000);
            // 3000 ms down over a 2000 ms window with a budget of 2: 75%.
            assert_eq!(audit.budget_use(2), Some(0.75));
            assert_eq!(audit.budget_use(0), None);
            assert_eq!(audit.downtime_quantile(0.5), Some(1000));
            assert_eq!(audit.downtime_quantile(1.0), Some(1000));
        }

        #[test]
        fn over_the_budget_in_total_or_in_a_zone_is_named() {
            let fleet = running(&[("ins-a", Z3), ("ins-b", Z3), ("ins-c", Z4)]);
            let mut timeline = cycle("ins-a", Z3, 0, 1000);
            timeline.extend(cycle("ins-b", Z3, 200, 1200));
            timeline.extend(cycle("ins-c", Z4, 300, 1300));
            let rules = PowerRules {
                max_down: 2,
                max_down_per_zone: Some(1),
                ..PowerRules::default()
            };
            let audit = audit_power(&fleet, &fleet, &timeline, &[], &rules);
            let text = audit.violations.join("\n");
            assert!(
                text.contains("2 instances of zone ap-guangzhou-3 were down at once at 200 ms, over the budget of 1 per zone"),
                "{text}"
            );
            assert!(
                text.contains("3 instances were down at once at 300 ms, over the budget of 2"),
                "{text}"
            );
            assert_eq!(audit.max_down, 3);
        }

        #[test]
        fn a_tag_budget_counts_each_value_apart() {
            let fleet = Fleet::new()
                .with(
                    Instance::new("ins-a", "ap-guangzhou")
                        .state(InstanceState::Running)
                        .tag("service", "web"),
                )
                .with(
                    Instance::new("ins-b", "ap-guangzhou")
                        .state(InstanceState::Running)
                        .tag("service", "web"),
                )
                .with(
                    Instance::new("ins-c", "ap-guangzhou")
                        .state(InstanceState::Running)
                        .tag("service", "api"),
                )
                .with(Instance::new("ins-d", "ap-guangzhou").state(InstanceState::Running));
            // a and c together (two services), then b with d (untagged) once a is back.
            let mut timeline = cycle("ins-a", Z3, 0, 1000);
            timeline.extend(cycle("ins-c", Z3, 0, 1000));
            timeline.extend(cycle("ins-b", Z3, 1000, 2000));
            timeline.extend(cycle("ins-d", Z3, 1000, 2000));
            let rules = PowerRules {
                max_down: 2,
                max_down_per_tag: Some(("service".into(), 1)),
                ..PowerRules::default()
            };
            let audit = audit_power(&fleet, &fleet, &timeline, &[], &rules);
            assert!(audit.is_clean(), "{:?}", audit.violations);
            assert_eq!(
                audit.max_down_per_tag_value,
                BTreeMap::from([
                    (String::new(), 1),
                    ("api".to_string(), 1),
                    ("web".to_string(), 1)
                ])
            );
            // b while a is still down: two web servers at once.
            let mut overlapping = cycle("ins-a", Z3, 0, 1000);
            overlapping.extend(cycle("ins-b", Z3, 500, 1500));
            let audit = audit_power(&fleet, &fleet, &overlapping, &[], &rules);
            assert_eq!(
                audit.violations,
                [
                    "2 instances tagged service=\"web\" were down at once at 500 ms, over the budget of 1 per value"
                ]
            );
        }

        #[test]
        fn left_down_and_started_when_stopped_are_violations() {
            use InstanceState::*;
            let fleet =
                running(&[("ins-a", Z3)]).with(Instance::new("ins-s", "ap-guangzhou").zone(Z3));
            let timeline = vec![
                ev(0, "ins-a", Z3, Stopping, STOP),
                ev(100, "ins-a", Z3, Stopped, STOP),
                ev(200, "ins-s", Z3, Starting, START),
                ev(300, "ins-s", Z3, Running, START),
            ];
            let mut after = fleet.clone();
            after.instances[0].state = Stopped;
            after.instances[1].state = Running;
            let rules = PowerRules {
                max_down: 5,
                ..PowerRules::default()
            };
            let audit = audit_power(&fleet, &after, &timeline, &[], &rules);
            assert_eq!(audit.left_down, vec![("ins-a".to_string(), Stopped)]);
            assert_eq!(audit.started_not_running_before, ["ins-s"]);
            let text = audit.violations.join("\n");
            assert!(
                text.contains("ins-a was RUNNING at the start and is STOPPED at the end"),
                "{text}"
            );
            assert!(
                text.contains("ins-s was STOPPED at the start and was started"),
                "{text}"
            );
            // Still down at the end: counted to the last event.
            assert_eq!(audit.downtime_ms["ins-a"], 300);
            assert_eq!(audit.max_down, 1, "a stopped instance started is not down");
        }

        #[test]
        fn a_failed_soft_stop_is_down_until_running_and_the_fleets_own_changes_are_not() {
            use InstanceState::*;
            let fleet = running(&[("ins-a", Z3), ("ins-o", Z4)]);
            let timeline = vec![
                ev(0, "ins-a", Z3, Stopping, STOP),
                ev(1000, "ins-a", Z3, Running, STOP),
                // An operator stops ins-o (a settling state): not the run's doing.
                ev(500, "ins-o", Z4, Stopped, ""),
            ];
            let mut after = fleet.clone();
            after.instances[1].state = Stopped;
            let rules = PowerRules {
                max_down: 1,
                ..PowerRules::default()
            };
            let audit = audit_power(&fleet, &after, &timeline, &[], &rules);
            assert_eq!(audit.taken_down, 1);
            assert_eq!(audit.downtime_ms["ins-a"], 1000);
            assert_eq!(audit.max_down, 1);
            // The final-state promise still names it: whoever stopped it, it is down.
            assert_eq!(audit.left_down.len(), 1);
        }

        #[test]
        fn hard_stops_force_stops_and_stop_charging_need_asking() {
            use InstanceState::*;
            let fleet = running(&[("ins-a", Z3), ("ins-b", Z3)]);
            let timeline = vec![
                ev(0, "ins-a", Z3, Stopping, "DisassociateInstancesKeyPairs"),
                ev(100, "ins-a", Z3, Stopped, "DisassociateInstancesKeyPairs"),
                ev(300, "ins-a", Z3, Starting, "DisassociateInstancesKeyPairs"),
                ev(400, "ins-a", Z3, Running, "DisassociateInstancesKeyPairs"),
            ];
            let stop = |stop_type: Option<&str>, mode: Option<&str>, force: bool| JournalEntry {
                action: STOP.into(),
                instance_ids: vec!["ins-b".into()],
                key_ids: Vec::new(),
                force_stop: force,
                stop_type: stop_type.map(str::to_string),
                stopped_mode: mode.map(str::to_string),
                ..super::success("r", &[], &[])
            };
            let journal = [
                stop(Some("HARD"), Some("KEEP_CHARGING"), false),
                stop(None, None, true),
                stop(Some("SOFT"), Some("STOP_CHARGING"), false),
                stop(Some("SOFT_FIRST"), None, false),
            ];
            let rules = PowerRules {
                max_down: 2,
                ..PowerRules::default()
            };
            let audit = audit_power(&fleet, &fleet, &timeline, &journal, &rules);
            assert_eq!(
                (
                    audit.hard_stops,
                    audit.force_stops,
                    audit.stop_charging_stops
                ),
                (2, 1, 1)
            );
            assert_eq!(audit.violations.len(), 3, "{:?}", audit.violations);
            let allowed = PowerRules {
                max_down: 2,
                max_down_per_zone: None,
                max_down_per_tag: None,
                max_down_per_group: None,
                allow_hard_stop: true,
                allow_force_stop: true,
                allow_stop_charging: true,
            };
            let audit = audit_power(&fleet, &fleet, &timeline, &journal, &allowed);
            assert!(audit.is_clean(), "{:?}", audit.violations);
        }

        #[test]
        fn nothing_down_measures_nothing() {
            let fleet = running(&[("ins-a", Z3)]);
            let audit = audit_power(&fleet, &fleet, &[], &[], &PowerRules::default());
            assert!(audit.is_clean());
            assert_eq!(audit.window_ms, None);
            assert_eq!(audit.budget_use(5), None);
            assert_eq!(audit.downtime_quantile(0.95), None);
        }
    }
}
