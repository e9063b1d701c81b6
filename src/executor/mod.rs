//! The executor: drains a run's durable queue through the API at the allowed rate.
//!
//! One dispatcher claims due jobs, paces their starts ([`pacer`]), and spawns one
//! task per request, bounded by a semaphore (`--concurrency`). Every database write
//! goes through one writer task that commits whatever has queued up in a single
//! transaction, so attempt rows are durable before their requests leave and
//! outcomes after their replies, at one fsync per batch. A job whose attempt has no
//! outcome after a crash is sent again on resume ([`Store::recover_in_flight`]).

pub mod isolate;
pub mod pacer;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use crate::delay;
use crate::store::queue::{
    Applied, ErrorInfo, Finish, Lease, LeaseError, Outcome, PairCounts, QueuedJob, Write,
};
use crate::store::{Store, StoreError, now_ms};
use crate::taxonomy::{ErrorClass, classify};
use pacer::Pacer;

/// Writes committed together at most; more wait for the next commit.
const MAX_WRITES_PER_COMMIT: usize = 512;

/// One request as the executor asks the API for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub region: String,
    pub instance_ids: Vec<String>,
    pub key_ids: Vec<String>,
    pub force_stop: bool,
}

/// A success reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub request_id: String,
    pub http_status: u16,
}

/// A failed request: an API error reply or a transport failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub http_status: Option<u16>,
    /// No reply was read (connection, timeout, malformed body).
    pub transport: bool,
}

/// What the executor needs from an API client: one unbind request. The real
/// implementation is [`crate::api::CvmClient`]; tests may substitute their own.
pub trait UnbindApi: Send + Sync + 'static {
    fn unbind(&self, request: &Request) -> impl Future<Output = Result<Accepted, Refused>> + Send;
}

impl UnbindApi for crate::api::CvmClient {
    async fn unbind(&self, request: &Request) -> Result<Accepted, Refused> {
        self.disassociate_instances_key_pairs(
            &request.region,
            &request.instance_ids,
            &request.key_ids,
            request.force_stop,
        )
        .await
        .map(|success| Accepted {
            request_id: success.request_id,
            http_status: success.http_status,
        })
        .map_err(|error| Refused {
            code: error.code(),
            message: error.message(),
            request_id: error.request_id().map(str::to_string),
            http_status: error.http_status(),
            transport: matches!(error, crate::api::CallError::Transport(_)),
        })
    }
}

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
    /// Requests per second at most; 0 turns pacing off.
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
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run_id: i64,
    /// `None` when the run finished; otherwise why it stopped.
    pub stopped: Option<StopReason>,
    pub pairs: PairCounts,
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

    async fn stopped(&self) {
        let mut rx = self.sender.subscribe();
        // wait_for returns at once when already stopped; Err only if the sender is gone, which it is not.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Executes run `run_id` until every job is final or something stops it.
pub async fn execute<A: UnbindApi>(
    store: &Store,
    run_id: i64,
    api: Arc<A>,
    config: &ExecConfig,
    counters: Arc<Counters>,
    stop: StopSignal,
) -> Result<Summary, ExecError> {
    let started = Instant::now();
    let lease = Lease::for_this_process();
    store
        .acquire_run(run_id, &lease, crate::store::queue::LEASE_STALE_AFTER)
        .await?;
    let outcome = drive(store, run_id, &lease, api, config, counters.clone(), stop).await;
    let stopped = outcome.as_ref().ok().cloned().flatten();
    let (state, reason) = match &outcome {
        Err(e) => ("stopped", Some(e.to_string())),
        Ok(Some(reason)) => ("stopped", Some(reason.to_string())),
        Ok(None) => ("finished", None),
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
        failures_by_code: store.failures_by_code(run_id).await?,
        requests: Counters::get(&counters.requests),
        retries: Counters::get(&counters.retries),
        throttled: Counters::get(&counters.throttled),
        splits: Counters::get(&counters.splits),
        elapsed: started.elapsed(),
    })
}

/// Shared state of one execution.
struct Shared<A> {
    api: Arc<A>,
    config: ExecConfig,
    counters: Arc<Counters>,
    pacer: Pacer,
    writer: mpsc::UnboundedSender<(Write, oneshot::Sender<Result<Applied, String>>)>,
    /// Set once dispatching must end; the reason is kept.
    stop_reason: Mutex<Option<StopReason>>,
    halted: AtomicBool,
    wake: Notify,
    waiting_retry: Mutex<HashSet<i64>>,
    rng: Mutex<StdRng>,
    failed_here: AtomicU64,
    writer_error: Mutex<Option<String>>,
}

impl<A> Shared<A> {
    fn halt(&self, reason: StopReason) {
        let mut slot = self.stop_reason.lock().unwrap_or_else(|e| e.into_inner());
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

    async fn write(&self, write: Write) -> Result<Applied, String> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((write, tx))
            .map_err(|_| "writer is gone".to_string())?;
        rx.await
            .map_err(|_| "writer dropped the reply".to_string())?
    }
}

async fn drive<A: UnbindApi>(
    store: &Store,
    run_id: i64,
    lease: &Lease,
    api: Arc<A>,
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
        config: config.clone(),
        counters,
        pacer: Pacer::new(config.rate),
        writer: writer_tx,
        stop_reason: Mutex::new(None),
        halted: AtomicBool::new(false),
        wake: Notify::new(),
        waiting_retry: Mutex::new(HashSet::new()),
        rng: Mutex::new(
            config
                .seed
                .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64),
        ),
        failed_here: AtomicU64::new(0),
        writer_error: Mutex::new(None),
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
    let permits = Arc::new(Semaphore::new(concurrency));
    let result = dispatch(store, run_id, &shared, &permits, concurrency).await;

    // Let every request in flight finish and be recorded (each is bounded by the client's timeout).
    let _all = permits.acquire_many(concurrency as u32).await;
    heartbeat.abort();
    interrupt.abort();
    let writer_error = shared
        .writer_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let reason = shared
        .stop_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    drop(shared);
    let _ = writer.await;
    result?;
    if let Some(error) = writer_error {
        return Err(ExecError::Writer(error));
    }
    Ok(reason)
}

/// Claims due jobs and starts their requests until the queue is empty or a stop.
async fn dispatch<A: UnbindApi>(
    store: &Store,
    run_id: i64,
    shared: &Arc<Shared<A>>,
    permits: &Arc<Semaphore>,
    concurrency: usize,
) -> Result<(), ExecError> {
    loop {
        if shared.is_halted() {
            return Ok(());
        }
        let jobs = store
            .due_jobs(run_id, now_ms(), (concurrency * 2) as i64)
            .await?;
        if jobs.is_empty() {
            let in_flight = concurrency - permits.available_permits();
            if in_flight == 0 && store.open_jobs(run_id).await? == 0 {
                return Ok(());
            }
            // Sleep until the next job falls due or a reply changes the queue.
            let wait = match store.next_due_at(run_id).await? {
                Some(due) => Duration::from_millis((due - now_ms()).clamp(1, 1000) as u64),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let mut jobs = jobs.into_iter().peekable();
        while jobs.peek().is_some() {
            let first = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.map_err(|e| ExecError::Writer(e.to_string()))?,
                _ = halted(shared) => return Ok(()),
            };
            let mut wave = vec![(jobs.next().expect("peeked"), first)];
            // Unpaced (benchmarks), every free slot joins one wave and one commit.
            // Paced, a wave is one request: its attempt row is committed first and the
            // pacer is waited for last, so commit latency never bunches the sends.
            if shared.pacer.is_off() {
                while jobs.peek().is_some() {
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => wave.push((jobs.next().expect("peeked"), permit)),
                        Err(_) => break,
                    }
                }
            }
            if !start_wave(shared, wave).await? {
                return Ok(());
            }
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

/// Commits the attempt rows of a wave, then sends each request when the pacer allows.
/// Returns false when a halt came first; the attempts not sent are withdrawn.
async fn start_wave<A: UnbindApi>(
    shared: &Arc<Shared<A>>,
    wave: Vec<(QueuedJob, tokio::sync::OwnedSemaphorePermit)>,
) -> Result<bool, ExecError> {
    let started_at = now_ms();
    let replies: Vec<_> = wave
        .iter()
        .map(|(job, _)| {
            let (tx, rx) = oneshot::channel();
            shared
                .writer
                .send((
                    Write::Start {
                        job_id: job.id,
                        started_at,
                    },
                    tx,
                ))
                .map_err(|_| ExecError::Writer("writer is gone".into()))?;
            Ok(rx)
        })
        .collect::<Result<_, ExecError>>()?;
    let mut started = Vec::with_capacity(wave.len());
    for ((job, permit), reply) in wave.into_iter().zip(replies) {
        match reply.await {
            Ok(Ok(Applied::Started { attempt_id, .. })) => started.push((job, permit, attempt_id)),
            Ok(Ok(_)) => {
                return Err(ExecError::Writer(
                    "unexpected reply to an attempt start".into(),
                ));
            }
            Ok(Err(e)) => return Err(ExecError::Writer(e)),
            Err(_) => return Err(ExecError::Writer("no reply to an attempt start".into())),
        }
    }
    let mut started = started.into_iter();
    while let Some((job, permit, attempt_id)) = started.next() {
        let go = tokio::select! {
            _ = shared.pacer.ready() => !shared.is_halted(),
            _ = halted(shared) => false,
        };
        if !go {
            // Never sent: withdraw the attempt rows, so nothing looks uncertain.
            for (job, _, attempt_id) in std::iter::once((job, permit, attempt_id)).chain(started) {
                shared
                    .write(Write::Withdraw {
                        attempt_id,
                        job_id: job.id,
                    })
                    .await
                    .map_err(ExecError::Writer)?;
            }
            return Ok(false);
        }
        if shared
            .waiting_retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.id)
        {
            shared.counters.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let (leaving, left) = oneshot::channel();
        let task_shared = shared.clone();
        tokio::spawn(async move {
            let shared = task_shared;
            shared.pacer.sending();
            let _ = leaving.send(());
            send_and_record(&shared, job, attempt_id).await;
            shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            shared.wake.notify_waiters();
        });
        if !shared.pacer.is_off() {
            // The next request is paced from the moment this one really leaves.
            let _ = left.await;
        }
    }
    Ok(true)
}

/// Sends one attempt, decides what its reply means, and records it.
async fn send_and_record<A: UnbindApi>(shared: &Arc<Shared<A>>, job: QueuedJob, attempt_id: i64) {
    let request = Request {
        region: job.region.clone(),
        instance_ids: job.instance_ids.clone(),
        key_ids: job.key_ids.clone(),
        force_stop: job.force_stop,
    };
    let sent = Instant::now();
    let reply = shared.api.unbind(&request).await;
    let latency_ms = sent.elapsed().as_millis() as i64;
    let finished_at = now_ms();
    let (outcome, request_id, http_status) = match reply {
        Ok(accepted) => {
            shared.pacer.succeeded();
            (
                Outcome::Succeeded {
                    request_id: accepted.request_id.clone(),
                },
                Some(accepted.request_id),
                Some(accepted.http_status),
            )
        }
        Err(refused) => {
            let outcome = decide(shared, &job, &refused, finished_at);
            (outcome, refused.request_id, refused.http_status)
        }
    };
    let pairs = job.pair_count as u64;
    let finish = Finish {
        attempt_id,
        job_id: job.id,
        finished_at,
        latency_ms,
        http_status,
        request_id,
        outcome: outcome.clone(),
    };
    if let Err(e) = shared.write(Write::Finish(finish)).await {
        // The outcome is not recorded: the attempt stays open and is resent on resume.
        *shared
            .writer_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
        shared.halt(StopReason::Interrupted);
        tracing::error!(job = job.id, error = %e, "could not record an outcome; stopping");
        return;
    }
    let counters = &shared.counters;
    match &outcome {
        Outcome::Succeeded { .. } => {
            counters.succeeded.fetch_add(pairs, Ordering::Relaxed);
        }
        Outcome::Retry { give_up: false, .. } | Outcome::Throttled { .. } => {
            if shared
                .waiting_retry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job.id)
            {
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
        Outcome::Split { .. } | Outcome::Fatal { .. } => {}
    }
}

/// What a refused request means for its job.
fn decide<A>(shared: &Shared<A>, job: &QueuedJob, refused: &Refused, now: i64) -> Outcome {
    let error = ErrorInfo {
        code: refused.code.clone(),
        message: refused.message.clone(),
    };
    let class = classify(&refused.code);
    tracing::debug!(job = job.id, code = %refused.code, %class, "request refused");
    match class {
        ErrorClass::Retry => {
            shared.counters.retries.fetch_add(1, Ordering::Relaxed);
            let failures = job.attempts as u32 + 1;
            let give_up = failures >= shared.config.max_attempts;
            if give_up
                && isolate::is_instance_condition(&refused.code)
                && let Some(children) = isolate::split(
                    &job.instance_ids,
                    &job.key_ids,
                    &refused.code,
                    &refused.message,
                )
            {
                // One instance stuck in an operation must not fail the rest of its batch.
                shared.counters.splits.fetch_add(1, Ordering::Relaxed);
                return Outcome::Split { error, children };
            }
            let wait = {
                let mut rng = shared.rng.lock().unwrap_or_else(|e| e.into_inner());
                delay::retry_delay_with(
                    failures,
                    shared.config.retry_base,
                    shared.config.retry_cap,
                    &mut *rng,
                )
            };
            Outcome::Retry {
                error,
                transport: refused.transport,
                next_attempt_at: now + wait.as_millis() as i64,
                give_up,
            }
        }
        ErrorClass::Throttle => {
            shared.counters.throttled.fetch_add(1, Ordering::Relaxed);
            shared.pacer.throttled();
            Outcome::Throttled {
                error,
                next_attempt_at: now + shared.config.throttle_delay.as_millis() as i64,
            }
        }
        ErrorClass::Isolate => match isolate::split(
            &job.instance_ids,
            &job.key_ids,
            &refused.code,
            &refused.message,
        ) {
            Some(children) => {
                shared.counters.splits.fetch_add(1, Ordering::Relaxed);
                Outcome::Split { error, children }
            }
            None => Outcome::Fail { error },
        },
        ErrorClass::Fatal => {
            shared.halt(StopReason::Fatal {
                code: refused.code.clone(),
                message: refused.message.clone(),
                request_id: refused.request_id.clone(),
            });
            Outcome::Fatal { error }
        }
    }
}

/// The single database writer: commits whatever writes have queued up, together.
async fn run_writer(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<(Write, oneshot::Sender<Result<Applied, String>>)>,
) {
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
