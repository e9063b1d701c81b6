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

mod action;
mod config;
mod decide;
mod dispatch;
mod isolate;
pub(crate) mod pacer;
mod send;
mod shared;

use std::collections::HashSet;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::store::queue::Lease;
use crate::store::{RunState, Store};
pub use action::{Api, Call, JobAction, Proof, Refused, Reply, job_action};
pub use config::{
    AccountFailure, Counters, ExecConfig, ExecError, MaxErrors, StopReason, StopSignal, Summary,
};
use dispatch::{Lanes, dispatch};
pub use pacer::{DbLimiter, Feedback, Limiter, LimiterKey, LocalLimiter};
use send::run_writer;
use shared::{Claims, Shared, locked};

/// Continuous throttling allowed before a run stops (see `ExecConfig::throttle_budget`).
pub const THROTTLE_BUDGET: Duration = Duration::from_secs(15 * 60);

/// How often the dispatcher asks the queue for due jobs while every lane it knows is
/// well supplied (for jobs of lanes it has not seen yet: a rotation's first unbinds).
const REQUERY_EVERY: Duration = Duration::from_millis(200);

/// Writes committed together at most; more wait for the next commit.
const MAX_WRITES_PER_COMMIT: usize = 512;

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
        run_id,
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
        fenced: Mutex::new(Vec::new()),
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
    let fenced = std::mem::take(&mut *locked(&shared.fenced));
    // Refused accounts are the reason only when nothing else stopped the run.
    let reason = locked(&shared.stop_reason)
        .take()
        .or_else(|| (!fenced.is_empty()).then_some(StopReason::Accounts(fenced)));
    drop(shared);
    let _ = writer.await;
    result?;
    if let Some(error) = writer_error {
        return Err(ExecError::Writer(error));
    }
    Ok(reason)
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
