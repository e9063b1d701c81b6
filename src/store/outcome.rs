//! The group-committed writes of attempt starts and outcomes ([`Store::apply`]), and
//! what an outcome does to its job: succeed, wait, split, fail, skip what waited on it;
//! what follows it by its kind's rules is applied by `follow` in the same transaction.
//!
//! Every write here is a short transaction; none is held across a request. The
//! executor batches many [`Write`]s into one commit so that `synchronous=FULL` costs
//! one fsync per batch rather than per request.

use sqlx::{Row, Sqlite, Transaction};

use super::jobs::{JobUpdate, NewQueuedJob, fail_items, ids_json_i64, insert_job};
use super::states::{ItemStatus, JobKind, JobState, Verified};
use super::{Store, StoreError};
use crate::rules::{ErrorInfo, FollowUp};

/// One write for [`Store::apply`].
#[derive(Debug, Clone)]
pub enum Write {
    /// An attempt is about to be sent: the attempt row exists before the request does.
    Start { job_id: i64, started_at: i64 },
    /// An attempt ended.
    Finish(Box<Finish>),
    /// A started attempt was never sent (the run stopped first): its row is removed
    /// and its job queued again, so it is not mistaken for an uncertain one.
    Withdraw { attempt_id: i64, job_id: i64 },
}

/// What [`Store::apply`] returns for each write, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Started {
        attempt_id: i64,
        number: i64,
    },
    /// The job was no longer queued (skipped meanwhile): nothing started.
    NotQueued,
    Finished,
}

/// The recorded end of an attempt and what becomes of its job.
#[derive(Debug, Clone)]
pub struct Finish {
    pub attempt_id: i64,
    pub job_id: i64,
    /// The job's kind (what follows an outcome depends on it).
    pub kind: JobKind,
    /// How the jobs an outcome makes are bounded (a rotation's next steps).
    pub follow_up: FollowUp,
    pub finished_at: i64,
    /// When the request really left (its send slot), Unix ms.
    pub sent_at: i64,
    pub latency_ms: i64,
    pub http_status: Option<u16>,
    /// The reply's RequestId, when there was a reply.
    pub request_id: Option<String>,
    /// The access endpoint the request went to (`attempts.endpoint`, for the rates).
    pub endpoint: Option<String>,
    pub outcome: Outcome,
}

/// What the executor decided about a finished attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Success: the action accepted, proven by the reply's RequestId; every pending
    /// pair of the job succeeds with it.
    Succeeded { request_id: String },
    /// A read of the cloud's state (verification): the verdict on each item, by id.
    /// With `recheck_at` the job is queued again for then (nothing is spent);
    /// otherwise it has succeeded. Pair statuses are not touched.
    Observed {
        request_id: String,
        verified: Vec<(i64, Verified)>,
        recheck_at: Option<i64>,
        /// The keys each instance the reply showed holds, by instance id.
        keys: Vec<(String, Vec<String>)>,
        /// What a live run's read (survey, settle) saw of each instance.
        seen: Vec<crate::rules::power::Seen>,
        /// What a template change's look read.
        listed: Option<crate::rules::template::Listed>,
    },
    /// A Retry-class failure: the budget is spent by one; the job waits or fails.
    Retry {
        error: ErrorInfo,
        transport: bool,
        next_attempt_at: i64,
        give_up: bool,
    },
    /// Throttled: the job waits without spending its budget.
    Throttled {
        error: ErrorInfo,
        next_attempt_at: i64,
    },
    /// An Isolate-class failure on a job of several pairs: it is replaced by children.
    Split {
        error: ErrorInfo,
        children: Vec<(Vec<String>, Vec<String>)>,
    },
    /// An Isolate-class failure that is final: every pair of the job fails.
    Fail { error: ErrorInfo },
    /// A Fatal-class failure: the job goes back to the queue untouched; the run stops.
    Fatal { error: ErrorInfo },
}

impl Store {
    /// Applies a batch of writes in one transaction (one fsync); returns what each
    /// did, in the order given.
    ///
    /// The batch's attempt starts and its plain successes are applied first, each kind
    /// in a few statements for all of them, then the other writes in order. Each SQLite
    /// statement is a round trip to sqlx's connection thread, and the single writer
    /// spends most of its time on those (docs/BENCHMARKS.md, engine overhead), so a
    /// batch costs a handful of them rather than two or three per write. Moving them
    /// first is safe because the writes of one batch come from different jobs: a
    /// job's next write is sent only after its previous one was committed. A batch
    /// that names a job twice (the executor never makes one) is applied in order.
    pub async fn apply(&self, writes: &[Write]) -> Result<Vec<Applied>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut bulk: Vec<Option<Applied>> = vec![None; writes.len()];
        if jobs_are_distinct(writes) {
            start_attempts(&mut tx, writes, &mut bulk).await?;
            finish_successes(&mut tx, writes, &mut bulk).await?;
        }
        let mut applied = Vec::with_capacity(writes.len());
        for (write, done) in writes.iter().zip(bulk) {
            if let Some(done) = done {
                applied.push(done);
                continue;
            }
            applied.push(match write {
                Write::Start { job_id, started_at } => {
                    start_attempt(&mut tx, *job_id, *started_at).await?
                }
                Write::Finish(finish) => {
                    finish_attempt(&mut tx, finish).await?;
                    Applied::Finished
                }
                Write::Withdraw { attempt_id, job_id } => {
                    sqlx::query("DELETE FROM attempts WHERE id = ? AND finished_at IS NULL")
                        .bind(attempt_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE jobs SET state = ? WHERE id = ? AND state = ?")
                        .bind(JobState::Queued.as_str())
                        .bind(job_id)
                        .bind(JobState::InFlight.as_str())
                        .execute(&mut *tx)
                        .await?;
                    Applied::Finished
                }
            });
        }
        tx.commit().await?;
        Ok(applied)
    }
}

/// The job each write is for.
fn write_job(write: &Write) -> i64 {
    match write {
        Write::Start { job_id, .. } | Write::Withdraw { job_id, .. } => *job_id,
        Write::Finish(finish) => finish.job_id,
    }
}

fn jobs_are_distinct(writes: &[Write]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(writes.len());
    writes.iter().all(|write| seen.insert(write_job(write)))
}

/// Every [`Write::Start`] of the batch, as [`start_attempt`] does one, in two
/// statements; fills in `applied` at their places.
async fn start_attempts(
    tx: &mut Transaction<'_, Sqlite>,
    writes: &[Write],
    applied: &mut [Option<Applied>],
) -> Result<(), StoreError> {
    let starts: Vec<(usize, i64, i64)> = writes
        .iter()
        .enumerate()
        .filter_map(|(at, write)| match write {
            Write::Start { job_id, started_at } => Some((at, *job_id, *started_at)),
            _ => None,
        })
        .collect();
    if starts.is_empty() {
        return Ok(());
    }
    let mut job_ids: Vec<i64> = starts.iter().map(|(_, job_id, _)| *job_id).collect();
    // A key-pair job naming a pair its items do not hold fails here, unsent.
    let refused = fail_not_planned(tx, &job_ids, starts[0].2).await?;
    job_ids.retain(|id| !refused.contains(id));
    // Only a queued job starts: one skipped (its prerequisite failed) after the
    // dispatcher read it is not sent.
    let queued: std::collections::HashSet<i64> = sqlx::query_scalar(
        "UPDATE jobs SET state = ? WHERE state = ? AND id IN (SELECT value FROM json_each(?)) RETURNING id",
    )
    .bind(JobState::InFlight.as_str())
    .bind(JobState::Queued.as_str())
    .bind(ids_json_i64(&job_ids))
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let started: Vec<(i64, i64)> = starts
        .iter()
        .filter(|(_, job_id, _)| queued.contains(job_id))
        .map(|(_, job_id, started_at)| (*job_id, *started_at))
        .collect();
    let mut attempts = std::collections::HashMap::with_capacity(started.len());
    if !started.is_empty() {
        let rows = sqlx::query(
            "INSERT INTO attempts (job_id, number, started_at) \
             SELECT json_extract(value, '$[0]'), \
                    (SELECT COUNT(*) + 1 FROM attempts a WHERE a.job_id = json_extract(value, '$[0]')), \
                    json_extract(value, '$[1]') \
             FROM json_each(?) RETURNING id, job_id, number",
        )
        .bind(serde_json::to_string(&started).unwrap_or_else(|_| "[]".into()))
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let job_id: i64 = row.get("job_id");
            attempts.insert(
                job_id,
                Applied::Started {
                    attempt_id: row.get("id"),
                    number: row.get("number"),
                },
            );
        }
    }
    for (at, job_id, _) in starts {
        applied[at] = Some(match attempts.remove(&job_id) {
            Some(started) => started,
            None if queued.contains(&job_id) => {
                return Err(StoreError::Corrupt(format!(
                    "job {job_id} was started but its attempt row was not written"
                )));
            }
            None => Applied::NotQueued,
        });
    }
    Ok(())
}

/// Every [`Write::Finish`] of the batch whose outcome is [`Outcome::Succeeded`], as
/// [`finish_attempt`] does one, in three statements; fills in `applied`.
async fn finish_successes(
    tx: &mut Transaction<'_, Sqlite>,
    writes: &[Write],
    applied: &mut [Option<Applied>],
) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    for (at, write) in writes.iter().enumerate() {
        let Write::Finish(finish) = write else {
            continue;
        };
        let Outcome::Succeeded { request_id } = &finish.outcome else {
            continue;
        };
        // Only an unbind's success causes nothing further; the others one by one.
        if finish.kind != JobKind::Unbind {
            continue;
        }
        rows.push(serde_json::json!({
            "attempt_id": finish.attempt_id,
            "job_id": finish.job_id,
            "finished_at": finish.finished_at,
            "sent_at": finish.sent_at,
            "latency_ms": finish.latency_ms,
            "http_status": finish.http_status,
            "reply_id": finish.request_id,
            "request_id": request_id,
            "endpoint": finish.endpoint,
        }));
        applied[at] = Some(Applied::Finished);
    }
    if rows.is_empty() {
        return Ok(());
    }
    let rows = serde_json::Value::Array(rows).to_string();
    sqlx::query(
        "UPDATE attempts SET finished_at = v.finished_at, sent_at = v.sent_at, outcome = 'succeeded', \
         request_id = v.reply_id, error_code = NULL, error_message = NULL, http_status = v.http_status, \
         latency_ms = v.latency_ms, endpoint = v.endpoint \
         FROM (SELECT json_extract(value, '$.attempt_id') AS attempt_id, \
                      json_extract(value, '$.endpoint') AS endpoint, \
                      json_extract(value, '$.finished_at') AS finished_at, \
                      json_extract(value, '$.sent_at') AS sent_at, \
                      json_extract(value, '$.reply_id') AS reply_id, \
                      json_extract(value, '$.http_status') AS http_status, \
                      json_extract(value, '$.latency_ms') AS latency_ms FROM json_each(?)) AS v \
         WHERE attempts.id = v.attempt_id",
    )
    .bind(&rows)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE jobs SET state = ?, request_id = v.request_id, finished_at = v.finished_at \
         FROM (SELECT json_extract(value, '$.job_id') AS job_id, \
                      json_extract(value, '$.request_id') AS request_id, \
                      json_extract(value, '$.finished_at') AS finished_at FROM json_each(?)) AS v \
         WHERE jobs.id = v.job_id",
    )
    .bind(JobState::Succeeded.as_str())
    .bind(&rows)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE items SET status = ?, request_id = v.request_id, error_code = NULL, error_message = NULL \
         FROM (SELECT json_extract(value, '$.job_id') AS job_id, \
                      json_extract(value, '$.request_id') AS request_id FROM json_each(?)) AS v \
         WHERE items.job_id = v.job_id AND items.status = ?",
    )
    .bind(ItemStatus::Succeeded.as_str())
    .bind(&rows)
    .bind(ItemStatus::Pending.as_str())
    .execute(&mut **tx)
    .await?;
    // In a live run an unbind may be an instance's last key step: it is then brought
    // back up (one query tells whether any of these jobs is of a live run).
    let live: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT j.id, a.finished_at FROM jobs j \
         JOIN (SELECT json_extract(value, '$.job_id') AS job_id, \
                      json_extract(value, '$.finished_at') AS finished_at FROM json_each(?)) AS a \
           ON a.job_id = j.id \
         WHERE EXISTS (SELECT 1 FROM power p WHERE p.run_id = j.run_id)",
    )
    .bind(&rows)
    .fetch_all(&mut **tx)
    .await?;
    for (job_id, now) in live {
        super::follow::after_success(tx, job_id, JobKind::Unbind, "", now, &FollowUp::default())
            .await?;
    }
    Ok(())
}

async fn start_attempt(
    tx: &mut Transaction<'_, Sqlite>,
    job_id: i64,
    started_at: i64,
) -> Result<Applied, StoreError> {
    if !fail_not_planned(tx, &[job_id], started_at)
        .await?
        .is_empty()
    {
        return Ok(Applied::NotQueued);
    }
    // Only a queued job starts: one skipped (its prerequisite failed) after the
    // dispatcher read it is not sent.
    let queued = sqlx::query("UPDATE jobs SET state = ? WHERE id = ? AND state = ?")
        .bind(JobState::InFlight.as_str())
        .bind(job_id)
        .bind(JobState::Queued.as_str())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if queued == 0 {
        return Ok(Applied::NotQueued);
    }
    let row = sqlx::query(
        "INSERT INTO attempts (job_id, number, started_at) \
         VALUES (?, (SELECT COUNT(*) + 1 FROM attempts WHERE job_id = ?), ?) RETURNING id, number",
    )
    .bind(job_id)
    .bind(job_id)
    .bind(started_at)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Applied::Started {
        attempt_id: row.get("id"),
        number: row.get("number"),
    })
}

/// The queued key-pair jobs among `job_ids` whose `InstanceIds` x `KeyIds` holds a
/// pair that is not one of the job's own items (same region, same kind), or that
/// carry ForceStop when their run was planned without it (a live `force-stop` run
/// sends ForceStop by design): a job row changed after planning (the audit's L5: an
/// edited row made `resume` remove a key nobody asked for, with ForceStop). Each fails
/// with [`crate::taxonomy::NOT_PLANNED`] before any attempt, as a final failure does
/// (its pending pairs fail, what waits on it is skipped, its kind's rules follow);
/// nothing is sent. Returns their ids.
///
/// One pass over each job's items (the `items_job` index), counting the distinct
/// planned pairs inside its cross product against the cross product's size.
async fn fail_not_planned(
    tx: &mut Transaction<'_, Sqlite>,
    job_ids: &[i64],
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    let rows = sqlx::query(
        "SELECT j.id, j.kind, j.action, \
                (SELECT COUNT(DISTINCT value) FROM json_each(j.instance_ids)) AS instances, \
                (SELECT COUNT(DISTINCT value) FROM json_each(j.key_ids)) AS keys \
         FROM jobs j JOIN runs r ON r.id = j.run_id \
         WHERE j.id IN (SELECT value FROM json_each(?)) AND j.state = ? \
         AND j.kind IN (?, ?) \
         AND ((SELECT COUNT(DISTINCT value) FROM json_each(j.instance_ids)) \
              * (SELECT COUNT(DISTINCT value) FROM json_each(j.key_ids)) \
              != (SELECT COUNT(DISTINCT i.instance_id || ' ' || i.key_id) FROM items i \
                  WHERE i.job_id = j.id AND i.region = j.region AND i.bind = (j.kind = ?) \
                  AND i.instance_id IN (SELECT value FROM json_each(j.instance_ids)) \
                  AND i.key_id IN (SELECT value FROM json_each(j.key_ids))) \
              OR (j.force_stop != 0 AND NOT COALESCE(json_extract(r.options, '$.force_stop'), 0) \
                  AND COALESCE(json_extract(r.options, '$.live.running'), '') != 'force-stop'))",
    )
    .bind(ids_json_i64(job_ids))
    .bind(JobState::Queued.as_str())
    .bind(JobKind::Unbind.as_str())
    .bind(JobKind::Bind.as_str())
    .bind(JobKind::Bind.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let mut failed = Vec::with_capacity(rows.len());
    for row in rows {
        let job_id: i64 = row.get("id");
        let kind: JobKind = row
            .get::<&str, _>("kind")
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("job {job_id}: {e}")))?;
        let action: String = row.get("action");
        let error = ErrorInfo {
            code: crate::taxonomy::NOT_PLANNED.to_string(),
            message: format!(
                "job {job_id} ({action}, {} instances x {} keys) names pairs that are not its planned \
                 pairs, or ForceStop its run was not planned with: nothing was sent (was the \
                 database changed outside keyfleet?)",
                row.get::<i64, _>("instances"),
                row.get::<i64, _>("keys"),
            ),
        };
        tracing::error!(job = job_id, code = %error.code, "a job names pairs its plan does not hold; not sent");
        let update = JobUpdate {
            state: JobState::Failed,
            next_attempt_at: None,
            finished_at: Some(now),
            spent: 0,
            throttled: 0,
        };
        update.apply(tx, job_id, &error).await?;
        fail_items(tx, job_id, &error).await?;
        skip_dependents(tx, job_id, &error, now).await?;
        super::follow::after_failure(tx, job_id, kind, &error, now).await?;
        failed.push(job_id);
    }
    Ok(failed)
}

async fn finish_attempt(
    tx: &mut Transaction<'_, Sqlite>,
    finish: &Finish,
) -> Result<(), StoreError> {
    let (outcome, error) = match &finish.outcome {
        Outcome::Succeeded { .. } | Outcome::Observed { .. } => ("succeeded", None),
        Outcome::Retry {
            error,
            transport: true,
            ..
        } => ("transport", Some(error)),
        Outcome::Retry { error, .. }
        | Outcome::Throttled { error, .. }
        | Outcome::Split { error, .. }
        | Outcome::Fail { error }
        | Outcome::Fatal { error } => ("error", Some(error)),
    };
    sqlx::query(
        "UPDATE attempts SET finished_at = ?, sent_at = ?, outcome = ?, request_id = ?, error_code = ?, \
         error_message = ?, http_status = ?, latency_ms = ?, endpoint = ? WHERE id = ?",
    )
    .bind(finish.finished_at)
    .bind(finish.sent_at)
    .bind(outcome)
    .bind(&finish.request_id)
    .bind(error.map(|e| &e.code))
    .bind(error.map(|e| &e.message))
    .bind(finish.http_status.map(i64::from))
    .bind(finish.latency_ms)
    .bind(&finish.endpoint)
    .bind(finish.attempt_id)
    .execute(&mut **tx)
    .await?;

    let job_id = finish.job_id;
    let now = finish.finished_at;
    match &finish.outcome {
        Outcome::Succeeded { request_id } => {
            sqlx::query("UPDATE jobs SET state = ?, request_id = ?, finished_at = ? WHERE id = ?")
                .bind(JobState::Succeeded.as_str())
                .bind(request_id)
                .bind(now)
                .bind(job_id)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "UPDATE items SET status = ?, request_id = ?, error_code = NULL, error_message = NULL \
                 WHERE job_id = ? AND status = ?",
            )
            .bind(ItemStatus::Succeeded.as_str())
            .bind(request_id)
            .bind(job_id)
            .bind(ItemStatus::Pending.as_str())
            .execute(&mut **tx)
            .await?;
            super::follow::after_success(
                tx,
                job_id,
                finish.kind,
                request_id,
                now,
                &finish.follow_up,
            )
            .await?;
        }
        Outcome::Observed {
            request_id,
            verified,
            recheck_at,
            keys,
            seen,
            listed,
        } => {
            let verdicts: Vec<(i64, &str)> =
                verified.iter().map(|(id, v)| (*id, v.as_str())).collect();
            sqlx::query(
                "UPDATE items SET verified = v.verdict, verified_at = ?, verify_request_id = ? \
                 FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS verdict \
                       FROM json_each(?)) AS v WHERE items.id = v.id",
            )
            .bind(now)
            .bind(request_id)
            .bind(serde_json::to_string(&verdicts).unwrap_or_else(|_| "[]".into()))
            .execute(&mut **tx)
            .await?;
            let (state, next, finished_at) = match recheck_at {
                Some(at) => (JobState::Queued, *at, None),
                None => (JobState::Succeeded, now, Some(now)),
            };
            sqlx::query(
                "UPDATE jobs SET state = ?, next_attempt_at = ?, request_id = ?, finished_at = ? WHERE id = ?",
            )
            .bind(state.as_str())
            .bind(next)
            .bind(request_id)
            .bind(finished_at)
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
            if recheck_at.is_none() {
                if matches!(finish.kind, JobKind::Survey | JobKind::Settle) {
                    super::follow::after_seen(
                        tx,
                        job_id,
                        finish.kind,
                        seen,
                        now,
                        &finish.follow_up,
                    )
                    .await?;
                } else {
                    let read = super::follow::Read {
                        verified,
                        keys,
                        listed: listed.as_ref(),
                        seen,
                    };
                    super::follow::after_read(
                        tx,
                        job_id,
                        finish.kind,
                        read,
                        now,
                        &finish.follow_up,
                    )
                    .await?;
                }
            }
        }
        Outcome::Retry { error, .. } if finish.kind.rereads_when_in_doubt() => {
            // No reply, or a transient error (an internal error may have been applied):
            // whether it was is unknown. Never sent again as is: a look finds out.
            super::follow::after_doubt(tx, job_id, finish.kind, error, now).await?;
        }
        Outcome::Retry {
            error,
            next_attempt_at,
            give_up,
            ..
        } => {
            let (state, finished_at) = if *give_up {
                (JobState::Failed, Some(now))
            } else {
                (JobState::Queued, None)
            };
            let update = JobUpdate {
                state,
                next_attempt_at: Some(*next_attempt_at),
                finished_at,
                spent: 1,
                throttled: 0,
            };
            update.apply(tx, job_id, error).await?;
            if *give_up {
                fail_items(tx, job_id, error).await?;
                skip_dependents(tx, job_id, error, now).await?;
                after_final_failure(tx, finish, error).await?;
            }
        }
        Outcome::Throttled {
            error,
            next_attempt_at,
        } => {
            let update = JobUpdate {
                state: JobState::Queued,
                next_attempt_at: Some(*next_attempt_at),
                finished_at: None,
                spent: 0,
                throttled: 1,
            };
            update.apply(tx, job_id, error).await?;
        }
        Outcome::Fatal { error } => {
            let update = JobUpdate {
                state: JobState::Queued,
                next_attempt_at: Some(now),
                finished_at: None,
                spent: 0,
                throttled: 0,
            };
            update.apply(tx, job_id, error).await?;
        }
        Outcome::Fail { error } => {
            let update = JobUpdate {
                state: JobState::Failed,
                next_attempt_at: None,
                finished_at: Some(now),
                spent: 0,
                throttled: 0,
            };
            update.apply(tx, job_id, error).await?;
            fail_items(tx, job_id, error).await?;
            skip_dependents(tx, job_id, error, now).await?;
            after_final_failure(tx, finish, error).await?;
        }
        Outcome::Split { error, children } => split_job(tx, job_id, error, children, now).await?,
    }
    Ok(())
}

/// A job failed for good: what waited on it in another way than `job_deps` (a
/// rotation's held unbinds, a look that could not be made) follows its kind's rules.
async fn after_final_failure(
    tx: &mut Transaction<'_, Sqlite>,
    finish: &Finish,
    error: &ErrorInfo,
) -> Result<(), StoreError> {
    super::follow::after_failure(tx, finish.job_id, finish.kind, error, finish.finished_at).await
}

/// Replaces a job by its children: each child takes the parent's action, region,
/// ForceStop and payload, the pairs (items) in its cross product, the parent's
/// prerequisites; and every job that waited for the parent waits for every child.
async fn split_job(
    tx: &mut Transaction<'_, Sqlite>,
    job_id: i64,
    error: &ErrorInfo,
    children: &[(Vec<String>, Vec<String>)],
    now: i64,
) -> Result<(), StoreError> {
    let parent = sqlx::query(
        "SELECT run_id, kind, region, account, force_stop, payload FROM jobs WHERE id = ?",
    )
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    let run_id: i64 = parent.get("run_id");
    let kind: JobKind = parent
        .get::<&str, _>("kind")
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("job {job_id}: {e}")))?;
    let after: Vec<i64> = sqlx::query_scalar("SELECT depends_on FROM job_deps WHERE job_id = ?")
        .bind(job_id)
        .fetch_all(&mut **tx)
        .await?;
    let waiting: Vec<i64> = sqlx::query_scalar("SELECT job_id FROM job_deps WHERE depends_on = ?")
        .bind(job_id)
        .fetch_all(&mut **tx)
        .await?;
    let update = JobUpdate {
        state: JobState::Split,
        next_attempt_at: None,
        finished_at: Some(now),
        spent: 0,
        throttled: 0,
    };
    update.apply(tx, job_id, error).await?;
    // The parent's items, found by id once, then handed to the child whose cross
    // product holds each one.
    let items = sqlx::query("SELECT id, instance_id, key_id FROM items WHERE job_id = ?")
        .bind(job_id)
        .fetch_all(&mut **tx)
        .await?;
    for (instance_ids, key_ids) in children {
        let child = NewQueuedJob {
            kind,
            region: parent.get("region"),
            account: parent.get("account"),
            force_stop: parent.get::<i64, _>("force_stop") != 0,
            instance_ids: instance_ids.clone(),
            key_ids: key_ids.clone(),
            payload: parent.get("payload"),
            after: after.clone(),
            item_ids: Vec::new(),
        };
        let child_id = insert_job(tx, run_id, &child, Some(job_id), now).await?;
        let mine: Vec<i64> = items
            .iter()
            .filter(|row| {
                let instance: Option<&str> = row.get("instance_id");
                let key: Option<&str> = row.get("key_id");
                instance.is_some_and(|i| instance_ids.iter().any(|x| x == i))
                    && key.is_some_and(|k| key_ids.iter().any(|x| x == k))
            })
            .map(|row| row.get("id"))
            .collect();
        for chunk in mine.chunks(500) {
            sqlx::query("UPDATE items SET job_id = ? WHERE id IN (SELECT value FROM json_each(?))")
                .bind(child_id)
                .bind(ids_json_i64(chunk))
                .execute(&mut **tx)
                .await?;
        }
        for dependent in &waiting {
            sqlx::query("INSERT INTO job_deps (job_id, depends_on) VALUES (?, ?)")
                .bind(dependent)
                .bind(child_id)
                .execute(&mut **tx)
                .await?;
        }
    }
    sqlx::query("DELETE FROM job_deps WHERE depends_on = ?")
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A job failed for good: every queued job that waits for it, directly or through
/// others, is skipped and so are its pending pairs, with the reason.
async fn skip_dependents(
    tx: &mut Transaction<'_, Sqlite>,
    job_id: i64,
    error: &ErrorInfo,
    now: i64,
) -> Result<(), StoreError> {
    let skipped: Vec<i64> = sqlx::query_scalar(
        "WITH RECURSIVE waiting(id) AS ( \
             SELECT job_id FROM job_deps WHERE depends_on = ? \
             UNION SELECT d.job_id FROM job_deps d JOIN waiting w ON d.depends_on = w.id) \
         SELECT j.id FROM jobs j JOIN waiting w ON w.id = j.id WHERE j.state = ?",
    )
    .bind(job_id)
    .bind(JobState::Queued.as_str())
    .fetch_all(&mut **tx)
    .await?;
    if skipped.is_empty() {
        return Ok(());
    }
    let reason = ErrorInfo {
        code: error.code.clone(),
        message: format!(
            "not sent: job {job_id}, which it waited for, failed with {}: {}",
            error.code, error.message
        ),
    };
    for chunk in skipped.chunks(500) {
        let list = ids_json_i64(chunk);
        sqlx::query(
            "UPDATE jobs SET state = ?, finished_at = ?, last_error_code = ?, last_error_message = ? \
             WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(JobState::Skipped.as_str())
        .bind(now)
        .bind(&reason.code)
        .bind(&reason.message)
        .bind(&list)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE items SET status = ?, error_code = ?, error_message = ? \
             WHERE job_id IN (SELECT value FROM json_each(?)) AND status = ?",
        )
        .bind(ItemStatus::Skipped.as_str())
        .bind(&reason.code)
        .bind(&reason.message)
        .bind(&list)
        .bind(ItemStatus::Pending.as_str())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
