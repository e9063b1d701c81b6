//! What follows an outcome: pure rules, (a job's outcome, the rows the store read in
//! its transaction) -> a list of [`Effect`]s, which the store applies in that same
//! transaction, so a crash never separates an outcome from what it causes.
//!
//! A job's [`JobKind`] is its step in an instance's workflow; the rules are per kind:
//!
//! - [`rotation`]: an accepted Associate (`bind`) is confirmed later (`confirm`); a
//!   confirmation releases the instance's held unbinds, sends a new key again, or skips
//!   the unbinds with the reason; a bind that failed for good keeps the old keys.
//! - [`keep_one_key`]: a `look` releases the unbinds that leave the instance a key and
//!   skips the others.
//! - [`template`]: a template change (a launch template's new version, made the
//!   default; a launch configuration's `LoginSettings`): look, write, look again; a
//!   write whose outcome is unknown is replaced by a look, never sent twice.
//! - `unbind` and `verify` jobs cause nothing beyond their own rows.
//!
//! Adding a step to the workflow: a [`JobKind`] (and its word in a migration's CHECK
//! list), its action's `JobAction` in the executor, and its rules here, tested without
//! a database. Nothing here does I/O; the store's `outcome` module is the only caller.

pub(crate) mod keep_one_key;
pub mod power;
pub(crate) mod rotation;
pub mod template;

use crate::chunk::{PairRef, chunk};
pub use crate::states::JobKind;
use crate::states::Verified;

/// An error code and message as recorded (on an attempt, a job or an item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

impl ErrorInfo {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The executor's settings that bound the jobs one outcome makes for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowUp {
    /// `--max-attempts`: also how often an operation the cloud reported FAILED is sent.
    pub max_attempts: i64,
    /// How long (ms) a confirmation looks again at an instance still OPERATING.
    pub confirm_wait_ms: i64,
}

impl Default for FollowUp {
    fn default() -> Self {
        FollowUp {
            max_attempts: 10,
            confirm_wait_ms: 60_000,
        }
    }
}

/// The job whose outcome the rules decide on, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    pub id: i64,
    pub kind: JobKind,
    pub region: String,
    /// Its account (`None`: the run's own).
    pub account: Option<String>,
    pub force_stop: bool,
    pub instance_ids: Vec<String>,
    pub key_ids: Vec<String>,
}

/// One pair (item) of a run, as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub item_id: i64,
    pub instance_id: String,
    pub key_id: String,
}

impl Pair {
    pub fn new(item_id: i64, instance_id: &str, key_id: &str) -> Pair {
        Pair {
            item_id,
            instance_id: instance_id.to_string(),
            key_id: key_id.to_string(),
        }
    }
}

/// One pair a read (`confirm`, `verify`) decides on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadItem {
    pub item_id: i64,
    pub instance_id: String,
    pub key_id: String,
    /// The RequestId of the operation that claimed the pair, if any: the one whose
    /// `LatestOperationState` tells whether it was applied.
    pub request_id: Option<String>,
    /// A bind item (rotation): the key is to be bound, not gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bind: bool,
}

/// The payload of a read job (`confirm`, `look`, `verify`): the pairs it decides on
/// and until when an instance still OPERATING is looked at again.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ReadPayload {
    /// Until when (Unix ms) an instance whose operation is still OPERATING is looked
    /// at again; after it, `operating` is the answer.
    pub recheck_until: i64,
    /// Empty for a `look`: its instances are the job's, the pairs it decides on are
    /// their held items.
    pub items: Vec<ReadItem>,
}

impl ReadPayload {
    pub fn encode(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// A job an effect adds to the run's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub kind: JobKind,
    pub region: String,
    /// The account its requests are signed as. Rules leave it `None` for the jobs
    /// that follow a job: the store gives them that job's account (a job's follow-ups
    /// are of its instances, so of its account). Jobs of several instances not from
    /// one job (admission) name it (`None` is then the run's own account).
    pub account: Option<String>,
    pub force_stop: bool,
    /// Sorted, distinct, at most 100.
    pub instance_ids: Vec<String>,
    /// Sorted, distinct, at most 100.
    pub key_ids: Vec<String>,
    pub payload: Option<String>,
    /// The items it works for (they become pending in it); empty for a read.
    pub item_ids: Vec<i64>,
    /// When it is first due (Unix ms).
    pub due_at: i64,
}

/// What follows an outcome, applied by the store in the outcome's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Queue a job.
    AddJob(NewJob),
    /// The held unbinds of these instances (of the run, in `region`) are released
    /// into unbind jobs, chunked like a plan (identical key sets, <= 100 x 100).
    Release {
        region: String,
        force_stop: bool,
        instances: Vec<String>,
    },
    /// The held unbinds of these instances end `skipped`, with the reason.
    SkipHeld {
        region: String,
        instances: Vec<String>,
        reason: ErrorInfo,
    },
    /// A queued job is not sent: it fails, and so do its pending pairs.
    FailJob { job_id: i64, reason: ErrorInfo },
    /// These items' accepted operations were reported FAILED once more (each such
    /// failure spends one of `--max-attempts`).
    CountOperationFailure { item_ids: Vec<i64> },
    /// A live run: an instance's power row changes.
    Power(power::PowerChange),
    /// A live run: the held key pairs of these instances (binds first, for a rotation;
    /// otherwise unbinds) go into jobs, with `ForceStop` as given.
    ReleaseKeys {
        region: String,
        /// Their account; `None`: the followed job's (or the run's own).
        account: Option<String>,
        instances: Vec<String>,
        force_stop: bool,
    },
    /// A live run: the held pairs of these instances fail with the reason.
    FailHeld {
        region: String,
        instances: Vec<String>,
        reason: ErrorInfo,
    },
    /// A live run: a start failed once more.
    CountStartFailure { region: String, instance_id: String },
    /// A live run takes no further instance down (one was left stopped).
    Halt { reason: String },
    /// A template change's row (`template_changes`) moves on.
    Template(template::Update),
    /// The run claims these instances (or takes their claims over): no other run on
    /// the database unbinds their keys under `--keep-one-key` or takes them down
    /// until the claim is released ([`Claim`]).
    Claim {
        region: String,
        instances: Vec<String>,
        reason: ClaimReason,
    },
}

/// Why a run claims an instance (`claims.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimReason {
    /// `--keep-one-key`: its look released unbinds that leave the instance a key.
    LastKey,
    /// A live run takes it down.
    Down,
}

impl ClaimReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimReason::LastKey => "last_key",
            ClaimReason::Down => "down",
        }
    }
}

/// An instance claimed by another run of the database, as the store found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Its run is running (its lease is fresh): wait until it lets the instance go.
    Busy { run_id: i64 },
    /// Its run is not running any more and still has work on the instance (pairs
    /// not done, or the instance down): waiting helps only once that run is resumed.
    Stuck { run_id: i64 },
    /// Its run is not running any more and has nothing left on the instance: the
    /// claim is taken over (keys it had unbound but not verified count as gone).
    Stale { run_id: i64 },
}

impl Claim {
    /// Whether the instance must wait (or be given up on).
    pub fn blocks(self) -> bool {
        !matches!(self, Claim::Stale { .. })
    }

    pub fn run_id(self) -> i64 {
        match self {
            Claim::Busy { run_id } | Claim::Stuck { run_id } | Claim::Stale { run_id } => run_id,
        }
    }
}

/// The code on pairs given up on because another run holds their instance's claim.
pub const CLAIMED: &str = "KeyFleet.Claimed";

/// Jobs of `kind` for `pairs` of one region, chunked like a plan (identical key sets,
/// <= 100 x 100), each taking the pairs in its cross product.
pub fn jobs_for_pairs(
    kind: JobKind,
    region: &str,
    force_stop: bool,
    pairs: &[Pair],
    due_at: i64,
) -> Vec<NewJob> {
    let specs = chunk(
        pairs.iter().map(|p| PairRef {
            region,
            instance_id: &p.instance_id,
            key_id: &p.key_id,
        }),
        force_stop,
    );
    specs
        .into_iter()
        .map(|spec| {
            let item_ids = pairs
                .iter()
                .filter(|p| {
                    spec.instance_ids.binary_search(&p.instance_id).is_ok()
                        && spec.key_ids.binary_search(&p.key_id).is_ok()
                })
                .map(|p| p.item_id)
                .collect();
            NewJob {
                kind,
                region: spec.region,
                account: None,
                force_stop: spec.force_stop,
                instance_ids: spec.instance_ids,
                key_ids: spec.key_ids,
                payload: None,
                item_ids,
                due_at,
            }
        })
        .collect()
}

/// A read's verdict on one pair, as the rules take it.
pub type Verdict = (i64, Verified);
