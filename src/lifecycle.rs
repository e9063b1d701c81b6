//! The run lifecycle as a library: execute a run's queue, verify what it did against
//! the cloud's own state, send again what the cloud reported FAILED, verify again, and
//! return what happened as data. `run`, `resume`, `retry`, `verify` and `demo` all go
//! through here; the binary maps the results to text and exit codes, and draws
//! progress through an [`Observer`].
//!
//! A RequestId proves only that the API accepted an operation: key-pair operations are
//! asynchronous. A verification round queues `verify` jobs (DescribeInstances, 100
//! instances, per region) in the run's own queue and executes only reads, so it is
//! paced at DescribeInstances' own limit, retried, and survives a crash: verifying
//! again finishes an interrupted round.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cvm::Action;
use crate::executor::{
    self, Api, Counters, ExecConfig, ExecError, StopReason, StopSignal, Summary,
};
use crate::store::verify::VerificationCounts;
use crate::store::{Requeue, Requeued, Store, StoreError, Verified};

/// What an execution is doing, for the [`Observer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The run's own queue (key-pair operations and what follows them).
    Execute,
    /// A verification round (reads only).
    Verify,
}

/// Progress reporting: the library prints nothing; the caller watches.
pub trait Observer: Sync {
    /// An execution starts; its progress is in `counters` until [`Observer::finished`].
    fn started(&self, phase: Phase, counters: Arc<Counters>) -> impl Future<Output = ()> + Send;
    /// The execution `started` announced has ended.
    fn finished(&self, phase: Phase) -> impl Future<Output = ()> + Send;
    /// Pairs whose accepted operation the cloud reported FAILED are sent again.
    fn resending(&self, _pairs: u64) {}
}

/// An observer that watches nothing (tests, benchmarks, quiet callers).
pub struct Unobserved;

impl Observer for Unobserved {
    async fn started(&self, _: Phase, _: Arc<Counters>) {}
    async fn finished(&self, _: Phase) {}
}

/// How a verification ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every batch was read.
    Complete,
    /// The cloud will not answer DescribeInstances for these credentials (for
    /// example `UnauthorizedOperation`): the run stands, unverified.
    Unavailable { code: String, message: String },
    /// Stopped (Ctrl-C, a transient stop): verifying again finishes it.
    Interrupted(String),
}

/// What a verification found.
#[derive(Debug, Clone)]
pub struct Verification {
    pub run_id: i64,
    pub ended: Ended,
    pub counts: VerificationCounts,
    /// DescribeInstances requests this round sent.
    pub requests: u64,
}

impl Verification {
    /// The round ended with a verdict on every pair it looked at.
    pub fn complete(&self) -> bool {
        self.ended == Ended::Complete
    }

    /// Every succeeded pair verified gone (and every new key bound), the round complete.
    pub fn all_gone(&self) -> bool {
        self.ended == Ended::Complete
            && self.counts.succeeded_not_gone == 0
            && self.counts.binds_not_bound == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (state, code, message) = match &self.ended {
            Ended::Complete => ("complete", None, None),
            Ended::Unavailable { code, message } => ("unavailable", Some(code), Some(message)),
            Ended::Interrupted(reason) => ("interrupted", None, Some(reason)),
        };
        let by_value: serde_json::Map<String, serde_json::Value> = Verified::ALL
            .iter()
            .map(|v| {
                (
                    v.as_str().to_string(),
                    serde_json::json!(self.counts.get(*v)),
                )
            })
            .collect();
        serde_json::json!({
            "run_id": self.run_id,
            "verification": state,
            "code": code,
            "message": message,
            "verified": by_value,
            "unverified": self.counts.unverified,
            "succeeded_not_gone": self.counts.succeeded_not_gone,
            "binds_not_bound": self.counts.binds_not_bound,
            "all_gone": self.all_gone(),
            "requests": self.requests,
        })
    }
}

/// What [`Lifecycle::run_to_verified`] did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every execution of the run's queue, as one: pair counts as they stand at the
    /// end, requests and retries added up over the rounds, why it stopped (if it did).
    pub summary: Summary,
    /// The last verification, when one ran.
    pub verification: Option<Verification>,
    /// Pairs sent again because the cloud reported their operation FAILED.
    pub resent: u64,
}

/// Lifecycle failures: the run could not be taken or the database failed. A pair's
/// outcome is never one.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One run's lifecycle: the store, the API, the execution's settings, one stop signal
/// for every round (a Ctrl-C stops the lifecycle, not just the round it came in).
/// How often a live run whose waiting instances another run holds looks again.
const CLAIM_WAIT_EVERY: Duration = Duration::from_millis(500);

pub struct Lifecycle<'a, A: Api, O: Observer> {
    pub store: &'a Store,
    pub api: Arc<A>,
    pub config: ExecConfig,
    /// How long a verification keeps looking at instances still OPERATING.
    pub verify_wait: Duration,
    pub stop: StopSignal,
    pub observer: &'a O,
}

impl<A: Api, O: Observer> Lifecycle<'_, A, O> {
    /// Executes the run's queue until every job is final or something stops it. A
    /// live run is made ready first (its survey queued, once) and its waiting instances
    /// admitted into the budget's room; a stop (Ctrl-C) then takes no new instance down
    /// and waits until the ones down are back up before it stops the execution.
    pub async fn execute(&self, run_id: i64) -> Result<Summary, LifecycleError> {
        if !self.store.prepare_live(run_id).await? {
            return self
                .execute_with(run_id, &self.config, Phase::Execute, self.stop.clone())
                .await;
        }
        let mut total: Option<Summary> = None;
        loop {
            self.store.resume_admissions(run_id).await?;
            let mut summary = self.execute_live(run_id).await?;
            // Interrupted and drained: the queue ran dry with instances still waiting for
            // a slot. The run is not finished (the store left it stopped): say so.
            if summary.stopped.is_none()
                && self.stop.is_stopped()
                && self.store.waiting_instances(run_id).await? > 0
            {
                summary.stopped = Some(StopReason::Interrupted);
            }
            let stopped = summary.stopped.is_some();
            total = Some(match total {
                None => summary,
                Some(earlier) => combine(earlier, summary),
            });
            // Instances still waiting with nothing in the queue: admit them and go on,
            // unless the run was stopped or has nothing it could send.
            if stopped
                || self.stop.is_stopped()
                || self.store.waiting_instances(run_id).await? == 0
                || self.store.open_jobs(run_id, None).await? == 0
                    && self.store.down_now(run_id).await? == 0
                    && !self.admits(run_id).await?
            {
                return Ok(total.expect("set above"));
            }
        }
    }

    /// Admits waiting instances; true when that queued work. While nothing can be
    /// admitted because another running run of the database holds waiting instances
    /// (issue 26, M2), it waits for that run to let them go, until a stop.
    async fn admits(&self, run_id: i64) -> Result<bool, LifecycleError> {
        loop {
            self.store.resume_admissions(run_id).await?;
            if self.store.open_jobs(run_id, None).await? > 0 {
                return Ok(true);
            }
            if self.store.waiting_on_claims(run_id).await? == 0 {
                return Ok(false);
            }
            tokio::select! {
                _ = self.stop.stopped() => return Ok(false),
                _ = tokio::time::sleep(CLAIM_WAIT_EVERY) => {}
            }
        }
    }

    /// One execution of a live run: a stop request drains it (no new instance down,
    /// those down brought back up) before the executor is told to stop.
    async fn execute_live(&self, run_id: i64) -> Result<Summary, LifecycleError> {
        let inner = StopSignal::default();
        let drain = tokio::spawn({
            let (outer, inner, store) = (self.stop.clone(), inner.clone(), self.store.clone());
            async move {
                outer.stopped().await;
                if store.drain_admissions(run_id).await.is_ok() {
                    while store.down_now(run_id).await.unwrap_or(0) > 0 {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                inner.stop();
            }
        });
        let result = self
            .execute_with(run_id, &self.config, Phase::Execute, inner)
            .await;
        drain.abort();
        result
    }

    async fn execute_with(
        &self,
        run_id: i64,
        config: &ExecConfig,
        phase: Phase,
        stop: StopSignal,
    ) -> Result<Summary, LifecycleError> {
        let counters = Arc::new(Counters::default());
        self.observer.started(phase, counters.clone()).await;
        let result =
            executor::execute(self.store, run_id, self.api.clone(), config, counters, stop).await;
        self.observer.finished(phase).await;
        Ok(result?)
    }

    /// Verifies run `run_id`: finishes an interrupted round, or starts a new one.
    pub async fn verify(&self, run_id: i64) -> Result<Verification, LifecycleError> {
        if self.store.open_verification(run_id).await? == 0 {
            self.store
                .begin_verification(run_id, self.verify_wait.as_millis() as i64)
                .await?;
        }
        let mut config = self.config.clone();
        config.only = Some(Action::DescribeInstances);
        let summary = self
            .execute_with(run_id, &config, Phase::Verify, self.stop.clone())
            .await?;
        let ended = match summary.stopped {
            None => Ended::Complete,
            Some(StopReason::Fatal { code, message, .. }) => {
                // Nothing a resume could change: end the round, so the run is complete
                // without it (and `resume` does not meet the same refusal again).
                self.store
                    .cancel_open_jobs(
                        run_id,
                        Action::DescribeInstances,
                        &code,
                        &format!("verification unavailable: {message}"),
                    )
                    .await?;
                self.store.finish_if_done(run_id).await?;
                Ended::Unavailable { code, message }
            }
            Some(other) => Ended::Interrupted(other.to_string()),
        };
        Ok(Verification {
            run_id,
            ended,
            counts: self.store.verification_counts(run_id).await?,
            requests: summary.requests,
        })
    }

    /// Executes the run and, with `verify`, verifies it; pairs whose accepted
    /// operation the cloud reported FAILED are a transient outcome: they are sent again
    /// (up to `--max-attempts` operations each) and verified again. A run with nothing
    /// left to send (a resume of a finished run) is verified only on request.
    pub async fn run_to_verified(
        &self,
        run_id: i64,
        verify: bool,
    ) -> Result<Outcome, LifecycleError> {
        let mut total: Option<Summary> = None;
        let mut resent = 0;
        loop {
            let summary = self.execute(run_id).await?;
            let requests = summary.requests;
            // Refused accounts stop only their own work: the others' is verified.
            let stopped = summary
                .stopped
                .as_ref()
                .is_some_and(|reason| !matches!(reason, StopReason::Accounts(_)));
            total = Some(match total {
                None => summary,
                Some(earlier) => combine(earlier, summary),
            });
            if stopped || !verify || requests == 0 || self.stop.is_stopped() {
                return Ok(Outcome {
                    summary: total.expect("set above"),
                    verification: None,
                    resent,
                });
            }
            let verification = self.verify(run_id).await?;
            if verification.complete() && !self.stop.is_stopped() {
                let max_attempts = i64::from(self.config.max_attempts);
                let again = self
                    .store
                    .requeue(run_id, Requeue::FailedOperations { max_attempts })
                    .await?;
                if again.pairs > 0 {
                    resent += again.pairs;
                    self.observer.resending(again.pairs);
                    continue;
                }
            }
            return Ok(Outcome {
                summary: total.expect("set above"),
                verification: Some(verification),
                resent,
            });
        }
    }
}

/// `keyfleet retry`: failed pairs (with one of `codes`, any when empty) and what a
/// rotation or `--keep-one-key` left undone go back to the queue, in one transaction.
pub async fn retry(store: &Store, run_id: i64, codes: &[String]) -> Result<Requeued, StoreError> {
    store.requeue(run_id, Requeue::Failed { codes }).await
}

/// `verify --requeue`: succeeded pairs verification found not applied go back to the
/// queue, in one transaction.
pub async fn requeue_unverified(store: &Store, run_id: i64) -> Result<Requeued, StoreError> {
    store.requeue(run_id, Requeue::Unverified).await
}

/// Two executions of one run as one: the later's counts (they are the database's, as
/// they stand), the sum of what each sent and how long each took.
fn combine(earlier: Summary, later: Summary) -> Summary {
    Summary {
        requests: earlier.requests + later.requests,
        retries: earlier.retries + later.retries,
        throttled: earlier.throttled + later.throttled,
        splits: earlier.splits + later.splits,
        elapsed: earlier.elapsed + later.elapsed,
        ..later
    }
}
