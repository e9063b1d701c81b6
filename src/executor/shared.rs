//! The state one execution shares between the dispatcher, the lanes and the writer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::store::queue::{Applied, QueuedJob, Write};

use super::action::JobAction;
use super::config::{AccountFailure, Counters, ExecConfig, StopReason};
use super::pacer::{Limiter, LimiterKey};

/// A claimed job on its way to a lane. Its concurrency permit is taken once its
/// send slot has come: a lane waiting for its limiter holds no permit, so a backlog
/// of one API never keeps another API's lane from sending.
pub(super) struct Claimed {
    pub(super) job: QueuedJob,
    pub(super) action: &'static dyn JobAction,
}

pub(super) type WriteReply = oneshot::Sender<Result<Applied, String>>;

/// Shared state of one execution.
pub(super) struct Shared<A> {
    /// The run being executed (named in each request's log event).
    pub(super) run_id: i64,
    pub(super) api: Arc<A>,
    pub(super) limiter: Arc<dyn Limiter>,
    pub(super) config: ExecConfig,
    pub(super) counters: Arc<Counters>,
    pub(super) writer: mpsc::UnboundedSender<(Write, WriteReply)>,
    /// Set once dispatching must end; the reason is kept.
    pub(super) stop_reason: Mutex<Option<StopReason>>,
    pub(super) halted: AtomicBool,
    pub(super) wake: Notify,
    /// Jobs handed to a lane and not yet recorded as finished (or given back), with
    /// the lane they are in.
    pub(super) claimed: Mutex<Claims>,
    /// Requests in flight at most (`--concurrency`).
    pub(super) permits: Arc<Semaphore>,
    pub(super) waiting_retry: Mutex<HashSet<i64>>,
    pub(super) rng: Mutex<StdRng>,
    pub(super) failed_here: AtomicU64,
    pub(super) writer_error: Mutex<Option<String>>,
    /// Since when every reply has been a throttle (`None`: the last one was not).
    pub(super) throttled_since: Mutex<Option<Instant>>,
    /// Accounts refused for good in this execution (`ExecConfig::isolate_accounts`):
    /// their jobs are no longer claimed; the first refusal of each is kept.
    pub(super) fenced: Mutex<Vec<AccountFailure>>,
}

pub(super) fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update; the data is plain.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<A> Shared<A> {
    pub(super) fn halt(&self, reason: StopReason) {
        let mut slot = locked(&self.stop_reason);
        // The first reason wins: a fatal error is not overwritten by the interrupt that follows it.
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.halted.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub(super) fn is_halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    /// Stops `failure`'s account (once): its jobs are left queued for a resume.
    pub(super) fn fence(&self, failure: AccountFailure) {
        let mut fenced = locked(&self.fenced);
        if fenced.iter().any(|f| f.account == failure.account) {
            return;
        }
        tracing::error!(
            account = failure.name(),
            code = %failure.code,
            "the account's credentials were refused: its work stops, the other accounts go on"
        );
        fenced.push(failure);
        drop(fenced);
        self.wake.notify_waiters();
    }

    /// Whether `account`'s work has stopped.
    pub(super) fn is_fenced(&self, account: Option<&str>) -> bool {
        locked(&self.fenced)
            .iter()
            .any(|f| f.account.as_deref() == account)
    }

    /// The accounts stopped so far.
    pub(super) fn fenced_accounts(&self) -> Vec<Option<String>> {
        locked(&self.fenced)
            .iter()
            .map(|f| f.account.clone())
            .collect()
    }

    /// The job is no longer this process's to send (recorded, or given back).
    pub(super) fn release(&self, job_id: i64) {
        locked(&self.claimed).release(job_id);
        self.wake.notify_waiters();
    }

    pub(super) fn writer_failed(&self, error: String) {
        tracing::error!(%error, "could not record to the database; stopping");
        *locked(&self.writer_error) = Some(error);
        self.halt(StopReason::Interrupted);
    }

    pub(super) async fn write(&self, write: Write) -> Result<Applied, String> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((write, tx))
            .map_err(|_| "writer is gone".to_string())?;
        rx.await
            .map_err(|_| "writer dropped the reply".to_string())?
    }
}

/// The jobs handed to lanes and not yet finished, by lane.
#[derive(Default)]
pub(super) struct Claims {
    lane_of: HashMap<i64, LimiterKey>,
    per_lane: HashMap<LimiterKey, usize>,
}

impl Claims {
    pub(super) fn len(&self) -> usize {
        self.lane_of.len()
    }

    pub(super) fn contains(&self, job_id: i64) -> bool {
        self.lane_of.contains_key(&job_id)
    }

    pub(super) fn in_lane(&self, key: &LimiterKey) -> usize {
        self.per_lane.get(key).copied().unwrap_or(0)
    }

    /// Claims the job for `key`'s lane unless that lane already holds `depth` jobs.
    pub(super) fn claim(&mut self, job_id: i64, key: &LimiterKey, depth: usize) -> bool {
        if self.contains(job_id) || self.in_lane(key) >= depth {
            return false;
        }
        self.lane_of.insert(job_id, key.clone());
        *self.per_lane.entry(key.clone()).or_default() += 1;
        true
    }

    pub(super) fn release(&mut self, job_id: i64) {
        if let Some(key) = self.lane_of.remove(&job_id)
            && let Some(n) = self.per_lane.get_mut(&key)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// Resolves once dispatching must end.
pub(super) async fn halted<A>(shared: &Shared<A>) {
    loop {
        // Register for the wake-up before checking, so a halt in between is not missed.
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.is_halted() {
            return;
        }
        notified.await;
    }
}
