//! The executor's side of the store: the run lease, crash recovery, due jobs,
//! and the group-committed writes of attempt starts and outcomes.
//!
//! Every write here is a short transaction; none is held across a request. The
//! executor batches many [`Write`]s into one commit ([`Store::apply`]) so that
//! `synchronous=FULL` costs one fsync per batch rather than per request.

use std::time::Duration;

use sqlx::{Row, Sqlite, Transaction};

use super::{Store, StoreError, now_ms};

/// A heartbeat older than this means the owning process is gone or hung.
pub const LEASE_STALE_AFTER: Duration = Duration::from_secs(30);
/// How often the owner refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The identity of the process that executes a run.
#[derive(Debug, Clone)]
pub struct Lease {
    pub token: String,
    pub pid: u32,
    pub host: String,
}

impl Lease {
    /// A lease for this process, with a fresh random token.
    pub fn for_this_process() -> Lease {
        Lease {
            token: uuid::Uuid::new_v4().to_string(),
            pid: std::process::id(),
            host: hostname(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// True when `pid` on this host is certainly gone. Where that cannot be known
/// (no /proc), only the heartbeat's age decides.
fn process_is_gone(pid: i64) -> bool {
    let proc_root = std::path::Path::new("/proc");
    proc_root.join("self").exists() && !proc_root.join(pid.to_string()).exists()
}

/// Why a run could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "run {run_id} is being executed by process {pid} on {host} (last heartbeat {age_secs} s ago); \
         wait for it to finish, or stop it first (a holder silent for {} s is taken over)",
        LEASE_STALE_AFTER.as_secs()
    )]
    Held {
        run_id: i64,
        pid: i64,
        host: String,
        age_secs: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for LeaseError {
    fn from(e: sqlx::Error) -> Self {
        LeaseError::Store(e.into())
    }
}

/// A job as the executor sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: i64,
    pub region: String,
    pub force_stop: bool,
    pub instance_ids: Vec<String>,
    pub key_ids: Vec<String>,
    /// Retry-class failures so far (the `--max-attempts` budget).
    pub attempts: i64,
    pub pair_count: i64,
}

/// One write for [`Store::apply`].
#[derive(Debug, Clone)]
pub enum Write {
    /// An attempt is about to be sent: the attempt row exists before the request does.
    Start { job_id: i64, started_at: i64 },
    /// An attempt ended.
    Finish(Finish),
    /// A started attempt was never sent (the run stopped first): its row is removed
    /// and its job queued again, so it is not mistaken for an uncertain one.
    Withdraw { attempt_id: i64, job_id: i64 },
}

/// What [`Store::apply`] returns for each write, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Started { attempt_id: i64, number: i64 },
    Finished,
}

/// The recorded end of an attempt and what becomes of its job.
#[derive(Debug, Clone)]
pub struct Finish {
    pub attempt_id: i64,
    pub job_id: i64,
    pub finished_at: i64,
    pub latency_ms: i64,
    pub http_status: Option<u16>,
    /// The reply's RequestId, when there was a reply.
    pub request_id: Option<String>,
    pub outcome: Outcome,
}

/// What the executor decided about a finished attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Success: every pair of the job is unbound, proven by the reply's RequestId.
    Succeeded { request_id: String },
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

/// An error code and message as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// Pair counts of a run, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairCounts {
    pub pending: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub rejected: i64,
    pub duplicate: i64,
}

impl PairCounts {
    /// Valid, distinct pairs: the ones the executor works on.
    pub fn valid(&self) -> i64 {
        self.pending + self.succeeded + self.failed
    }
}

/// One valid pair's outcome, for audits.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PairOutcome {
    pub region: String,
    pub instance_id: String,
    pub key_id: String,
    pub status: String,
    pub request_id: Option<String>,
    pub error_code: Option<String>,
}

/// What a run's plan records about where it came from.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: i64,
    pub state: String,
    pub input_path: String,
    pub input_sha256: String,
    pub options: String,
    pub started_at: Option<i64>,
}

fn ids_json(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())
}

fn parse_ids(json: &str, job_id: i64) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("job {job_id} has unreadable ids: {e}")))
}

impl Store {
    /// A run's identity and state.
    pub async fn run_info(&self, run_id: i64) -> Result<RunInfo, StoreError> {
        let row = sqlx::query("SELECT id, state, input_path, input_sha256, options, started_at FROM runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NoSuchRun(run_id))?;
        Ok(RunInfo {
            id: row.get("id"),
            state: row.get("state"),
            input_path: row.get("input_path"),
            input_sha256: row.get("input_sha256"),
            options: row.get("options"),
            started_at: row.get("started_at"),
        })
    }

    /// Takes ownership of a run for this process, or says who holds it.
    ///
    /// The holder is taken over when its heartbeat is older than `stale_after`, or
    /// when it ran on this host and its pid no longer exists (a `kill -9`).
    pub async fn acquire_run(
        &self,
        run_id: i64,
        lease: &Lease,
        stale_after: Duration,
    ) -> Result<(), LeaseError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT owner_pid, owner_host, owner_token, heartbeat_at FROM runs WHERE id = ?",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NoSuchRun(run_id))?;
        let token: Option<String> = row.get("owner_token");
        if let Some(token) = token.filter(|t| *t != lease.token) {
            let pid: i64 = row.get::<Option<i64>, _>("owner_pid").unwrap_or(0);
            let host: String = row
                .get::<Option<String>, _>("owner_host")
                .unwrap_or_default();
            let age_ms = now_ms() - row.get::<Option<i64>, _>("heartbeat_at").unwrap_or(0);
            let gone = host == lease.host && process_is_gone(pid);
            if !gone && age_ms < stale_after.as_millis() as i64 {
                return Err(LeaseError::Held {
                    run_id,
                    pid,
                    host,
                    age_secs: age_ms / 1000,
                });
            }
            tracing::warn!(run_id, pid, %host, %token, age_ms, "taking over a run whose holder is gone");
        }
        sqlx::query("UPDATE runs SET owner_pid = ?, owner_host = ?, owner_token = ?, heartbeat_at = ? WHERE id = ?")
            .bind(lease.pid as i64)
            .bind(&lease.host)
            .bind(&lease.token)
            .bind(now_ms())
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes the lease; false when another process has taken the run over.
    pub async fn heartbeat(&self, run_id: i64, lease: &Lease) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND owner_token = ?")
            .bind(now_ms())
            .bind(run_id)
            .bind(&lease.token)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the run up, recording where it ended.
    pub async fn release_run(
        &self,
        run_id: i64,
        lease: &Lease,
        state: &str,
        stop_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let finished_at = (state == "finished").then(now_ms);
        sqlx::query(
            "UPDATE runs SET owner_pid = NULL, owner_host = NULL, owner_token = NULL, heartbeat_at = NULL, \
             state = ?, stop_reason = ?, finished_at = COALESCE(?, finished_at) \
             WHERE id = ? AND owner_token = ?",
        )
        .bind(state)
        .bind(stop_reason)
        .bind(finished_at)
        .bind(run_id)
        .bind(&lease.token)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks the run as executing (first start time kept across resumes).
    pub async fn mark_running(&self, run_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET state = 'running', stop_reason = NULL, finished_at = NULL, \
             started_at = COALESCE(started_at, ?) WHERE id = ?",
        )
        .bind(now_ms())
        .bind(run_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// After a crash: every attempt left open is marked `lost` (its outcome is unknown)
    /// and its job queued again, due now. Returns how many jobs were requeued.
    ///
    /// A lost attempt does not spend the job's budget: the crash was ours, not the API's.
    pub async fn recover_in_flight(&self, run_id: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE attempts SET outcome = 'lost', finished_at = ? \
             WHERE finished_at IS NULL AND job_id IN (SELECT id FROM jobs WHERE run_id = ?)",
        )
        .bind(now)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        let requeued = sqlx::query("UPDATE jobs SET state = 'queued', next_attempt_at = ? WHERE run_id = ? AND state = 'in_flight'")
            .bind(now)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(requeued)
    }

    /// Up to `limit` queued jobs due at `now`, earliest first.
    pub async fn due_jobs(
        &self,
        run_id: i64,
        now: i64,
        limit: i64,
    ) -> Result<Vec<QueuedJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, region, force_stop, instance_ids, key_ids, attempts, pair_count FROM jobs \
             WHERE run_id = ? AND state = 'queued' AND next_attempt_at <= ? \
             ORDER BY next_attempt_at, id LIMIT ?",
        )
        .bind(run_id)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.get("id");
                Ok(QueuedJob {
                    id,
                    region: row.get("region"),
                    force_stop: row.get::<i64, _>("force_stop") != 0,
                    instance_ids: parse_ids(row.get("instance_ids"), id)?,
                    key_ids: parse_ids(row.get("key_ids"), id)?,
                    attempts: row.get("attempts"),
                    pair_count: row.get("pair_count"),
                })
            })
            .collect()
    }

    /// When the earliest queued job falls due, if any job is queued.
    pub async fn next_due_at(&self, run_id: i64) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE run_id = ? AND state = 'queued'",
        )
        .bind(run_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Jobs not yet final (queued or in flight).
    pub async fn open_jobs(&self, run_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND state IN ('queued', 'in_flight')",
        )
        .bind(run_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Pair counts by status.
    pub async fn pair_counts(&self, run_id: i64) -> Result<PairCounts, StoreError> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM items WHERE run_id = ? GROUP BY status")
                .bind(run_id)
                .fetch_all(self.pool())
                .await?;
        let mut counts = PairCounts::default();
        for row in rows {
            let n: i64 = row.get("n");
            match row.get::<&str, _>("status") {
                "pending" => counts.pending = n,
                "succeeded" => counts.succeeded = n,
                "failed" => counts.failed = n,
                "rejected" => counts.rejected = n,
                "duplicate" => counts.duplicate = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Every valid, distinct pair of a run with its status and proving RequestId, in input order.
    pub async fn pair_outcomes(&self, run_id: i64) -> Result<Vec<PairOutcome>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT region, instance_id, key_id, status, request_id, error_code FROM items \
             WHERE run_id = ? AND status IN ('pending', 'succeeded', 'failed') ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Failed pairs of a run by error code.
    pub async fn failures_by_code(
        &self,
        run_id: i64,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT COALESCE(error_code, '') AS code, COUNT(*) AS n FROM items \
             WHERE run_id = ? AND status = 'failed' GROUP BY error_code",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get("code"), row.get("n")))
            .collect())
    }

    /// Applies a batch of writes in one transaction (one fsync), in order.
    pub async fn apply(&self, writes: &[Write]) -> Result<Vec<Applied>, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let mut applied = Vec::with_capacity(writes.len());
        for write in writes {
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
                    sqlx::query(
                        "UPDATE jobs SET state = 'queued' WHERE id = ? AND state = 'in_flight'",
                    )
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
                    Applied::Finished
                }
            });
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Failed pairs of a run become pending again in fresh jobs (`keyfleet retry`).
    /// `codes` limits it to those error codes; empty means every failed pair.
    /// Returns the number of pairs requeued.
    pub async fn requeue_failed(
        &self,
        run_id: i64,
        codes: &[String],
        chunk: impl Fn(
            Vec<(String, bool, String, String)>,
        ) -> Vec<(String, bool, Vec<String>, Vec<String>)>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "SELECT i.region, j.force_stop, i.instance_id, i.key_id, i.error_code FROM items i \
             JOIN jobs j ON j.id = i.job_id WHERE i.run_id = ? AND i.status = 'failed' ORDER BY i.id",
        )
        .bind(run_id)
        .fetch_all(&mut *tx)
        .await?;
        let pairs: Vec<(String, bool, String, String)> = rows
            .iter()
            .filter(|row| {
                codes.is_empty()
                    || row
                        .get::<Option<String>, _>("error_code")
                        .is_some_and(|c| codes.contains(&c))
            })
            .map(|row| {
                (
                    row.get("region"),
                    row.get::<i64, _>("force_stop") != 0,
                    row.get("instance_id"),
                    row.get("key_id"),
                )
            })
            .collect();
        let requeued = pairs.len() as i64;
        let now = now_ms();
        for (region, force_stop, instance_ids, key_ids) in chunk(pairs) {
            let job_id = insert_job(
                &mut tx,
                run_id,
                &region,
                force_stop,
                &instance_ids,
                &key_ids,
                None,
                now,
            )
            .await?;
            sqlx::query(
                "UPDATE items SET job_id = ?, status = 'pending', error_code = NULL, error_message = NULL \
                 WHERE run_id = ? AND status = 'failed' AND region = ? \
                 AND instance_id IN (SELECT value FROM json_each(?)) AND key_id IN (SELECT value FROM json_each(?)) \
                 AND job_id IN (SELECT id FROM jobs WHERE run_id = ? AND force_stop = ?)",
            )
            .bind(job_id)
            .bind(run_id)
            .bind(&region)
            .bind(ids_json(&instance_ids))
            .bind(ids_json(&key_ids))
            .bind(run_id)
            .bind(force_stop as i64)
            .execute(&mut *tx)
            .await?;
        }
        if requeued > 0 {
            sqlx::query("UPDATE runs SET state = 'planned', finished_at = NULL WHERE id = ?")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(requeued)
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_job(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: i64,
    region: &str,
    force_stop: bool,
    instance_ids: &[String],
    key_ids: &[String],
    parent: Option<i64>,
    now: i64,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO jobs (run_id, region, force_stop, instance_ids, key_ids, pair_count, state, \
         next_attempt_at, parent_job_id, created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?) RETURNING id",
    )
    .bind(run_id)
    .bind(region)
    .bind(force_stop as i64)
    .bind(ids_json(instance_ids))
    .bind(ids_json(key_ids))
    .bind((instance_ids.len() * key_ids.len()) as i64)
    .bind(now)
    .bind(parent)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?)
}

async fn start_attempt(
    tx: &mut Transaction<'_, Sqlite>,
    job_id: i64,
    started_at: i64,
) -> Result<Applied, StoreError> {
    let row = sqlx::query(
        "INSERT INTO attempts (job_id, number, started_at) \
         VALUES (?, (SELECT COUNT(*) + 1 FROM attempts WHERE job_id = ?), ?) RETURNING id, number",
    )
    .bind(job_id)
    .bind(job_id)
    .bind(started_at)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("UPDATE jobs SET state = 'in_flight' WHERE id = ?")
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
    Ok(Applied::Started {
        attempt_id: row.get("id"),
        number: row.get("number"),
    })
}

async fn finish_attempt(
    tx: &mut Transaction<'_, Sqlite>,
    finish: &Finish,
) -> Result<(), StoreError> {
    let (outcome, error) = match &finish.outcome {
        Outcome::Succeeded { .. } => ("succeeded", None),
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
        "UPDATE attempts SET finished_at = ?, outcome = ?, request_id = ?, error_code = ?, error_message = ?, \
         http_status = ?, latency_ms = ? WHERE id = ?",
    )
    .bind(finish.finished_at)
    .bind(outcome)
    .bind(&finish.request_id)
    .bind(error.map(|e| &e.code))
    .bind(error.map(|e| &e.message))
    .bind(finish.http_status.map(i64::from))
    .bind(finish.latency_ms)
    .bind(finish.attempt_id)
    .execute(&mut **tx)
    .await?;

    let job_id = finish.job_id;
    let now = finish.finished_at;
    match &finish.outcome {
        Outcome::Succeeded { request_id } => {
            sqlx::query(
                "UPDATE jobs SET state = 'succeeded', request_id = ?, finished_at = ? WHERE id = ?",
            )
            .bind(request_id)
            .bind(now)
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE items SET status = 'succeeded', request_id = ?, error_code = NULL, error_message = NULL \
                 WHERE job_id = ? AND status = 'pending'",
            )
            .bind(request_id)
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
        }
        Outcome::Retry {
            error,
            next_attempt_at,
            give_up,
            ..
        } => {
            let (state, finished_at) = if *give_up {
                ("failed", Some(now))
            } else {
                ("queued", None)
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
            }
        }
        Outcome::Throttled {
            error,
            next_attempt_at,
        } => {
            let update = JobUpdate {
                state: "queued",
                next_attempt_at: Some(*next_attempt_at),
                finished_at: None,
                spent: 0,
                throttled: 1,
            };
            update.apply(tx, job_id, error).await?;
        }
        Outcome::Fatal { error } => {
            let update = JobUpdate {
                state: "queued",
                next_attempt_at: Some(now),
                finished_at: None,
                spent: 0,
                throttled: 0,
            };
            update.apply(tx, job_id, error).await?;
        }
        Outcome::Fail { error } => {
            let update = JobUpdate {
                state: "failed",
                next_attempt_at: None,
                finished_at: Some(now),
                spent: 0,
                throttled: 0,
            };
            update.apply(tx, job_id, error).await?;
            fail_items(tx, job_id, error).await?;
        }
        Outcome::Split { error, children } => {
            let parent = sqlx::query("SELECT run_id, region, force_stop FROM jobs WHERE id = ?")
                .bind(job_id)
                .fetch_one(&mut **tx)
                .await?;
            let (run_id, region, force_stop): (i64, String, i64) = (
                parent.get("run_id"),
                parent.get("region"),
                parent.get("force_stop"),
            );
            let update = JobUpdate {
                state: "split",
                next_attempt_at: None,
                finished_at: Some(now),
                spent: 0,
                throttled: 0,
            };
            update.apply(tx, job_id, error).await?;
            for (instance_ids, key_ids) in children {
                let child = insert_job(
                    tx,
                    run_id,
                    &region,
                    force_stop != 0,
                    instance_ids,
                    key_ids,
                    Some(job_id),
                    now,
                )
                .await?;
                sqlx::query(
                    "UPDATE items SET job_id = ? WHERE job_id = ? \
                     AND instance_id IN (SELECT value FROM json_each(?)) AND key_id IN (SELECT value FROM json_each(?))",
                )
                .bind(child)
                .bind(job_id)
                .bind(ids_json(instance_ids))
                .bind(ids_json(key_ids))
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    Ok(())
}

/// How an attempt's error changes its job.
struct JobUpdate {
    state: &'static str,
    /// When the job is due again; `None` keeps it.
    next_attempt_at: Option<i64>,
    finished_at: Option<i64>,
    /// Attempts of the Retry budget spent (0 or 1).
    spent: i64,
    /// Throttles counted (0 or 1).
    throttled: i64,
}

impl JobUpdate {
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        job_id: i64,
        error: &ErrorInfo,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = ?, next_attempt_at = COALESCE(?, next_attempt_at), finished_at = ?, \
             attempts = attempts + ?, throttles = throttles + ?, last_error_code = ?, last_error_message = ? \
             WHERE id = ?",
        )
        .bind(self.state)
        .bind(self.next_attempt_at)
        .bind(self.finished_at)
        .bind(self.spent)
        .bind(self.throttled)
        .bind(&error.code)
        .bind(&error.message)
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

async fn fail_items(
    tx: &mut Transaction<'_, Sqlite>,
    job_id: i64,
    error: &ErrorInfo,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE items SET status = 'failed', error_code = ?, error_message = ? WHERE job_id = ? AND status = 'pending'",
    )
    .bind(&error.code)
    .bind(&error.message)
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
