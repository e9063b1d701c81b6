//! A live fleet's rules (`--running stop-start|force-stop`): take RUNNING instances
//! through a key change under a downtime budget, and leave nothing down.
//!
//! Per instance: a `survey` sees its power state, zone and tags; a RUNNING one waits
//! for a slot of the budget ([`admit`]); then either a `stop` (StopInstances), a
//! `settle` until it is STOPPED, its key steps exactly as in a run of stopped instances,
//! a `settle` until no operation is in progress, a `start` and a `settle` until it is
//! RUNNING again (and `--warmup` later, still RUNNING), which frees its slot; or, with
//! `force-stop`, its key steps sent with `ForceStop=true` and a `settle` until it is
//! RUNNING (started by keyfleet if the cloud left it STOPPED). An instance that was not
//! RUNNING is never stopped nor started; a Windows one is never stopped (its keys
//! cannot change anyway).
//!
//! **Down** = taken out of RUNNING by this run and not yet confirmed RUNNING again (and
//! warmed up). At no moment are more instances down than the budget allows, per group
//! with `--max-down-per`. The count is rebuilt from the database after a crash.

use std::collections::BTreeMap;

use super::{Effect, ErrorInfo, JobFacts, JobKind, NewJob};
use crate::cvm::StopType;
pub use crate::states::PowerState;

/// How a run treats RUNNING instances (`--running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Running {
    /// Stop each (within the budget), change its keys, start it again.
    StopStart,
    /// Send its key requests with `ForceStop=true` (within the budget), then see it
    /// RUNNING again, starting it if the cloud left it STOPPED.
    ForceStop,
}

/// `--max-down N|P%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    Count(u32),
    /// Of the instances found RUNNING (in the group, with `--max-down-per`), rounded
    /// down, at least 1.
    Percent(u32),
}

impl Budget {
    /// The number down at once allowed among `running` instances found RUNNING.
    pub fn of(self, running: usize) -> usize {
        match self {
            Budget::Count(n) => n as usize,
            Budget::Percent(p) => (running * p as usize / 100).max(1),
        }
    }
}

impl std::str::FromStr for Budget {
    type Err = String;
    fn from_str(text: &str) -> Result<Budget, String> {
        let text = text.trim();
        let (digits, percent) = match text.strip_suffix('%') {
            Some(digits) => (digits, true),
            None => (text, false),
        };
        let n: u32 = digits
            .parse()
            .map_err(|_| format!("{text:?} is neither a count (5) nor a percentage (5%)"))?;
        match (percent, n) {
            (_, 0) => Err("a budget of 0 would stop nothing: use --running fail".into()),
            (true, p) if p > 100 => Err(format!("{p}% is more than the whole fleet")),
            (true, p) => Ok(Budget::Percent(p)),
            (false, n) => Ok(Budget::Count(n)),
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Count(n) => write!(f, "{n}"),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What `--max-down-per` groups instances by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// The availability zone (`Placement.Zone`).
    Zone,
    /// The value of an instance tag (instances without it share the empty value).
    Tag(String),
    /// The value of an input column, given per instance in the run's input (stored
    /// when the run is planned).
    Column(String),
}

impl std::str::FromStr for Per {
    type Err = String;
    fn from_str(text: &str) -> Result<Per, String> {
        match text.trim() {
            "zone" => Ok(Per::Zone),
            other => match (other.strip_prefix("tag:"), other.strip_prefix("column:")) {
                (Some(key), _) if !key.is_empty() => Ok(Per::Tag(key.to_string())),
                (_, Some(column)) if is_column_name(column) => Ok(Per::Column(column.to_string())),
                (None, None) if is_column_name(other) => Ok(Per::Column(other.to_string())),
                _ => Err(format!(
                    "--max-down-per takes `zone`, `tag:KEY` or an input column's name \
                     (letters, digits, `_`, `-`, `.`), not {other:?}"
                )),
            },
        }
    }
}

/// A column name `--max-down-per` accepts: short, and plain enough to print.
fn is_column_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl std::fmt::Display for Per {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Per::Zone => f.write_str("zone"),
            Per::Tag(key) => write!(f, "tag:{key}"),
            Per::Column(column) => f.write_str(column),
        }
    }
}

/// A live run's settings, stored with the run (part of its identity).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Live {
    pub running: Running,
    pub max_down: Budget,
    /// With a grouping, the budget (P% of the run's instances found RUNNING, or N)
    /// applies to each group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Per>,
    /// How long an instance keeps its slot after it is RUNNING again (ms).
    #[serde(default)]
    pub warmup_ms: i64,
    #[serde(default)]
    pub stop_type: StopType,
    /// The first instances that go through the whole cycle before any other is stopped.
    pub canary: u32,
}

/// How long a settle looks again at an instance still on its way.
pub const SETTLE_EVERY_MS: i64 = 500;
/// How long after a stop or start is accepted its settle first looks.
pub const FIRST_SETTLE_MS: i64 = 500;
/// How long after an instance's key steps are done the settle before its start first
/// looks (the key operation takes about 0.3 s), and then how often it looks again: the
/// instance is down meanwhile, so this wait is budget spent (docs/BENCHMARKS.md,
/// exec_live). Such settles are short-lived, so the extra looks cost little of
/// DescribeInstances' 40/s.
pub const FIRST_IDLE_SETTLE_MS: i64 = 250;
pub const IDLE_SETTLE_EVERY_MS: i64 = 100;
/// How long an instance may take to stop or start before it is given up on.
pub const SETTLE_LIMIT_MS: i64 = 30 * 60 * 1_000;
/// How long a failed start waits before it is sent again, times the failures so far.
pub const START_RETRY_MS: i64 = 5_000;

/// The code on pairs of an instance whose stop failed.
pub const STOP_FAILED: &str = "KeyFleet.StopFailed";
/// The code on pairs the run did not take down because it stopped taking instances down.
pub const NOT_STOPPED: &str = "KeyFleet.NotStopped";

/// What a settle waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// STOPPED, after our stop.
    Stopped,
    /// No operation in progress (the key steps applied), before our start.
    Idle,
    /// RUNNING again, after our start (or a ForceStop key request's restart).
    Running,
    /// Still RUNNING once the warmup is over: the slot is freed.
    WarmedUp,
}

impl Target {
    /// How often a settle for this target looks again (ms).
    pub fn look_again_ms(self) -> i64 {
        match self {
            Target::Idle => IDLE_SETTLE_EVERY_MS,
            _ => SETTLE_EVERY_MS,
        }
    }
}

/// A settle job's payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SettlePayload {
    pub target: Target,
    /// The RequestId of the stop or start it follows: the cloud's word on an operation
    /// can lag the call, so only its own `LatestOperationRequestId` ends the wait early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Give up waiting (Unix ms).
    pub until: i64,
}

/// A stop job's payload: how to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StopPayload {
    pub stop_type: StopType,
}

/// An instance as a read (survey, settle) saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seen {
    pub instance_id: String,
    /// `RUNNING`, `STOPPED`, `STOPPING`, ...
    pub state: String,
    pub zone: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub windows: bool,
    pub latest_operation: Option<String>,
    pub latest_state: Option<String>,
    pub latest_request_id: Option<String>,
}

impl Seen {
    fn operating(&self) -> bool {
        self.latest_state.as_deref() == Some("OPERATING")
    }

    fn failed(&self, action: &str) -> bool {
        self.latest_state.as_deref() == Some("FAILED")
            && self.latest_operation.as_deref() == Some(action)
    }

    /// Our operation (`ours`, its RequestId) ended FAILED.
    fn ours_failed(&self, ours: Option<&str>) -> bool {
        ours.is_some()
            && self.latest_request_id.as_deref() == ours
            && self.latest_state.as_deref() == Some("FAILED")
    }

    /// Whether a settle for `target`, following the request `ours`, is done with this
    /// instance (else it looks again). A RUNNING instance after our stop (or a STOPPED
    /// one after our start) ends the wait only once its latest operation is ours and
    /// FAILED: before that, the cloud may not have caught up with the call yet.
    pub fn settled(&self, target: Target, ours: Option<&str>) -> bool {
        match target {
            Target::Stopped => {
                self.state == "STOPPED" || (self.state == "RUNNING" && self.ours_failed(ours))
            }
            Target::Idle => !self.operating(),
            Target::Running => {
                (self.state == "RUNNING" && !self.operating())
                    || (self.state == "STOPPED"
                        && (self.ours_failed(ours) || ours.is_none() && !self.operating()))
            }
            Target::WarmedUp => true,
        }
    }
}

/// One instance of a live run, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerRow {
    pub region: String,
    /// Its account (`None`: the run's own): instances are admitted in jobs of one
    /// account each.
    pub account: Option<String>,
    pub instance_id: String,
    pub state: PowerState,
    /// Its budget group's value (zone or tag value), with `--max-down-per`.
    pub group: Option<String>,
    /// Order of admission (the survey's order).
    pub seq: i64,
    pub start_failures: i64,
}

/// A change to an instance's power row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerChange {
    pub region: String,
    pub instance_id: String,
    pub state: PowerState,
    /// Set on the survey: what it was, its zone and its budget group.
    pub before: Option<String>,
    pub zone: Option<String>,
    pub group: Option<String>,
    /// Why it ended as it did (a stop or start that failed, ...).
    pub reason: Option<String>,
}

impl PowerChange {
    fn to(region: &str, instance: &str, state: PowerState) -> PowerChange {
        PowerChange {
            region: region.to_string(),
            instance_id: instance.to_string(),
            state,
            before: None,
            zone: None,
            group: None,
            reason: None,
        }
    }

    fn because(mut self, reason: impl Into<String>) -> PowerChange {
        self.reason = Some(reason.into());
        self
    }
}

fn settle(
    region: &str,
    instances: Vec<String>,
    target: Target,
    request_id: Option<&str>,
    due_at: i64,
) -> Effect {
    let payload = SettlePayload {
        target,
        request_id: request_id.map(str::to_string),
        until: due_at + SETTLE_LIMIT_MS,
    };
    Effect::AddJob(NewJob {
        kind: JobKind::Settle,
        region: region.to_string(),
        account: None,
        force_stop: false,
        instance_ids: instances,
        key_ids: Vec::new(),
        payload: serde_json::to_string(&payload).ok(),
        item_ids: Vec::new(),
        due_at,
    })
}

fn power_job(kind: JobKind, region: &str, instances: &[String], due_at: i64) -> Vec<Effect> {
    stop_or_start(kind, region, None, instances, None, due_at)
}

/// Stop or start jobs of `instances` (of one region and account; `None`: the
/// followed job's, or the run's own).
fn stop_or_start(
    kind: JobKind,
    region: &str,
    account: Option<&str>,
    instances: &[String],
    stop_type: Option<StopType>,
    due_at: i64,
) -> Vec<Effect> {
    let payload =
        stop_type.and_then(|stop_type| serde_json::to_string(&StopPayload { stop_type }).ok());
    instances
        .chunks(crate::ids::MAX_IDS_PER_REQUEST)
        .map(|batch| {
            Effect::AddJob(NewJob {
                kind,
                region: region.to_string(),
                account: account.map(str::to_string),
                force_stop: false,
                instance_ids: batch.to_vec(),
                key_ids: Vec::new(),
                payload: payload.clone(),
                item_ids: Vec::new(),
                due_at,
            })
        })
        .collect()
}

/// A survey's answer: RUNNING instances wait for a slot; the others have their key
/// steps released at once and are never stopped nor started. `columns`: with
/// `--max-down-per COLUMN`, each instance's value of the column (an instance without
/// one shares the empty value). `held`: instances another run of the database holds
/// (it may have them down): they wait for a slot like a RUNNING one, whatever their
/// state now, since that run brings them back up ([`admit`] waits for its claim).
pub fn surveyed(
    live: &Live,
    job: &JobFacts,
    seen: &[Seen],
    columns: &BTreeMap<String, String>,
    held: &std::collections::BTreeSet<String>,
) -> Vec<Effect> {
    let by_id: BTreeMap<&str, &Seen> = seen.iter().map(|s| (s.instance_id.as_str(), s)).collect();
    let mut effects = Vec::new();
    let mut release = Vec::new();
    for instance in &job.instance_ids {
        let Some(s) = by_id.get(instance.as_str()) else {
            // Unknown: its key steps fail with the cloud's own code.
            release.push(instance.clone());
            continue;
        };
        let group = live.per.as_ref().map(|per| match per {
            Per::Zone => s.zone.clone().unwrap_or_default(),
            Per::Tag(key) => s.tags.get(key).cloned().unwrap_or_default(),
            Per::Column(_) => columns.get(instance).cloned().unwrap_or_default(),
        });
        let (state, reason) = if s.state != "RUNNING" && !held.contains(instance) {
            (PowerState::Kept, None)
        } else if s.windows {
            (
                PowerState::NotStopped,
                Some("Windows: its keys cannot change, so it is not stopped".to_string()),
            )
        } else {
            (PowerState::Waiting, None)
        };
        effects.push(Effect::Power(PowerChange {
            region: job.region.clone(),
            instance_id: instance.clone(),
            state,
            before: Some(s.state.clone()),
            zone: s.zone.clone(),
            group,
            reason,
        }));
        if state != PowerState::Waiting {
            release.push(instance.clone());
        }
    }
    if !release.is_empty() {
        effects.push(Effect::ReleaseKeys {
            region: job.region.clone(),
            account: None,
            instances: release,
            force_stop: false,
        });
    }
    effects
}

/// Which waiting instances go down now: in survey order, while the budget (or, with
/// `--max-down-per`, each group's) has room, the canaries alone until they are all back
/// up. A percentage is of the run's instances found RUNNING; `halted`: the run takes no
/// further instance down.
///
/// `claims`: waiting instances another run of the database holds (issue 26, M2). One
/// whose run is running waits; one whose run stopped with work left on it is not
/// stopped (its pairs fail, [`super::CLAIMED`]); a stale claim is taken over. Every
/// instance taken down is claimed ([`Effect::Claim`]) until it is back up.
pub fn admit(
    live: &Live,
    rows: &[PowerRow],
    halted: bool,
    now: i64,
    claims: &BTreeMap<String, super::Claim>,
) -> Vec<Effect> {
    if halted {
        return Vec::new();
    }
    let mut running: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    let mut down: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    let mut ordered: Vec<&PowerRow> = rows.iter().filter(|r| r.state.was_running()).collect();
    ordered.sort_by_key(|r| r.seq);
    for row in &ordered {
        *running.entry(row.group.as_deref()).or_default() += 1;
        if row.state.is_down() {
            *down.entry(row.group.as_deref()).or_default() += 1;
        }
    }
    let total_running: usize = running.values().sum();
    let canaries = &ordered[..(live.canary as usize).min(ordered.len())];
    let canary_pending = canaries.iter().any(|r| r.state != PowerState::Up);
    if canaries
        .iter()
        .any(|r| matches!(r.state, PowerState::LeftStopped | PowerState::NotStopped))
    {
        // The canary did not come back as it went: nothing else goes down.
        return Vec::new();
    }
    let candidates: &[&PowerRow] = if canary_pending { canaries } else { &ordered };
    let mut admitted: BTreeMap<(&str, Option<&str>), Vec<String>> = BTreeMap::new();
    let mut stuck: Vec<(&PowerRow, i64)> = Vec::new();
    let mut total_down: usize = down.values().sum();
    for row in candidates {
        if row.state != PowerState::Waiting {
            continue;
        }
        match claims.get(&row.instance_id) {
            Some(super::Claim::Busy { .. }) => continue,
            Some(super::Claim::Stuck { run_id }) => {
                stuck.push((row, *run_id));
                continue;
            }
            Some(super::Claim::Stale { .. }) | None => {}
        }
        let group = row.group.as_deref();
        // P% is of the run's instances found RUNNING; with a grouping, that budget
        // applies to each group.
        let allowed = live.max_down.of(total_running);
        let in_group = down.get(&group).copied().unwrap_or(0);
        let room = match &live.per {
            None => total_down < allowed,
            Some(_) => in_group < allowed,
        };
        if !room {
            continue;
        }
        *down.entry(group).or_default() += 1;
        total_down += 1;
        admitted
            .entry((&row.region, row.account.as_deref()))
            .or_default()
            .push(row.instance_id.clone());
    }
    let mut effects = Vec::new();
    for (row, run_id) in stuck {
        let why = format!(
            "not stopped: run {run_id} of this database holds it (it was taking it through its own \
             key change) and is not running: resume or finish run {run_id}, then retry this run"
        );
        effects.push(Effect::Power(
            PowerChange::to(&row.region, &row.instance_id, PowerState::NotStopped).because(&why),
        ));
        effects.push(Effect::FailHeld {
            region: row.region.clone(),
            instances: vec![row.instance_id.clone()],
            reason: ErrorInfo::new(super::CLAIMED, why),
        });
    }
    for ((region, account), mut instances) in admitted {
        instances.sort();
        effects.push(Effect::Claim {
            region: region.to_string(),
            instances: instances.clone(),
            reason: super::ClaimReason::Down,
        });
        for instance in &instances {
            effects.push(Effect::Power(PowerChange::to(
                region,
                instance,
                PowerState::Stopping,
            )));
        }
        match live.running {
            Running::StopStart => effects.extend(stop_or_start(
                JobKind::Stop,
                region,
                account,
                &instances,
                Some(live.stop_type),
                now,
            )),
            Running::ForceStop => effects.push(Effect::ReleaseKeys {
                region: region.to_string(),
                account: account.map(str::to_string),
                instances,
                force_stop: true,
            }),
        }
    }
    effects
}

/// A stop was accepted (`request_id`): settle until STOPPED.
pub fn stop_accepted(job: &JobFacts, request_id: &str, now: i64) -> Vec<Effect> {
    vec![settle(
        &job.region,
        job.instance_ids.clone(),
        Target::Stopped,
        Some(request_id),
        now + FIRST_SETTLE_MS,
    )]
}

/// Codes that say a stop found the instance already on its way down (our own stop,
/// whose reply a crash lost): not a failure, a settle shows where it is.
const ALREADY_STOPPING: [&str; 2] = [
    "UnsupportedOperation.InstanceStateStopped",
    "UnsupportedOperation.InstanceStateStopping",
];
/// Codes that say a start found the instance already on its way up.
const ALREADY_STARTING: [&str; 2] = [
    "UnsupportedOperation.InstanceStateRunning",
    "UnsupportedOperation.InstanceStateStarting",
];

/// A stop failed for good: the instances stay RUNNING (never down) and their pairs
/// fail with the reason. An instance already stopping or stopped (a stop of ours
/// whose reply was lost) is settled instead.
pub fn stop_failed(live: &Live, job: &JobFacts, error: &ErrorInfo) -> Vec<Effect> {
    if ALREADY_STOPPING.contains(&error.code.as_str()) {
        return vec![settle(
            &job.region,
            job.instance_ids.clone(),
            Target::Stopped,
            None,
            0,
        )];
    }
    let reason = stop_failure_reason(live, &error.code, &error.message);
    let mut effects: Vec<Effect> = job
        .instance_ids
        .iter()
        .map(|i| {
            Effect::Power(PowerChange::to(&job.region, i, PowerState::NotStopped).because(&reason))
        })
        .collect();
    effects.push(Effect::FailHeld {
        region: job.region.clone(),
        instances: job.instance_ids.clone(),
        reason: ErrorInfo::new(STOP_FAILED, reason),
    });
    effects
}

fn stop_failure_reason(live: &Live, code: &str, detail: &str) -> String {
    let hint = if live.stop_type == StopType::Soft {
        "; the OS did not shut down: --stop-type soft-first forces it off when a soft stop fails"
    } else {
        ""
    };
    format!(
        "StopInstances ({}) failed: {code} {detail}{hint}; it is still RUNNING and its keys were not changed",
        live.stop_type
    )
}

/// A settle's answer, once every instance is where it waits for it to be (or the wait
/// is over). `rows` are the job's instances' power rows.
///
/// `failed` holds, per instance whose latest key-pair operation (ours) ended FAILED,
/// the pairs it claimed that may be sent again (fewer than `--max-attempts` operations
/// so far; `true` for a bind pair): before such an instance is started, they are sent
/// again while it is still stopped.
#[allow(clippy::too_many_arguments)]
pub fn settled(
    live: &Live,
    job: &JobFacts,
    target: Target,
    seen: &[Seen],
    rows: &[PowerRow],
    failed: &BTreeMap<String, Vec<(super::Pair, bool)>>,
    max_attempts: i64,
    now: i64,
) -> Vec<Effect> {
    let by_id: BTreeMap<&str, &Seen> = seen.iter().map(|s| (s.instance_id.as_str(), s)).collect();
    let row_of: BTreeMap<&str, &PowerRow> =
        rows.iter().map(|r| (r.instance_id.as_str(), r)).collect();
    let region = job.region.as_str();
    let mut effects = Vec::new();
    let mut release = Vec::new();
    let mut not_stopped = Vec::new();
    let mut start = Vec::new();
    let mut warm = Vec::new();
    for instance in &job.instance_ids {
        let Some(row) = row_of.get(instance.as_str()) else {
            continue;
        };
        let s = by_id.get(instance.as_str());
        let state = s.map_or("", |s| s.state.as_str());
        match target {
            Target::Stopped => match s {
                Some(s) if s.state == "STOPPED" => {
                    effects.push(Effect::Power(PowerChange::to(
                        region,
                        instance,
                        PowerState::Stopped,
                    )));
                    release.push(instance.clone());
                }
                Some(s) if s.state == "RUNNING" => {
                    let detail = if s.failed("StopInstances") {
                        "the stop ended FAILED"
                    } else {
                        "it did not stop"
                    };
                    let reason = stop_failure_reason(live, "", detail);
                    effects.push(Effect::Power(
                        PowerChange::to(region, instance, PowerState::NotStopped).because(&reason),
                    ));
                    not_stopped.push((instance.clone(), reason));
                }
                _ => effects.push(Effect::Power(
                    PowerChange::to(region, instance, PowerState::LeftStopped)
                        .because(format!("did not stop in time (state {state:?})")),
                )),
            },
            Target::Idle => match failed.get(instance.as_str()) {
                Some(pairs) if !pairs.is_empty() => {
                    effects.push(Effect::CountOperationFailure {
                        item_ids: pairs.iter().map(|(p, _)| p.item_id).collect(),
                    });
                    for (kind, bind) in [(JobKind::Bind, true), (JobKind::Unbind, false)] {
                        let again: Vec<super::Pair> = pairs
                            .iter()
                            .filter(|(_, b)| *b == bind)
                            .map(|(p, _)| p.clone())
                            .collect();
                        effects.extend(
                            super::jobs_for_pairs(kind, region, false, &again, now)
                                .into_iter()
                                .map(Effect::AddJob),
                        );
                    }
                    effects.push(Effect::Power(PowerChange::to(
                        region,
                        instance,
                        PowerState::Stopped,
                    )));
                }
                _ => start.push(instance.clone()),
            },
            Target::Running => match s {
                Some(s) if s.state == "RUNNING" => warm.push(instance.clone()),
                Some(s) if s.state == "STOPPED" => {
                    // A start that ended FAILED, or a ForceStop the cloud left stopped.
                    let failed_start = s.failed("StartInstances");
                    if failed_start && row.start_failures + 1 >= max_attempts {
                        effects.push(left_stopped(
                            region,
                            instance,
                            "StartInstances ended FAILED",
                        ));
                    } else {
                        if failed_start {
                            effects.push(Effect::CountStartFailure {
                                region: region.to_string(),
                                instance_id: instance.clone(),
                            });
                        }
                        let delay = if failed_start {
                            START_RETRY_MS * (row.start_failures + 1)
                        } else {
                            0
                        };
                        effects.push(Effect::Power(PowerChange::to(
                            region,
                            instance,
                            PowerState::Starting,
                        )));
                        effects.extend(power_job(
                            JobKind::Start,
                            region,
                            std::slice::from_ref(instance),
                            now + delay,
                        ));
                    }
                }
                _ => effects.push(left_stopped(
                    region,
                    instance,
                    &format!("not RUNNING in time after its start (state {state:?})"),
                )),
            },
            Target::WarmedUp => {
                if state == "RUNNING" {
                    effects.push(Effect::Power(PowerChange::to(
                        region,
                        instance,
                        PowerState::Up,
                    )));
                } else {
                    // It went down again during its warmup: not ours to fix, but not up.
                    effects.push(left_stopped(
                        region,
                        instance,
                        &format!("left RUNNING during its warmup (state {state:?})"),
                    ));
                }
            }
        }
    }
    if !release.is_empty() {
        effects.push(Effect::ReleaseKeys {
            region: region.to_string(),
            account: None,
            instances: release,
            force_stop: false,
        });
    }
    for (instance, reason) in not_stopped {
        effects.push(Effect::FailHeld {
            region: region.to_string(),
            instances: vec![instance],
            reason: ErrorInfo::new(STOP_FAILED, reason),
        });
    }
    if !start.is_empty() {
        for instance in &start {
            effects.push(Effect::Power(PowerChange::to(
                region,
                instance,
                PowerState::Starting,
            )));
        }
        effects.extend(power_job(JobKind::Start, region, &start, now));
    }
    if !warm.is_empty() {
        if live.warmup_ms > 0 {
            for instance in &warm {
                effects.push(Effect::Power(PowerChange::to(
                    region,
                    instance,
                    PowerState::Warming,
                )));
            }
            effects.push(settle(
                region,
                warm,
                Target::WarmedUp,
                None,
                now + live.warmup_ms,
            ));
        } else {
            for instance in &warm {
                effects.push(Effect::Power(PowerChange::to(
                    region,
                    instance,
                    PowerState::Up,
                )));
            }
        }
    }
    effects
}

fn left_stopped(region: &str, instance: &str, reason: &str) -> Effect {
    Effect::Power(PowerChange::to(region, instance, PowerState::LeftStopped).because(reason))
}

/// Every key step of these instances (down, by this run) has ended: bring them back.
/// Stop-start: once no operation is in progress, start them. Force-stop: see them
/// RUNNING again (the cloud restarts them, or keyfleet does).
pub fn keys_done(live: &Live, region: &str, instances: Vec<String>, now: i64) -> Vec<Effect> {
    if instances.is_empty() {
        return Vec::new();
    }
    let target = match live.running {
        Running::StopStart => Target::Idle,
        Running::ForceStop => Target::Running,
    };
    // On its way back: a second key step ending meanwhile does not bring it back twice.
    let mut effects: Vec<Effect> = instances
        .iter()
        .map(|i| Effect::Power(PowerChange::to(region, i, PowerState::Starting)))
        .collect();
    let first_look = match target {
        Target::Idle => FIRST_IDLE_SETTLE_MS,
        _ => FIRST_SETTLE_MS,
    };
    effects.push(settle(region, instances, target, None, now + first_look));
    effects
}

/// A start was accepted (`request_id`): settle until RUNNING.
pub fn start_accepted(job: &JobFacts, request_id: &str, now: i64) -> Vec<Effect> {
    vec![settle(
        &job.region,
        job.instance_ids.clone(),
        Target::Running,
        Some(request_id),
        now + FIRST_SETTLE_MS,
    )]
}

/// A start failed for good: the instances are LEFT STOPPED, and the run takes no
/// further instance down.
pub fn start_failed(job: &JobFacts, error: &ErrorInfo) -> Vec<Effect> {
    if ALREADY_STARTING.contains(&error.code.as_str()) {
        return vec![settle(
            &job.region,
            job.instance_ids.clone(),
            Target::Running,
            None,
            0,
        )];
    }
    let mut effects: Vec<Effect> = job
        .instance_ids
        .iter()
        .map(|i| {
            left_stopped(
                &job.region,
                i,
                &format!("StartInstances failed: {} {}", error.code, error.message),
            )
        })
        .collect();
    effects.push(Effect::Halt {
        reason: format!(
            "{} left stopped: StartInstances failed ({})",
            job.instance_ids.join(" "),
            error.code
        ),
    });
    effects
}

/// A survey failed for good: without the cloud's word nothing is stopped; the
/// instances' pairs fail.
pub fn survey_failed(job: &JobFacts, error: &ErrorInfo) -> Vec<Effect> {
    let mut effects: Vec<Effect> = job
        .instance_ids
        .iter()
        .map(|i| {
            Effect::Power(PowerChange {
                before: Some(String::new()),
                ..PowerChange::to(&job.region, i, PowerState::NotStopped).because(format!(
                    "its power state could not be read ({})",
                    error.code
                ))
            })
        })
        .collect();
    effects.push(Effect::FailHeld {
        region: job.region.clone(),
        instances: job.instance_ids.clone(),
        reason: ErrorInfo::new(
            &error.code,
            format!(
                "not changed: the survey of its power state failed ({}: {})",
                error.code, error.message
            ),
        ),
    });
    effects
}

/// A settle failed for good: the instances may be down, and nothing shows them back.
pub fn settle_failed(job: &JobFacts, error: &ErrorInfo) -> Vec<Effect> {
    job.instance_ids
        .iter()
        .map(|i| {
            left_stopped(
                &job.region,
                i,
                &format!("its state could not be read ({})", error.code),
            )
        })
        .collect()
}

/// The effects an instance LEFT STOPPED has on the run: no further instance goes down.
pub fn halts(changes: &[PowerChange]) -> Option<String> {
    let left: Vec<&str> = changes
        .iter()
        .filter(|c| c.state == PowerState::LeftStopped)
        .map(|c| c.instance_id.as_str())
        .collect();
    (!left.is_empty()).then(|| format!("{} left stopped", left.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(max_down: Budget, per: Option<Per>, canary: u32) -> Live {
        Live {
            running: Running::StopStart,
            max_down,
            per,
            warmup_ms: 0,
            stop_type: StopType::Soft,
            canary,
        }
    }

    fn row(n: i64, state: PowerState, group: Option<&str>) -> PowerRow {
        PowerRow {
            region: "ap-guangzhou".into(),
            account: None,
            instance_id: format!("ins-{n:08}"),
            state,
            group: group.map(str::to_string),
            seq: n,
            start_failures: 0,
        }
    }

    fn stopped_now(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Power(c) if c.state == PowerState::Stopping => Some(c.instance_id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn budgets_parse_and_count() {
        assert_eq!("5".parse::<Budget>(), Ok(Budget::Count(5)));
        assert_eq!("5%".parse::<Budget>(), Ok(Budget::Percent(5)));
        assert!("0".parse::<Budget>().is_err());
        assert!("150%".parse::<Budget>().is_err());
        assert!("five".parse::<Budget>().is_err());
        assert_eq!(Budget::Percent(5).of(1_000), 50);
        assert_eq!(Budget::Percent(5).of(10), 1, "at least one");
        assert_eq!(Budget::Count(3).of(1), 3);
        assert_eq!("tag:service".parse::<Per>(), Ok(Per::Tag("service".into())));
        assert!("tag:".parse::<Per>().is_err());
    }

    #[test]
    fn max_down_per_takes_a_zone_a_tag_or_an_input_column() {
        assert_eq!("zone".parse::<Per>(), Ok(Per::Zone));
        assert_eq!("tag:service".parse::<Per>(), Ok(Per::Tag("service".into())));
        assert_eq!("rack".parse::<Per>(), Ok(Per::Column("rack".into())));
        assert_eq!("column:zone".parse::<Per>(), Ok(Per::Column("zone".into())));
        assert!("tag:".parse::<Per>().is_err());
        assert!("a b".parse::<Per>().unwrap_err().contains("input column"));
        assert_eq!(Per::Column("rack".into()).to_string(), "rack");
        // The survey puts each instance in its column's group.
        let live = live(Budget::Count(1), Some(Per::Column("rack".into())), 0);
        let job = facts(JobKind::Survey, &["ins-a", "ins-b"]);
        let columns = BTreeMap::from([("ins-a".to_string(), "r1".to_string())]);
        let groups: Vec<Option<String>> = surveyed(
            &live,
            &job,
            &[
                seen("ins-a", "RUNNING", None),
                seen("ins-b", "RUNNING", None),
            ],
            &columns,
            &Default::default(),
        )
        .into_iter()
        .filter_map(|e| match e {
            Effect::Power(c) => Some(c.group),
            _ => None,
        })
        .collect();
        assert_eq!(groups, [Some("r1".to_string()), Some(String::new())]);
    }

    #[test]
    fn an_instance_another_run_holds_is_not_taken_down_by_this_one() {
        let live = live(Budget::Count(3), None, 0);
        let rows = [
            row(1, PowerState::Waiting, None),
            row(2, PowerState::Waiting, None),
            row(3, PowerState::Waiting, None),
        ];
        let claims = BTreeMap::from([
            (
                "ins-00000001".to_string(),
                crate::rules::Claim::Busy { run_id: 4 },
            ),
            (
                "ins-00000002".to_string(),
                crate::rules::Claim::Stuck { run_id: 5 },
            ),
            (
                "ins-00000003".to_string(),
                crate::rules::Claim::Stale { run_id: 6 },
            ),
        ]);
        let effects = admit(&live, &rows, false, 0, &claims);
        // Busy waits (no effect), stuck is given up on, stale is taken over and stopped.
        assert_eq!(stopped_now(&effects), ["ins-00000003"]);
        assert!(effects.iter().any(|e| matches!(e,
            Effect::Power(c) if c.instance_id == "ins-00000002" && c.state == PowerState::NotStopped)));
        assert!(effects.iter().any(|e| matches!(e,
            Effect::FailHeld { reason, .. } if reason.code == crate::rules::CLAIMED)));
        assert!(effects.iter().any(|e| matches!(e,
            Effect::Claim { instances, reason: crate::rules::ClaimReason::Down, .. }
                if instances == &["ins-00000003".to_string()])));
        assert!(!effects.iter().any(|e| matches!(e,
            Effect::Power(c) if c.instance_id == "ins-00000001")));
    }

    /// Instances of two accounts in one region are stopped in a job per account (each
    /// signed as its own), within the one budget of the run.
    #[test]
    fn admission_stops_each_account_in_its_own_jobs() {
        let live = live(Budget::Count(3), None, 0);
        let mut rows: Vec<PowerRow> = (1..=4).map(|n| row(n, PowerState::Waiting, None)).collect();
        rows[1].account = Some("prod".into());
        rows[3].account = Some("prod".into());
        let effects = admit(&live, &rows, false, 0, &BTreeMap::new());
        let stops: Vec<(Option<String>, Vec<String>)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::AddJob(job) if job.kind == JobKind::Stop => {
                    Some((job.account.clone(), job.instance_ids.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            stops,
            vec![
                (
                    None,
                    vec!["ins-00000001".to_string(), "ins-00000003".to_string()]
                ),
                (Some("prod".to_string()), vec!["ins-00000002".to_string()]),
            ]
        );
    }

    #[test]
    fn admission_fills_the_budget_in_survey_order_and_no_further() {
        let live = live(Budget::Count(2), None, 0);
        let rows = [
            row(1, PowerState::Up, None),
            row(2, PowerState::Stopped, None),
            row(3, PowerState::Waiting, None),
            row(4, PowerState::Waiting, None),
            row(5, PowerState::Kept, None),
        ];
        let effects = admit(&live, &rows, false, 0, &BTreeMap::new());
        assert_eq!(stopped_now(&effects), ["ins-00000003"]);
        let stops: Vec<&NewJob> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::AddJob(job) => Some(job),
                _ => None,
            })
            .collect();
        assert_eq!(stops.len(), 1);
        assert_eq!(
            (stops[0].kind, stops[0].instance_ids.as_slice()),
            (JobKind::Stop, &["ins-00000003".to_string()][..])
        );
        assert!(
            admit(&live, &rows, true, 0, &BTreeMap::new()).is_empty(),
            "a halted run takes nothing down"
        );
    }

    #[test]
    fn a_budget_per_group_holds_in_each_group() {
        let live = live(Budget::Count(1), Some(Per::Zone), 0);
        let rows = [
            row(1, PowerState::Stopping, Some("z1")),
            row(2, PowerState::Waiting, Some("z1")),
            row(3, PowerState::Waiting, Some("z2")),
            row(4, PowerState::Waiting, Some("z2")),
            row(5, PowerState::Waiting, Some("z3")),
        ];
        assert_eq!(
            stopped_now(&admit(&live, &rows, false, 0, &BTreeMap::new())),
            ["ins-00000003", "ins-00000005"]
        );
        // 10% of the run's 20 RUNNING instances: 2 in each zone.
        let rows: Vec<PowerRow> = (1..=20)
            .map(|n| {
                row(
                    n,
                    PowerState::Waiting,
                    Some(if n % 2 == 0 { "z1" } else { "z2" }),
                )
            })
            .collect();
        let pct = live_pct();
        assert_eq!(
            stopped_now(&admit(&pct, &rows, false, 0, &BTreeMap::new())).len(),
            4
        );
    }

    fn live_pct() -> Live {
        live(Budget::Percent(10), Some(Per::Zone), 0)
    }

    #[test]
    fn canaries_go_alone_and_a_failed_canary_stops_the_rollout() {
        let live = live(Budget::Count(5), None, 1);
        let rows = [
            row(1, PowerState::Waiting, None),
            row(2, PowerState::Waiting, None),
        ];
        assert_eq!(
            stopped_now(&admit(&live, &rows, false, 0, &BTreeMap::new())),
            ["ins-00000001"]
        );
        let rows = [
            row(1, PowerState::Warming, None),
            row(2, PowerState::Waiting, None),
        ];
        assert!(stopped_now(&admit(&live, &rows, false, 0, &BTreeMap::new())).is_empty());
        let rows = [
            row(1, PowerState::Up, None),
            row(2, PowerState::Waiting, None),
        ];
        assert_eq!(
            stopped_now(&admit(&live, &rows, false, 0, &BTreeMap::new())),
            ["ins-00000002"]
        );
        let rows = [
            row(1, PowerState::LeftStopped, None),
            row(2, PowerState::Waiting, None),
        ];
        assert!(admit(&live, &rows, false, 0, &BTreeMap::new()).is_empty());
    }

    fn facts(kind: JobKind, instances: &[&str]) -> JobFacts {
        JobFacts {
            id: 1,
            kind,
            region: "ap-guangzhou".into(),
            account: None,
            force_stop: false,
            instance_ids: instances.iter().map(|s| s.to_string()).collect(),
            key_ids: Vec::new(),
        }
    }

    fn seen(id: &str, state: &str, op: Option<(&str, &str)>) -> Seen {
        Seen {
            instance_id: id.into(),
            state: state.into(),
            zone: Some("ap-guangzhou-3".into()),
            latest_operation: op.map(|o| o.0.to_string()),
            latest_state: op.map(|o| o.1.to_string()),
            latest_request_id: op.map(|_| "req-ours".to_string()),
            ..Seen::default()
        }
    }

    #[test]
    fn a_survey_holds_running_instances_and_releases_the_rest() {
        let live = live(Budget::Count(1), Some(Per::Zone), 0);
        let job = facts(JobKind::Survey, &["ins-a", "ins-b", "ins-c", "ins-d"]);
        let mut windows = seen("ins-c", "RUNNING", None);
        windows.windows = true;
        let effects = surveyed(
            &live,
            &job,
            &[
                seen("ins-a", "RUNNING", None),
                seen("ins-b", "STOPPED", None),
                windows,
            ],
            &BTreeMap::new(),
            &Default::default(),
        );
        let states: Vec<(String, PowerState)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Power(c) => Some((c.instance_id.clone(), c.state)),
                _ => None,
            })
            .collect();
        assert_eq!(
            states,
            [
                ("ins-a".into(), PowerState::Waiting),
                ("ins-b".into(), PowerState::Kept),
                ("ins-c".into(), PowerState::NotStopped)
            ]
        );
        assert!(
            matches!(effects.last(), Some(Effect::ReleaseKeys { instances, force_stop: false, .. })
            if instances == &["ins-b", "ins-c", "ins-d"])
        );
    }

    #[test]
    fn a_soft_stop_that_failed_fails_the_pairs_and_frees_the_slot() {
        let live = live(Budget::Count(1), None, 0);
        let job = facts(JobKind::Settle, &["ins-a"]);
        let rows = [PowerRow {
            instance_id: "ins-a".into(),
            ..row(1, PowerState::Stopping, None)
        }];
        let effects = settled(
            &live,
            &job,
            Target::Stopped,
            &[seen("ins-a", "RUNNING", Some(("StopInstances", "FAILED")))],
            &rows,
            &BTreeMap::new(),
            10,
            0,
        );
        assert!(matches!(&effects[0], Effect::Power(c) if c.state == PowerState::NotStopped));
        let Some(Effect::FailHeld { reason, .. }) = effects.last() else {
            panic!("{effects:?}");
        };
        assert!(
            reason.message.contains("--stop-type soft-first"),
            "{}",
            reason.message
        );
    }

    #[test]
    fn a_failed_start_is_sent_again_then_left_stopped() {
        let live = live(Budget::Count(1), None, 0);
        let job = facts(JobKind::Settle, &["ins-a"]);
        let failed = [seen("ins-a", "STOPPED", Some(("StartInstances", "FAILED")))];
        let rows = [PowerRow {
            instance_id: "ins-a".into(),
            ..row(1, PowerState::Starting, None)
        }];
        let effects = settled(
            &live,
            &job,
            Target::Running,
            &failed,
            &rows,
            &BTreeMap::new(),
            3,
            0,
        );
        assert!(effects.iter().any(|e| matches!(e, Effect::AddJob(j) if j.kind == JobKind::Start && j.due_at == START_RETRY_MS)));
        let rows = [PowerRow {
            start_failures: 2,
            ..rows[0].clone()
        }];
        let effects = settled(
            &live,
            &job,
            Target::Running,
            &failed,
            &rows,
            &BTreeMap::new(),
            3,
            0,
        );
        assert!(matches!(&effects[0], Effect::Power(c) if c.state == PowerState::LeftStopped));
        assert!(halts(&[PowerChange::to("r", "ins-a", PowerState::LeftStopped)]).is_some());
    }

    #[test]
    fn a_key_operation_that_ended_failed_is_sent_again_before_the_start() {
        let live = live(Budget::Count(1), None, 0);
        let job = facts(JobKind::Settle, &["ins-a", "ins-b"]);
        let rows = [
            PowerRow {
                instance_id: "ins-a".into(),
                ..row(1, PowerState::Starting, None)
            },
            PowerRow {
                instance_id: "ins-b".into(),
                ..row(2, PowerState::Starting, None)
            },
        ];
        let seen = [
            seen(
                "ins-a",
                "STOPPED",
                Some(("DisassociateInstancesKeyPairs", "FAILED")),
            ),
            seen(
                "ins-b",
                "STOPPED",
                Some(("DisassociateInstancesKeyPairs", "SUCCESS")),
            ),
        ];
        let failed = BTreeMap::from([(
            "ins-a".to_string(),
            vec![(super::super::Pair::new(7, "ins-a", "skey-1eak0001"), false)],
        )]);
        let effects = settled(&live, &job, Target::Idle, &seen, &rows, &failed, 10, 0);
        assert_eq!(
            effects[0],
            Effect::CountOperationFailure { item_ids: vec![7] }
        );
        assert!(
            matches!(&effects[1], Effect::AddJob(j) if j.kind == JobKind::Unbind && j.item_ids == [7])
        );
        assert!(
            matches!(&effects[2], Effect::Power(c) if c.instance_id == "ins-a" && c.state == PowerState::Stopped)
        );
        let started: Vec<&NewJob> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::AddJob(j) if j.kind == JobKind::Start => Some(j),
                _ => None,
            })
            .collect();
        assert_eq!(started.len(), 1);
        assert_eq!(
            started[0].instance_ids,
            ["ins-b"],
            "only the one whose keys are done"
        );
    }

    #[test]
    fn back_up_with_a_warmup_keeps_the_slot_until_it_is_over() {
        let mut live = live(Budget::Count(1), None, 0);
        live.warmup_ms = 30_000;
        let job = facts(JobKind::Settle, &["ins-a"]);
        let rows = [PowerRow {
            instance_id: "ins-a".into(),
            ..row(1, PowerState::Starting, None)
        }];
        let up = [seen(
            "ins-a",
            "RUNNING",
            Some(("StartInstances", "SUCCESS")),
        )];
        let effects = settled(
            &live,
            &job,
            Target::Running,
            &up,
            &rows,
            &BTreeMap::new(),
            3,
            1_000,
        );
        assert!(matches!(&effects[0], Effect::Power(c) if c.state == PowerState::Warming));
        assert!(matches!(&effects[1], Effect::AddJob(j) if j.due_at == 31_000));
        let effects = settled(
            &live,
            &job,
            Target::WarmedUp,
            &up,
            &rows,
            &BTreeMap::new(),
            3,
            31_000,
        );
        assert!(matches!(&effects[0], Effect::Power(c) if c.state == PowerState::Up));
    }

    #[test]
    fn a_settle_is_done_only_where_it_waits_for() {
        let ours = Some("req-ours");
        let stopping = seen("i", "STOPPING", Some(("StopInstances", "OPERATING")));
        assert!(!stopping.settled(Target::Stopped, ours));
        assert!(seen("i", "STOPPED", None).settled(Target::Stopped, ours));
        // Still RUNNING, the latest operation someone else's: the cloud has not caught up.
        let mut lagging = seen(
            "i",
            "RUNNING",
            Some(("AssociateInstancesKeyPairs", "FAILED")),
        );
        lagging.latest_request_id = Some("req-earlier".into());
        assert!(!lagging.settled(Target::Stopped, ours));
        assert!(
            seen("i", "RUNNING", Some(("StopInstances", "FAILED"))).settled(Target::Stopped, ours)
        );
        assert!(
            !seen(
                "i",
                "STOPPED",
                Some(("DisassociateInstancesKeyPairs", "OPERATING"))
            )
            .settled(Target::Idle, None)
        );
        assert!(
            !seen("i", "STARTING", Some(("StartInstances", "OPERATING")))
                .settled(Target::Running, ours)
        );
        assert!(
            seen("i", "RUNNING", Some(("StartInstances", "SUCCESS")))
                .settled(Target::Running, ours)
        );
        // A ForceStop the cloud left stopped (no start of ours yet): keyfleet starts it.
        assert!(seen("i", "STOPPED", None).settled(Target::Running, None));
    }
}
