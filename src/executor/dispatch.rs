//! The dispatcher: claims due jobs and hands each to the lane of its limiter key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::store::queue::Route;
use crate::store::{Store, now_ms};

use super::REQUERY_EVERY;
use super::action::{Api, job_action};
use super::config::{ExecError, StopReason};
use super::pacer::LimiterKey;
use super::send::start_wave;
use super::shared::{Claimed, Shared, locked};

/// One lane per limiter key: a channel into a task that paces that key's sends.
#[derive(Default)]
pub(super) struct Lanes {
    pub(super) senders: HashMap<LimiterKey, mpsc::UnboundedSender<Claimed>>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
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
    pub(super) async fn close(self) {
        drop(self.senders);
        for task in self.tasks {
            let _ = task.await;
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
pub(super) async fn dispatch<A: Api>(
    store: &Store,
    run_id: i64,
    shared: &Arc<Shared<A>>,
    lanes: &mut Lanes,
    concurrency: usize,
) -> Result<(), ExecError> {
    let depth = 2 * concurrency;
    let refill = concurrency;
    let mut routes: HashMap<Route, LimiterKey> = HashMap::new();
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
            let full: Vec<Route> = routes
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
        let fenced = shared.fenced_accounts();
        let due = store
            .due_jobs_except(
                run_id,
                shared.config.only,
                now,
                (concurrency * 2 + claimed) as i64,
                &full,
                &fenced,
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
            routes.entry(Route::of(&job)).or_insert_with(|| key.clone());
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
                .next_due_after(run_id, shared.config.only, now, &fenced)
                .await?;
            if claimed == 0 && full.is_empty() && next_due.is_none() {
                if store
                    .open_jobs_outside(run_id, shared.config.only, &fenced)
                    .await?
                    == 0
                {
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

/// A lane: starts its key's jobs in order, each when the limiter gives a slot.
/// Unpaced (benchmarks), whatever has queued up starts as one wave and one commit.
pub(super) async fn lane<A: Api>(
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
        // A refused account's jobs claimed before the refusal are given back unsent.
        let (fenced, wave): (Vec<Claimed>, Vec<Claimed>) = wave
            .into_iter()
            .partition(|c| shared.is_fenced(c.job.account.as_deref()));
        for claimed in fenced {
            shared.release(claimed.job.id);
        }
        if wave.is_empty() {
            continue;
        }
        if let Err(error) = start_wave(&shared, &key, wave).await {
            shared.writer_failed(error);
        }
    }
}
