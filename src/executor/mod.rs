//! The executor: drains a run's durable queue through the API at the allowed rate.
//!
//! One dispatcher claims due jobs (a job is due when its time has come and every
//! job it depends on has succeeded) and hands each to the lane of its limiter key
//! (action, endpoint, SecretId: [`pacer::LimiterKey`]). A lane commits its job's
//! attempt row, waits for a send slot from the [`pacer::Limiter`], and spawns the
//! request; lanes of different keys run side by side, so two APIs go at full speed
//! at once. Requests in flight are bounded by a semaphore (`--concurrency`). What a
//! job sends and what its reply proves is its action's ([`action::JobAction`]);
//! what a refusal means is [`decide::decide`], a pure function whose effects the
//! caller applies. Every database write goes through one writer task that commits
//! whatever has queued up in one transaction, so attempt rows are durable before
//! their requests leave and outcomes after their replies, at one fsync per batch. A
//! job whose attempt has no outcome after a crash is sent again on resume
//! ([`Store::recover_in_flight`]), whatever its action.

pub mod action;
pub mod decide;
pub mod isolate;
pub mod pacer;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::cvm::Action;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use crate::delay;
use crate::store::queue::{
    Applied, Finish, FollowUp, Lease, LeaseError, Outcome, PairCounts, QueuedJob, Write,
};
use crate::store::{RunState, Store, StoreError, now_ms};
pub use action::{Api, Call, JobAction, Proof, Refused, Reply, job_action};
pub use pacer::{DbLimiter, Feedback, Limiter, LimiterKey, LocalLimiter};

/// Continuous throttling allowed before a run stops (see `ExecConfig::throttle_budget`).
pub const THROTTLE_BUDGET: Duration = Duration::from_secs(15 * 60);

/// How often the dispatcher asks the queue for due jobs while every lane it knows is
/// well supplied (for jobs of lanes it has not seen yet: a rotation's first unbinds).
const REQUERY_EVERY: Duration = Duration::from_millis(200);

/// Writes committed together at most; more wait for the next commit.
const MAX_WRITES_PER_COMMIT: usize = 512;

/// The `--max-errors` threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxErrors {
    Pairs(u64),
    Percent(f64),
}

impl std::str::FromStr for MaxErrors {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("--max-errors takes a count (50) or a percentage (5%), not {s:?}");
        match s.strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad());
                }
                Ok(MaxErrors::Percent(p))
            }
            None => s.trim().parse().map(MaxErrors::Pairs).map_err(|_| bad()),
        }
    }
}

/// How the executor behaves.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Key-pair operations per second at most, per limiter key; every other API at
    /// its documented limit. 0 turns pacing off for all.
    pub rate: f64,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Retry-class failures a job may have before its pairs fail.
    pub max_attempts: u32,
    /// Stop dispatching once this many pairs have failed in this invocation.
    pub max_errors: Option<MaxErrors>,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub throttle_delay: Duration,
    /// Seed for retry jitter; `None` draws one.
    pub seed: Option<u64>,
    /// Send only jobs of this action (verification sends no key-pair operation);
    /// `None` sends every job of the run.
    pub only: Option<crate::cvm::Action>,
    /// How long the API may throttle every reply in a row before the run stops
    /// (resumable): a lasting `RequestLimitExceeded` must not retry forever.
    pub throttle_budget: Duration,
    /// How long a rotation's confirmation looks again at an instance whose Associate
    /// is still OPERATING before its old keys are kept (`--verify-wait`).
    pub confirm_wait: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            rate: 10.0,
            concurrency: 20,
            max_attempts: 10,
            max_errors: None,
            retry_base: delay::RETRY_BASE,
            retry_cap: delay::RETRY_CAP,
            throttle_delay: delay::THROTTLE_DELAY,
            seed: None,
            only: None,
            throttle_budget: THROTTLE_BUDGET,
            confirm_wait: Duration::from_secs(60),
        }
    }
}

/// Live numbers for progress displays; updated by the executor, read by anyone.
#[derive(Debug, Default)]
pub struct Counters {
    /// Valid pairs of the run.
    pub total_pairs: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Requests sent by this process.
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    /// Jobs waiting to be retried (after a Retry- or Throttle-class reply).
    pub retrying: AtomicU64,
    /// Retry-class failures.
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    /// Jobs split for isolation.
    pub splits: AtomicU64,
    /// Pair verdicts recorded by verification batches.
    pub verified: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why a run stopped before finishing; each is resumable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A Fatal-class error: nothing can succeed until a person acts.
    Fatal {
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// `--max-errors` was reached.
    MaxErrors { failed: u64 },
    /// Ctrl-C or another stop request.
    Interrupted,
    /// Another process took the run over (our heartbeat was stale).
    LeaseLost,
    /// Every reply was a throttle for longer than the budget: someone else is using
    /// the account's limit, or it was lowered.
    ThrottledTooLong { budget: Duration },
    /// A bug in keyfleet; what was recorded stays consistent and resume continues.
    Internal(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Fatal {
                code,
                message,
                request_id,
            } => {
                write!(f, "fatal API error {code}: {message}")?;
                if let Some(id) = request_id {
                    write!(f, " (RequestId {id})")?;
                }
                Ok(())
            }
            StopReason::MaxErrors { failed } => {
                write!(f, "--max-errors reached: {failed} pairs failed")
            }
            StopReason::Interrupted => f.write_str("interrupted"),
            StopReason::LeaseLost => f.write_str("another process took this run over"),
            StopReason::ThrottledTooLong { budget } => write!(
                f,
                "the API throttled every request for {} s (RequestLimitExceeded): another sender \
                 may be using this account's limit; resume when it has stopped",
                budget.as_secs()
            ),
            StopReason::Internal(what) => write!(f, "internal error: {what}"),
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run_id: i64,
    /// `None` when the run finished; otherwise why it stopped.
    pub stopped: Option<StopReason>,
    /// Unbind pairs (the input's) by status.
    pub pairs: PairCounts,
    /// A rotation's bind pairs (instance, new key) by status.
    pub binds: PairCounts,
    pub failures_by_code: BTreeMap<String, i64>,
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub splits: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// Requests per second achieved by this process.
    pub fn achieved_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// Execution failures: setup and storage, never a pair's outcome.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the database writer stopped: {0}")]
    Writer(String),
}

/// A request to stop dispatching (first Ctrl-C). Cloneable; any clone can trigger it.
#[derive(Debug, Clone)]
pub struct StopSignal {
    sender: Arc<watch::Sender<bool>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal {
            sender: Arc::new(watch::channel(false).0),
        }
    }
}

impl StopSignal {
    pub fn stop(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.sender.borrow()
    }

    /// Returns once a stop is requested.
    pub async fn stopped(&self) {
        let mut rx = self.sender.subscribe();
        // wait_for returns at once when already stopped; Err only if the sender is gone, which it is not.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Executes run `run_id` until every job is final or something stops it, pacing
/// each limiter key at `config.rate` through the database ([`DbLimiter`]), so that
/// every keyfleet process on it shares one limit per key. Unpaced (`rate` 0), the
/// database is not involved ([`LocalLimiter`], off).
pub async fn execute<A: Api>(
    store: &Store,
    run_id: i64,
    api: Arc<A>,
    config: &ExecConfig,
    counters: Arc<Counters>,
    stop: StopSignal,
) -> Result<Summary, ExecError> {
    if config.rate <= 0.0 {
        let limiter = Arc::new(LocalLimiter::new(0.0));
        return execute_with(store, run_id, api, limiter, config, counters, stop).await;
    }
    let limiter = DbLimiter::open(store, config.rate).await?;
    let result = execute_with(
        store,
        run_id,
        api,
        Arc::new(limiter.clone()),
        config,
        counters,
        stop,
    )
    .await;
    limiter.close().await;
    result
}

/// [`execute`] with the limiter given.
pub async fn execute_with<A: Api>(
    store: &Store,
    run_id: i64,
    api: Arc<A>,
    limiter: Arc<dyn Limiter>,
    config: &ExecConfig,
    counters: Arc<Counters>,
    stop: StopSignal,
) -> Result<Summary, ExecError> {
    let started = Instant::now();
    let lease = Lease::for_this_process();
    store
        .acquire_run(run_id, &lease, crate::store::queue::LEASE_STALE_AFTER)
        .await?;
    let outcome = drive(
        store,
        run_id,
        &lease,
        api,
        limiter,
        config,
        counters.clone(),
        stop,
    )
    .await;
    let stopped = outcome.as_ref().ok().cloned().flatten();
    if let (Ok(None), None) = (&outcome, config.only) {
        let stranded = store.end_stranded_holds(run_id).await?;
        if stranded > 0 {
            tracing::error!(
                run_id,
                stranded,
                "held unbinds had nothing left to release them: skipped, old keys kept"
            );
        }
    }
    // With `only`, the run is finished only if no job of another action is left.
    let others_open = match (&outcome, config.only) {
        (Ok(None), Some(_)) => store.open_jobs(run_id, None).await.unwrap_or(1),
        // A live run's instances waiting for a slot have no job yet: not finished.
        (Ok(None), None) => store.waiting_instances(run_id).await.unwrap_or(1),
        _ => 0,
    };
    let (state, reason) = match &outcome {
        Err(e) => (RunState::Stopped, Some(e.to_string())),
        Ok(Some(reason)) => (RunState::Stopped, Some(reason.to_string())),
        Ok(None) if others_open > 0 => (
            RunState::Stopped,
            Some(format!("{others_open} jobs not sent yet (keyfleet resume)")),
        ),
        Ok(None) => (RunState::Finished, None),
    };
    // Release even after an error, so that a resume does not wait for the lease.
    let released = store
        .release_run(run_id, &lease, state, reason.as_deref())
        .await;
    outcome?;
    released?;
    Ok(Summary {
        run_id,
        stopped,
        pairs: store.pair_counts(run_id).await?,
        binds: store.bind_counts(run_id).await?,
        failures_by_code: store.failures_by_code(run_id).await?,
        requests: Counters::get(&counters.requests),
        retries: Counters::get(&counters.retries),
        throttled: Counters::get(&counters.throttled),
        splits: Counters::get(&counters.splits),
        elapsed: started.elapsed(),
    })
}

/// A claimed job on its way to a lane. Its concurrency permit is taken once its
/// send slot has come: a lane waiting for its limiter holds no permit, so a backlog
/// of one API never keeps another API's lane from sending.
struct Claimed {
    job: QueuedJob,
    action: &'static dyn JobAction,
}

type WriteReply = oneshot::Sender<Result<Applied, String>>;

/// Shared state of one execution.
struct Shared<A> {
    api: Arc<A>,
    limiter: Arc<dyn Limiter>,
    config: ExecConfig,
    counters: Arc<Counters>,
    writer: mpsc::UnboundedSender<(Write, WriteReply)>,
    /// Set once dispatching must end; the reason is kept.
    stop_reason: Mutex<Option<StopReason>>,
    halted: AtomicBool,
    wake: Notify,
    /// Jobs handed to a lane and not yet recorded as finished (or given back), with
    /// the lane they are in.
    claimed: Mutex<Claims>,
    /// Requests in flight at most (`--concurrency`).
    permits: Arc<Semaphore>,
    waiting_retry: Mutex<HashSet<i64>>,
    rng: Mutex<StdRng>,
    failed_here: AtomicU64,
    writer_error: Mutex<Option<String>>,
    /// Since when every reply has been a throttle (`None`: the last one was not).
    throttled_since: Mutex<Option<Instant>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update; the data is plain.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<A> Shared<A> {
    fn halt(&self, reason: StopReason) {
        let mut slot = locked(&self.stop_reason);
        // The first reason wins: a fatal error is not overwritten by the interrupt that follows it.
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.halted.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    fn is_halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    /// The job is no longer this process's to send (recorded, or given back).
    fn release(&self, job_id: i64) {
        locked(&self.claimed).release(job_id);
        self.wake.notify_waiters();
    }

    fn writer_failed(&self, error: String) {
        tracing::error!(%error, "could not record to the database; stopping");
        *locked(&self.writer_error) = Some(error);
        self.halt(StopReason::Interrupted);
    }

    async fn write(&self, write: Write) -> Result<Applied, String> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((write, tx))
            .map_err(|_| "writer is gone".to_string())?;
        rx.await
            .map_err(|_| "writer dropped the reply".to_string())?
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive<A: Api>(
    store: &Store,
    run_id: i64,
    lease: &Lease,
    api: Arc<A>,
    limiter: Arc<dyn Limiter>,
    config: &ExecConfig,
    counters: Arc<Counters>,
    stop: StopSignal,
) -> Result<Option<StopReason>, ExecError> {
    let requeued = store.recover_in_flight(run_id).await?;
    if requeued > 0 {
        tracing::warn!(
            run_id,
            requeued,
            "jobs whose outcome was not recorded (crash or kill) are sent again"
        );
    }
    store.mark_running(run_id).await?;
    let counts = store.pair_counts(run_id).await?;
    counters
        .total_pairs
        .store(counts.valid() as u64, Ordering::Relaxed);
    counters
        .succeeded
        .store(counts.succeeded as u64, Ordering::Relaxed);
    counters
        .failed
        .store(counts.failed as u64, Ordering::Relaxed);

    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(run_writer(store.clone(), writer_rx));
    let shared = Arc::new(Shared {
        api,
        limiter,
        config: config.clone(),
        counters,
        writer: writer_tx,
        stop_reason: Mutex::new(None),
        halted: AtomicBool::new(false),
        wake: Notify::new(),
        claimed: Mutex::new(Claims::default()),
        permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
        waiting_retry: Mutex::new(HashSet::new()),
        rng: Mutex::new(
            config
                .seed
                .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64),
        ),
        failed_here: AtomicU64::new(0),
        writer_error: Mutex::new(None),
        throttled_since: Mutex::new(None),
    });

    let heartbeat = tokio::spawn(keep_lease(
        store.clone(),
        run_id,
        lease.clone(),
        shared.clone(),
    ));
    let interrupt = {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.stopped().await;
            shared.halt(StopReason::Interrupted);
        })
    };

    let concurrency = config.concurrency.max(1);
    let mut lanes = Lanes::default();
    let result = dispatch(store, run_id, &shared, &mut lanes, concurrency).await;
    if result.is_err() {
        shared.halt(StopReason::Interrupted);
    }
    lanes.close().await;

    // Let every request in flight finish and be recorded (each is bounded by the client's timeout).
    let permits = shared.permits.clone();
    let _all = permits.acquire_many(concurrency as u32).await;
    heartbeat.abort();
    interrupt.abort();
    let writer_error = locked(&shared.writer_error).take();
    let reason = locked(&shared.stop_reason).take();
    drop(shared);
    let _ = writer.await;
    result?;
    if let Some(error) = writer_error {
        return Err(ExecError::Writer(error));
    }
    Ok(reason)
}

/// One lane per limiter key: a channel into a task that paces that key's sends.
#[derive(Default)]
struct Lanes {
    senders: HashMap<LimiterKey, mpsc::UnboundedSender<Claimed>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Lanes {
    fn send<A: Api>(&mut self, shared: &Arc<Shared<A>>, key: LimiterKey, claimed: Claimed) {
        let sender = self.senders.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.tasks.push(tokio::spawn(lane(shared.clone(), key, rx)));
            tx
        });
        if let Err(mpsc::error::SendError(claimed)) = sender.send(claimed) {
            // The lane ended (a database failure stopped it): give the job back.
            shared.release(claimed.job.id);
        }
    }

    /// No more jobs: each lane finishes what it holds (or gives it back on a halt).
    async fn close(self) {
        drop(self.senders);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The jobs handed to lanes and not yet finished, by lane.
#[derive(Default)]
struct Claims {
    lane_of: HashMap<i64, LimiterKey>,
    per_lane: HashMap<LimiterKey, usize>,
}

impl Claims {
    fn len(&self) -> usize {
        self.lane_of.len()
    }

    fn contains(&self, job_id: i64) -> bool {
        self.lane_of.contains_key(&job_id)
    }

    fn in_lane(&self, key: &LimiterKey) -> usize {
        self.per_lane.get(key).copied().unwrap_or(0)
    }

    /// Claims the job for `key`'s lane unless that lane already holds `depth` jobs.
    fn claim(&mut self, job_id: i64, key: &LimiterKey, depth: usize) -> bool {
        if self.contains(job_id) || self.in_lane(key) >= depth {
            return false;
        }
        self.lane_of.insert(job_id, key.clone());
        *self.per_lane.entry(key.clone()).or_default() += 1;
        true
    }

    fn release(&mut self, job_id: i64) {
        if let Some(key) = self.lane_of.remove(&job_id)
            && let Some(n) = self.per_lane.get_mut(&key)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// Claims due jobs and hands them to their lanes until the queue is empty or a stop.
///
/// Each lane holds at most `2 x concurrency` jobs; the due-jobs query leaves out the
/// (action, region) routes of lanes that still hold `concurrency` or more, so a
/// backlog of one API (a rotation's thousand Associate jobs) or of one endpoint
/// never hides the jobs of another (the Disassociate jobs its confirmations release,
/// another region's). The queue is asked again once some lane is down to
/// `concurrency` jobs, or every [`REQUERY_EVERY`] for lanes not seen yet: one query
/// serves many jobs, not one per job finished.
async fn dispatch<A: Api>(
    store: &Store,
    run_id: i64,
    shared: &Arc<Shared<A>>,
    lanes: &mut Lanes,
    concurrency: usize,
) -> Result<(), ExecError> {
    let depth = 2 * concurrency;
    let refill = concurrency;
    let mut routes: HashMap<(Action, String), LimiterKey> = HashMap::new();
    let mut asked: Option<Instant> = None;
    loop {
        if shared.is_halted() {
            return Ok(());
        }
        // Registered before looking, so a job released meanwhile wakes the wait below.
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (claimed, full, hungry) = {
            let claims = locked(&shared.claimed);
            // Supplied enough: left out of the query, so that its backlog (the oldest
            // jobs, returned first) does not take the rows another lane needs.
            let full: Vec<(Action, String)> = routes
                .iter()
                .filter(|(_, key)| claims.in_lane(key) >= refill)
                .map(|(route, _)| route.clone())
                .collect();
            let hungry = routes.values().any(|key| claims.in_lane(key) < refill)
                || asked.is_none_or(|at| at.elapsed() >= REQUERY_EVERY);
            (claims.len(), full, hungry)
        };
        if !hungry {
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(REQUERY_EVERY) => {}
            }
            continue;
        }
        asked = Some(Instant::now());
        let now = now_ms();
        let due = store
            .due_jobs_except(
                run_id,
                shared.config.only,
                now,
                (concurrency * 2 + claimed) as i64,
                &full,
            )
            .await?;
        let (mut seen, mut handed) = (0, 0);
        for job in due {
            if locked(&shared.claimed).contains(job.id) {
                continue;
            }
            seen += 1;
            let Some(action) = job_action(job.kind) else {
                shared.halt(StopReason::Internal(format!(
                    "job {} is a {} job, which this version cannot send",
                    job.id, job.action
                )));
                return Ok(());
            };
            let key = action.limiter_key(&job, &*shared.api);
            routes
                .entry((job.action, job.region.clone()))
                .or_insert_with(|| key.clone());
            // The queue does not change under us (this process alone sends the run's
            // jobs; one skipped meanwhile is refused when its lane starts it).
            if !locked(&shared.claimed).claim(job.id, &key, depth) {
                continue;
            }
            lanes.send(shared, key, Claimed { job, action });
            handed += 1;
        }
        if handed > 0 {
            continue;
        }
        let wait = if seen > 0 {
            // Due jobs, all for full lanes: a job finishing wakes us.
            Duration::from_secs(1)
        } else {
            let next_due = store
                .next_due_after(run_id, shared.config.only, now)
                .await?;
            if claimed == 0 && full.is_empty() && next_due.is_none() {
                if store.open_jobs(run_id, shared.config.only).await? == 0 {
                    return Ok(());
                }
                // Jobs marked in flight with no request of ours behind them: this
                // process owns the run, so they are orphans. Queue them again
                // rather than wait for replies that will never come.
                let orphans = store.recover_in_flight(run_id).await?;
                if orphans == 0 {
                    // Open jobs, none due, none in flight, none falling due: they
                    // wait for prerequisites that can no longer succeed.
                    shared.halt(StopReason::Internal(
                        "queued jobs wait for jobs that will never succeed".into(),
                    ));
                    return Ok(());
                }
                tracing::error!(
                    orphans,
                    "jobs in flight with no request behind them were queued again"
                );
                continue;
            }
            // Sleep until the next job falls due or a reply changes the queue.
            match next_due {
                Some(due) => Duration::from_millis((due - now_ms()).clamp(1, 1000) as u64),
                None => Duration::from_secs(1),
            }
        };
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Resolves once dispatching must end.
async fn halted<A>(shared: &Shared<A>) {
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

/// A lane: starts its key's jobs in order, each when the limiter gives a slot.
/// Unpaced (benchmarks), whatever has queued up starts as one wave and one commit.
async fn lane<A: Api>(
    shared: Arc<Shared<A>>,
    key: LimiterKey,
    mut rx: mpsc::UnboundedReceiver<Claimed>,
) {
    while let Some(first) = rx.recv().await {
        let mut wave = vec![first];
        if shared.limiter.is_off(&key) {
            while let Ok(more) = rx.try_recv() {
                wave.push(more);
            }
        }
        if shared.is_halted() {
            for claimed in wave {
                shared.release(claimed.job.id);
            }
            continue;
        }
        if let Err(error) = start_wave(&shared, &key, wave).await {
            shared.writer_failed(error);
        }
    }
}

/// Commits the attempt rows of a wave, then sends each request when the limiter
/// allows. A halt first withdraws the attempts not sent.
async fn start_wave<A: Api>(
    shared: &Arc<Shared<A>>,
    key: &LimiterKey,
    wave: Vec<Claimed>,
) -> Result<(), String> {
    let started_at = now_ms();
    let replies: Vec<_> = wave
        .iter()
        .map(|claimed| {
            let (tx, rx) = oneshot::channel();
            let start = Write::Start {
                job_id: claimed.job.id,
                started_at,
            };
            shared
                .writer
                .send((start, tx))
                .map_err(|_| "writer is gone".to_string())?;
            Ok(rx)
        })
        .collect::<Result<_, String>>()?;
    let mut started = Vec::with_capacity(wave.len());
    let mut failure = None;
    for (claimed, reply) in wave.into_iter().zip(replies) {
        let attempt = match reply.await {
            Ok(Ok(Applied::Started { attempt_id, .. })) => Ok(attempt_id),
            Ok(Ok(Applied::NotQueued)) => {
                shared.release(claimed.job.id);
                continue;
            }
            Ok(Ok(_)) => Err("unexpected reply to an attempt start".to_string()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("no reply to an attempt start".to_string()),
        };
        match attempt {
            Ok(attempt_id) => started.push((claimed, attempt_id)),
            Err(e) => {
                shared.release(claimed.job.id);
                failure = Some(e);
            }
        }
    }
    if let Some(failure) = failure {
        for (claimed, attempt_id) in started {
            let _ = shared
                .write(Write::Withdraw {
                    attempt_id,
                    job_id: claimed.job.id,
                })
                .await;
            shared.release(claimed.job.id);
        }
        return Err(failure);
    }
    let mut started = started.into_iter();
    while let Some((claimed, attempt_id)) = started.next() {
        // A permit first (requests in flight are bounded), then the send slot: a lane
        // holds at most one permit while it waits for its limiter.
        let permit = tokio::select! {
            permit = shared.permits.clone().acquire_owned() => permit.ok(),
            _ = halted(shared) => None,
        };
        let slot = match permit {
            Some(permit) => tokio::select! {
                slot = shared.limiter.reserve(key) => (!shared.is_halted()).then_some((slot, permit)),
                _ = halted(shared) => None,
            },
            None => None,
        };
        let Some((slot, permit)) = slot else {
            // Never sent: withdraw the attempt rows, so nothing looks uncertain.
            for (claimed, attempt_id) in std::iter::once((claimed, attempt_id)).chain(started) {
                shared
                    .write(Write::Withdraw {
                        attempt_id,
                        job_id: claimed.job.id,
                    })
                    .await?;
                shared.release(claimed.job.id);
            }
            return Ok(());
        };
        let sent_at = now_ms() - slot.elapsed().as_millis() as i64;
        if locked(&shared.waiting_retry).remove(&claimed.job.id) {
            shared.counters.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let Claimed { job, action } = claimed;
        let job_id = job.id;
        let request = {
            let shared = shared.clone();
            let key = key.clone();
            tokio::spawn(async move {
                send_and_record(&shared, action, job, attempt_id, &key, sent_at).await;
            })
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            // A request task that panicked (a bug) leaves its attempt open: stop, so
            // that resume sends it again, rather than wait for it forever.
            if let Err(failure) = request.await
                && failure.is_panic()
            {
                shared.halt(StopReason::Internal(format!(
                    "a request task panicked: {failure}"
                )));
            }
            shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            shared.release(job_id);
            drop(permit);
            shared.wake.notify_waiters();
        });
    }
    Ok(())
}

/// Sends one attempt, decides what its reply means, applies the effects, records it.
async fn send_and_record<A: Api>(
    shared: &Arc<Shared<A>>,
    action: &'static dyn JobAction,
    job: QueuedJob,
    attempt_id: i64,
    key: &LimiterKey,
    sent_at: i64,
) {
    let call = action.call(&job);
    let sent = Instant::now();
    let reply = shared.api.call(&call).await;
    let latency_ms = sent.elapsed().as_millis() as i64;
    let finished_at = now_ms();
    let accepted = match reply {
        Ok(reply) => match action.read(&job, &reply) {
            Ok(proof) => Ok((proof, reply)),
            Err(detail) => Err(Refused::bad_body(&reply, detail)),
        },
        Err(refused) => Err(refused),
    };
    let (outcome, http_status, request_id) = match accepted {
        Ok((proof, reply)) => {
            shared
                .limiter
                .feedback_sent(key, Some(sent_at), Feedback::Passed);
            *locked(&shared.throttled_since) = None;
            let request_id = reply.request_id.clone();
            let outcome = match proof {
                Proof::Accepted => Outcome::Succeeded { request_id },
                Proof::Observed {
                    verified,
                    recheck_at,
                    keys,
                    seen,
                } => Outcome::Observed {
                    request_id,
                    verified,
                    recheck_at,
                    keys,
                    seen,
                },
            };
            (outcome, Some(reply.http_status), Some(reply.request_id))
        }
        Err(refused) => {
            let outcome =
                refused_outcome(shared, action, &job, &refused, key, sent_at, finished_at);
            (outcome, refused.http_status, refused.request_id)
        }
    };
    let finish = Finish {
        attempt_id,
        job_id: job.id,
        kind: job.kind,
        follow_up: FollowUp {
            max_attempts: i64::from(shared.config.max_attempts),
            confirm_wait_ms: shared.config.confirm_wait.as_millis() as i64,
        },
        finished_at,
        sent_at,
        latency_ms,
        http_status,
        request_id,
        endpoint: Some(key.endpoint.clone()),
        outcome,
    };
    record(shared, &job, finish).await;
}

/// Decides what a refusal means and applies its effects (counters, pacing, halt).
fn refused_outcome<A>(
    shared: &Shared<A>,
    action: &'static dyn JobAction,
    job: &QueuedJob,
    refused: &Refused,
    key: &LimiterKey,
    sent_at: i64,
    now: i64,
) -> Outcome {
    let (outcome, effects) = {
        let mut rng = locked(&shared.rng);
        decide::decide(action, job, refused, &shared.config, &mut *rng, now)
    };
    tracing::debug!(job = job.id, action = %job.action, code = %refused.code, "request refused");
    let counters = &shared.counters;
    if effects.retried {
        counters.retries.fetch_add(1, Ordering::Relaxed);
    }
    if effects.feedback != Feedback::Passed {
        counters.throttled.fetch_add(1, Ordering::Relaxed);
    }
    if effects.split {
        counters.splits.fetch_add(1, Ordering::Relaxed);
    }
    shared
        .limiter
        .feedback_sent(key, Some(sent_at), effects.feedback);
    if let Some(reason) = effects.halt {
        shared.halt(reason);
    }
    let mut since = locked(&shared.throttled_since);
    if effects.feedback == Feedback::Passed {
        *since = None;
    } else {
        let since = *since.get_or_insert_with(Instant::now);
        if since.elapsed() >= shared.config.throttle_budget {
            shared.halt(StopReason::ThrottledTooLong {
                budget: shared.config.throttle_budget,
            });
        }
    }
    outcome
}

/// Records an attempt's end, then counts what it did.
async fn record<A>(shared: &Arc<Shared<A>>, job: &QueuedJob, finish: Finish) {
    let outcome = finish.outcome.clone();
    if let Err(e) = shared.write(Write::Finish(Box::new(finish))).await {
        // The outcome is not recorded: the attempt stays open and is resent on resume.
        shared.writer_failed(e);
        return;
    }
    let pairs = job.pair_count as u64;
    let counters = &shared.counters;
    match &outcome {
        Outcome::Succeeded { .. } => {
            counters.succeeded.fetch_add(pairs, Ordering::Relaxed);
        }
        Outcome::Retry { give_up: false, .. } | Outcome::Throttled { .. } => {
            if locked(&shared.waiting_retry).insert(job.id) {
                counters.retrying.fetch_add(1, Ordering::Relaxed);
            }
        }
        Outcome::Retry { give_up: true, .. } | Outcome::Fail { .. } => {
            counters.failed.fetch_add(pairs, Ordering::Relaxed);
            let failed = shared.failed_here.fetch_add(pairs, Ordering::Relaxed) + pairs;
            if let Some(limit) = shared.config.max_errors {
                let total = Counters::get(&counters.total_pairs).max(1);
                let reached = match limit {
                    MaxErrors::Pairs(n) => failed >= n,
                    MaxErrors::Percent(p) => failed as f64 * 100.0 / total as f64 >= p,
                };
                if reached {
                    shared.halt(StopReason::MaxErrors { failed });
                }
            }
        }
        Outcome::Observed { verified, .. } => {
            counters
                .verified
                .fetch_add(verified.len() as u64, Ordering::Relaxed);
        }
        Outcome::Split { .. } | Outcome::Fatal { .. } => {}
    }
}

/// The single database writer: commits whatever writes have queued up, together.
async fn run_writer(store: Store, mut rx: mpsc::UnboundedReceiver<(Write, WriteReply)>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_WRITES_PER_COMMIT).await > 0 {
        let writes: Vec<Write> = batch.iter().map(|(w, _)| w.clone()).collect();
        match store.apply(&writes).await {
            Ok(applied) => {
                for ((_, reply), result) in batch.drain(..).zip(applied) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Refreshes the lease; halts dispatching if another process took the run.
async fn keep_lease<A>(store: Store, run_id: i64, lease: Lease, shared: Arc<Shared<A>>) {
    let mut tick = tokio::time::interval(crate::store::queue::HEARTBEAT_EVERY);
    loop {
        tick.tick().await;
        match store.heartbeat(run_id, &lease).await {
            Ok(true) => {}
            Ok(false) => {
                shared.halt(StopReason::LeaseLost);
                return;
            }
            // A busy database delays one heartbeat; the lease is good for 30 s.
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests;
