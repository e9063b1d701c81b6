//! Sending: a wave's attempt rows committed, each request paced and sent, its outcome
//! recorded through the one writer task.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::store::queue::{Applied, Finish, FollowUp, Outcome, QueuedJob, Write};
use crate::store::{Store, now_ms};

use super::MAX_WRITES_PER_COMMIT;
use super::action::{Api, JobAction, Proof, Refused};
use super::config::{AccountFailure, Counters, MaxErrors, StopReason};
use super::decide;
use super::pacer::{Feedback, LimiterKey};
use super::shared::halted;
use super::shared::{Claimed, Shared, WriteReply, locked};

/// Commits the attempt rows of a wave, then sends each request when the limiter
/// allows. A halt first withdraws the attempts not sent.
pub(super) async fn start_wave<A: Api>(
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
pub(super) async fn send_and_record<A: Api>(
    shared: &Arc<Shared<A>>,
    action: &'static dyn JobAction,
    job: QueuedJob,
    attempt_id: i64,
    key: &LimiterKey,
    sent_at: i64,
) {
    let call = action.call(&job);
    let sent = Instant::now();
    let reply = shared.api.call_as(job.account.as_deref(), &call).await;
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
                    listed,
                } => Outcome::Observed {
                    request_id,
                    verified,
                    recheck_at,
                    keys,
                    seen,
                    listed,
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
    log_request(
        shared.run_id,
        &job,
        attempt_id,
        key,
        &outcome,
        request_id.as_deref(),
        latency_ms,
    );
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

/// One event per request answered (or failed in transport), for `--log-format json`
/// and `--log-file`: what a log shipper indexes. `code` is the error code, or `ok`.
pub(super) fn log_request(
    run_id: i64,
    job: &QueuedJob,
    attempt_id: i64,
    key: &LimiterKey,
    outcome: &Outcome,
    request_id: Option<&str>,
    latency_ms: i64,
) {
    let (code, message) = match outcome {
        Outcome::Succeeded { .. } => ("ok", "request accepted"),
        Outcome::Observed { .. } => ("ok", "state read"),
        Outcome::Retry { error, give_up, .. } => (
            error.code.as_str(),
            if *give_up {
                "request refused: attempts spent, the job's pairs fail"
            } else {
                "request refused: retried later"
            },
        ),
        Outcome::Throttled { error, .. } => {
            (error.code.as_str(), "request throttled: retried later")
        }
        Outcome::Split { error, .. } => {
            (error.code.as_str(), "request refused: the batch is split")
        }
        Outcome::Fail { error } => (error.code.as_str(), "request refused: the job's pairs fail"),
        Outcome::Fatal { error } => (error.code.as_str(), "request refused: the run stops"),
    };
    tracing::info!(
        target: "keyfleet::request",
        run = run_id,
        job = job.id,
        action = %job.action,
        region = %job.region,
        endpoint = %key.endpoint,
        request_id,
        code,
        latency_ms,
        attempt = job.attempts + 1,
        attempt_id,
        pairs = job.pair_count,
        "{message}"
    );
}

/// Decides what a refusal means and applies its effects (counters, pacing, halt).
pub(super) fn refused_outcome<A>(
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
    match effects.halt {
        Some(StopReason::Fatal {
            code,
            message,
            request_id,
        }) if shared.config.isolate_accounts => shared.fence(AccountFailure {
            account: job.account.clone(),
            code,
            message,
            request_id,
        }),
        Some(reason) => shared.halt(reason),
        None => {}
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
pub(super) async fn record<A>(shared: &Arc<Shared<A>>, job: &QueuedJob, finish: Finish) {
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
pub(super) async fn run_writer(store: Store, mut rx: mpsc::UnboundedReceiver<(Write, WriteReply)>) {
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
