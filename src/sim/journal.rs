//! What the simulator saw: one journal entry per request and the running totals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One API request as the simulator handled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Arrival (after jitter, when the rate limiter saw it), in milliseconds since the
    /// simulator started, on tokio's clock.
    pub at_ms: i64,
    /// `X-TC-Action` as sent (empty when missing).
    pub action: String,
    /// `X-TC-Region` as sent (empty when missing).
    pub region: String,
    /// `InstanceIds` as sent, when readable.
    pub instance_ids: Vec<String>,
    /// `KeyIds` as sent, when readable.
    pub key_ids: Vec<String>,
    pub force_stop: bool,
    /// The error code replied (or, after a drop-after fault, the one that would have
    /// been); `None` for success. A drop-before fault records [`DROPPED_BEFORE_APPLY`].
    pub code: Option<String>,
    /// The reply's RequestId; `None` when the connection was closed without a reply.
    pub request_id: Option<String>,
    /// True when an Associate/Disassociate was accepted and its operation started on
    /// every instance (even one that changes no binding, such as unbinding a key that
    /// was not bound); the keys change when it completes, unless `operation_failed`.
    /// Never for the Describe actions.
    pub applied: bool,
    /// True when the connection was closed without a reply (a drop fault).
    pub dropped: bool,
    /// True when the request was accepted (`applied`) but its asynchronous operation ends
    /// `FAILED` with the keys unchanged (the async-fail fault): accepted, never applied.
    #[serde(default)]
    pub operation_failed: bool,
}

/// The journal code of a request whose connection was dropped before it was applied.
pub const DROPPED_BEFORE_APPLY: &str = "Sim.DroppedBeforeApply";
/// The stats outcome of a request processed and then dropped without a reply.
pub const DROPPED_AFTER_APPLY: &str = "Sim.DroppedAfterApply";
/// The stats outcome of a successful reply.
pub const SUCCESS: &str = "Success";

/// Totals over every request so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Action -> outcome -> count. The outcome is the reply's error code, `Success`,
    /// `Sim.DroppedBeforeApply` or `Sim.DroppedAfterApply`; a missing action is `""`.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// The most admitted requests of any one action in any sliding 1-second window
    /// (the limit is per action, so this is what `rate` bounds).
    pub max_in_any_second: u64,
    /// The same, for each action.
    pub max_in_any_second_by_action: BTreeMap<String, u64>,
    /// Requests refused with RequestLimitExceeded.
    pub throttled: u64,
    /// Requests past the rate limiter.
    pub admitted: u64,
    /// Connections closed without a reply by a drop fault.
    pub dropped: u64,
}

/// The journal and stats, kept together so they never disagree.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    entries: Vec<(u64, JournalEntry)>,
    stats: Stats,
}

impl Recorder {
    /// Records a finished request; `seq` is its arrival order.
    pub fn record(&mut self, seq: u64, entry: JournalEntry) {
        let outcome = match (&entry.code, entry.dropped) {
            (Some(code), false) => code.clone(),
            (None, false) => SUCCESS.to_string(),
            (_, true) if entry.code.as_deref() == Some(DROPPED_BEFORE_APPLY) => {
                DROPPED_BEFORE_APPLY.to_string()
            }
            (_, true) => DROPPED_AFTER_APPLY.to_string(),
        };
        *self
            .stats
            .requests
            .entry(entry.action.clone())
            .or_default()
            .entry(outcome)
            .or_default() += 1;
        if entry.code.as_deref() == Some("RequestLimitExceeded") {
            self.stats.throttled += 1;
        }
        if entry.dropped {
            self.stats.dropped += 1;
        }
        self.entries.push((seq, entry));
    }

    pub fn admitted(&mut self, action: &str, max_in_window: u64) {
        self.stats.admitted += 1;
        let max = self
            .stats
            .max_in_any_second_by_action
            .entry(action.to_string())
            .or_default();
        *max = (*max).max(max_in_window);
        self.stats.max_in_any_second = self.stats.max_in_any_second.max(max_in_window);
    }

    /// Entries in arrival order.
    pub fn journal(&self) -> Vec<JournalEntry> {
        let mut entries = self.entries.clone();
        entries.sort_by_key(|(seq, _)| *seq);
        entries.into_iter().map(|(_, e)| e).collect()
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }
}
