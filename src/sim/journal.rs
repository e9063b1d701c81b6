//! What the simulator saw: one journal entry per request and the running totals.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// One API request as the simulator handled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Arrival (after jitter, when the rate limiter saw it), in milliseconds since the
    /// simulator started, on tokio's clock.
    pub at_ms: i64,
    /// The `Host` header as sent (empty when missing); part of the limiter key.
    #[serde(default)]
    pub host: String,
    /// `X-TC-Action` as sent (empty when missing).
    pub action: String,
    /// `X-TC-Region` as sent (empty when missing).
    pub region: String,
    /// `InstanceIds` as sent, when readable; empty for a request that failed a protocol
    /// or signature check (its body is never stored).
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
    /// StopInstances' `StopType` as sent (`SOFT`, `SOFT_FIRST`, `HARD`); `None` when
    /// absent (the API then stops SOFT) and for every other action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_type: Option<String>,
    /// StopInstances' `StoppedMode` as sent (`KEEP_CHARGING`, `STOP_CHARGING`); `None`
    /// when absent (the API then keeps charging) and for every other action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_mode: Option<String>,
}

/// The journal code of a request whose connection was dropped before it was applied.
pub const DROPPED_BEFORE_APPLY: &str = "Sim.DroppedBeforeApply";
/// The stats outcome of a request processed and then dropped without a reply.
pub const DROPPED_AFTER_APPLY: &str = "Sim.DroppedAfterApply";
/// The stats outcome of a successful reply.
pub const SUCCESS: &str = "Success";

/// The journal's default capacity (entries kept; the oldest are dropped past it).
pub const DEFAULT_JOURNAL_CAPACITY: usize = 100_000;
/// The most entries one `/_sim/journal` page returns, whatever `limit` asks.
pub const MAX_PAGE_ENTRIES: usize = 1_000;

/// Totals over every request so far (the stats are never dropped, unlike journal entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Action -> outcome -> count. The outcome is the reply's error code, `Success`,
    /// `Sim.DroppedBeforeApply` or `Sim.DroppedAfterApply`; a missing action is `""`.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// The most admitted requests under one limiter key (Host header, action, SecretId)
    /// in any sliding 1-second window: what `rate` bounds.
    pub max_in_any_second: u64,
    /// The most admitted requests of each action in any sliding 1-second window, every
    /// Host together (with one Host, the same as its entry in `max_in_any_second_by_host`).
    pub max_in_any_second_by_action: BTreeMap<String, u64>,
    /// Host header -> action -> the most admitted requests in any sliding 1-second
    /// window: one entry per limiter key (only one SecretId is ever admitted).
    #[serde(default)]
    pub max_in_any_second_by_host: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests refused with RequestLimitExceeded.
    pub throttled: u64,
    /// Requests past the rate limiter.
    pub admitted: u64,
    /// Connections closed without a reply by a drop fault.
    pub dropped: u64,
    /// Journal entries dropped (oldest first) to keep the journal within its capacity.
    #[serde(default)]
    pub journal_dropped: u64,
    /// Requests that failed a protocol or signature check (unsigned, mis-signed,
    /// malformed): counted in `requests` too, journaled without their ids (their bodies
    /// are never parsed or stored).
    #[serde(default)]
    pub protocol_failures: u64,
    /// Connections accepted.
    #[serde(default)]
    pub connections: u64,
    /// The most connections open at once (never above `max_connections`).
    #[serde(default)]
    pub max_open_connections: u64,
    /// Connections closed because a request head did not arrive in time (this is also
    /// how idle keep-alive connections end).
    #[serde(default)]
    pub header_timeouts: u64,
    /// Connections closed because a request body did not arrive in time.
    #[serde(default)]
    pub body_timeouts: u64,
}

/// One page of the journal, as `GET /_sim/journal?after=SEQ&limit=N` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalPage {
    /// The entries with a sequence number above `after`, oldest first, at most `limit`.
    pub entries: Vec<JournalEntry>,
    /// The sequence number of the last entry returned (pass it as `after` for the next
    /// page); `after` itself when the page is empty.
    pub next_after: u64,
    /// True when entries beyond this page are retained now.
    pub more: bool,
    /// The sequence number of the oldest retained entry (1 + how many were dropped).
    pub first_retained: u64,
}

/// The journal and stats, kept together so they never disagree.
///
/// Entries are kept in the order their requests finished, numbered from 1 in that order
/// (the page cursor); [`Recorder::journal`] returns them in arrival order instead.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// (arrival order, entry), oldest recorded first; entry `i` has sequence number
    /// `first_seq + i`.
    entries: VecDeque<(u64, JournalEntry)>,
    first_seq: u64,
    capacity: usize,
    stats: Stats,
}

impl Recorder {
    /// A recorder keeping at most `capacity` entries (at least one).
    pub(super) fn new(capacity: usize) -> Recorder {
        Recorder {
            entries: VecDeque::new(),
            first_seq: 1,
            capacity: capacity.max(1),
            stats: Stats::default(),
        }
    }

    /// Records a finished request; `arrival` is its arrival order.
    pub(super) fn record(&mut self, arrival: u64, entry: JournalEntry) {
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
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
            self.first_seq += 1;
            self.stats.journal_dropped += 1;
        }
        self.entries.push_back((arrival, entry));
    }

    /// Counts a request that failed a protocol or signature check (recorded as well).
    pub(super) fn protocol_failure(&mut self) {
        self.stats.protocol_failures += 1;
    }

    /// Counts an admitted request: `per_key` is its limiter key's busiest window so
    /// far, `per_action` its action's over every Host.
    pub(super) fn admitted(&mut self, host: &str, action: &str, per_key: u64, per_action: u64) {
        self.stats.admitted += 1;
        let max = self
            .stats
            .max_in_any_second_by_action
            .entry(action.to_string())
            .or_default();
        *max = (*max).max(per_action);
        let max = self
            .stats
            .max_in_any_second_by_host
            .entry(host.to_string())
            .or_default()
            .entry(action.to_string())
            .or_default();
        *max = (*max).max(per_key);
        self.stats.max_in_any_second = self.stats.max_in_any_second.max(per_key);
    }

    /// Connection events, for the stats.
    pub(super) fn connection_opened(&mut self, open_now: u64) {
        self.stats.connections += 1;
        self.stats.max_open_connections = self.stats.max_open_connections.max(open_now);
    }

    pub(super) fn header_timeout(&mut self) {
        self.stats.header_timeouts += 1;
    }

    pub(super) fn body_timeout(&mut self) {
        self.stats.body_timeouts += 1;
    }

    /// The retained entries in arrival order.
    pub(super) fn journal(&self) -> Vec<JournalEntry> {
        let mut entries: Vec<&(u64, JournalEntry)> = self.entries.iter().collect();
        entries.sort_by_key(|(arrival, _)| *arrival);
        entries.into_iter().map(|(_, e)| e.clone()).collect()
    }

    /// The retained entries numbered above `after`, at most `limit` (capped at
    /// [`MAX_PAGE_ENTRIES`]); only the page is copied, never the whole journal.
    pub(super) fn page(&self, after: u64, limit: usize) -> JournalPage {
        let limit = limit.clamp(1, MAX_PAGE_ENTRIES);
        let skip = usize::try_from(after.saturating_add(1).saturating_sub(self.first_seq))
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        let entries: Vec<JournalEntry> = self
            .entries
            .range(skip..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect();
        let next_after = match entries.len() {
            0 => after,
            n => self.first_seq + (skip + n) as u64 - 1,
        };
        JournalPage {
            more: skip + entries.len() < self.entries.len(),
            entries,
            next_after,
            first_retained: self.first_seq,
        }
    }

    pub(super) fn stats(&self) -> Stats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> JournalEntry {
        JournalEntry {
            at_ms: n as i64,
            host: String::new(),
            action: format!("A{n}"),
            region: String::new(),
            instance_ids: Vec::new(),
            key_ids: Vec::new(),
            force_stop: false,
            code: None,
            request_id: None,
            applied: false,
            dropped: false,
            operation_failed: false,
            stop_type: None,
            stopped_mode: None,
        }
    }

    #[test]
    fn the_oldest_entries_are_dropped_and_counted() {
        let mut recorder = Recorder::new(3);
        for n in 0..5 {
            recorder.record(n, entry(n));
        }
        let kept: Vec<String> = recorder.journal().into_iter().map(|e| e.action).collect();
        assert_eq!(kept, ["A2", "A3", "A4"]);
        let stats = recorder.stats();
        assert_eq!(stats.journal_dropped, 2);
        // Every request is still counted.
        assert_eq!(stats.requests.values().map(|o| o[SUCCESS]).sum::<u64>(), 5);
    }

    #[test]
    fn pages_walk_the_retained_entries_once() {
        let mut recorder = Recorder::new(4);
        // Finished out of arrival order: pages follow the finishing order.
        for n in [1, 0, 2, 4, 3, 5] {
            recorder.record(n, entry(n));
        }
        let first = recorder.page(0, 3);
        assert_eq!(first.first_retained, 3);
        let names = |p: &JournalPage| {
            p.entries
                .iter()
                .map(|e| e.action.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&first), ["A2", "A4", "A3"]);
        assert!(first.more);
        assert_eq!(first.next_after, 5);
        let second = recorder.page(first.next_after, 3);
        assert_eq!(names(&second), ["A5"]);
        assert!(!second.more);
        assert_eq!(second.next_after, 6);
        let empty = recorder.page(second.next_after, 3);
        assert!(empty.entries.is_empty() && !empty.more);
        assert_eq!(empty.next_after, 6);
        // A cursor far in the past starts at the oldest retained; one in the future is empty.
        assert_eq!(names(&recorder.page(1, 1)), ["A2"]);
        assert!(recorder.page(u64::MAX, 10).entries.is_empty());
        // The limit is capped and at least one.
        assert_eq!(recorder.page(0, 0).entries.len(), 1);
    }
}
