//! The executor's side of the store: the run lease, crash recovery, due jobs,
//! and the group-committed writes of attempt starts and outcomes.
//!
//! Every write here is a short transaction; none is held across a request. The
//! executor batches many [`Write`]s into one commit ([`Store::apply`]) so that
//! `synchronous=FULL` costs one fsync per batch rather than per request.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{Row, Sqlite, Transaction};

use super::states::{ItemStatus, JobKind, JobState, RunState, Verified};
use super::{Store, StoreError, now_ms};
use crate::cvm::Action;

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
    /// Its step in the instance's workflow (what follows its outcome).
    pub kind: JobKind,
    /// The API action it sends (its kind's).
    pub action: Action,
    pub region: String,
    pub force_stop: bool,
    pub instance_ids: Vec<String>,
    pub key_ids: Vec<String>,
    /// Action-specific JSON, as stored.
    pub payload: Option<String>,
    /// Retry-class failures so far (the `--max-attempts` budget).
    pub attempts: i64,
    pub pair_count: i64,
}

/// A job to add to a run's queue (see [`JobWriter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewQueuedJob {
    /// Its step in the instance's workflow; the action is the kind's.
    pub kind: JobKind,
    pub region: String,
    pub force_stop: bool,
    pub instance_ids: Vec<String>,
    pub key_ids: Vec<String>,
    pub payload: Option<String>,
    /// Jobs that must succeed before this one is due.
    pub after: Vec<i64>,
    /// The items this job works for (their `job_id` becomes this job's id); empty
    /// for jobs that only read (verification), whose items belong to other jobs.
    pub item_ids: Vec<i64>,
}

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

pub use crate::rules::{ErrorInfo, FollowUp};

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

/// Pair counts of a run, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairCounts {
    pub pending: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub rejected: i64,
    pub duplicate: i64,
    pub skipped: i64,
}

impl PairCounts {
    /// Valid, distinct pairs: the ones the executor works on.
    pub fn valid(&self) -> i64 {
        self.pending + self.succeeded + self.failed + self.skipped
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
    pub state: RunState,
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
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NoSuchRun(run_id))?;
        Ok(RunInfo {
            id: row.get("id"),
            state: row
                .get::<&str, _>("state")
                .parse()
                .map_err(StoreError::Corrupt)?,
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the run up, recording where it ended.
    pub async fn release_run(
        &self,
        run_id: i64,
        lease: &Lease,
        state: RunState,
        stop_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let finished_at = (state == RunState::Finished).then(now_ms);
        sqlx::query(
            "UPDATE runs SET owner_pid = NULL, owner_host = NULL, owner_token = NULL, heartbeat_at = NULL, \
             state = ?, stop_reason = ?, finished_at = COALESCE(?, finished_at) \
             WHERE id = ? AND owner_token = ?",
        )
        .bind(state.as_str())
        .bind(stop_reason)
        .bind(finished_at)
        .bind(run_id)
        .bind(&lease.token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the run as executing (first start time kept across resumes).
    pub async fn mark_running(&self, run_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET state = ?, stop_reason = NULL, finished_at = NULL, \
             started_at = COALESCE(started_at, ?) WHERE id = ?",
        )
        .bind(RunState::Running.as_str())
        .bind(now_ms())
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// After a crash: every attempt left open is marked `lost` (its outcome is unknown)
    /// and its job queued again, due now. Returns how many jobs were requeued.
    ///
    /// A lost attempt does not spend the job's budget: the crash was ours, not the API's.
    pub async fn recover_in_flight(&self, run_id: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE attempts SET outcome = 'lost', finished_at = ? \
             WHERE finished_at IS NULL AND job_id IN (SELECT id FROM jobs WHERE run_id = ?)",
        )
        .bind(now)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        let requeued = sqlx::query(
            "UPDATE jobs SET state = ?, next_attempt_at = ? WHERE run_id = ? AND state = ?",
        )
        .bind(JobState::Queued.as_str())
        .bind(now)
        .bind(run_id)
        .bind(JobState::InFlight.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(requeued)
    }

    /// Up to `limit` queued jobs due at `now`, earliest first: their time has come
    /// and every job they depend on has succeeded.
    /// `only` limits it to jobs of one action.
    pub async fn due_jobs(
        &self,
        run_id: i64,
        only: Option<Action>,
        now: i64,
        limit: i64,
    ) -> Result<Vec<QueuedJob>, StoreError> {
        self.due_jobs_except(run_id, only, now, limit, &[]).await
    }

    /// [`Store::due_jobs`] leaving out jobs of the given (action, region) routes
    /// (those whose lane is full, so that they do not hide the others).
    pub async fn due_jobs_except(
        &self,
        run_id: i64,
        only: Option<Action>,
        now: i64,
        limit: i64,
        except: &[(Action, String)],
    ) -> Result<Vec<QueuedJob>, StoreError> {
        let only = only.map(Action::name);
        let except: Vec<[&str; 2]> = except.iter().map(|(a, r)| [a.name(), r.as_str()]).collect();
        let rows = sqlx::query(
            "SELECT id, kind, action, region, force_stop, instance_ids, key_ids, payload, attempts, pair_count \
             FROM jobs j WHERE run_id = ? AND state = ? AND next_attempt_at <= ? \
             AND (? IS NULL OR action = ?) \
             AND NOT EXISTS (SELECT 1 FROM json_each(?) x \
                             WHERE json_extract(x.value, '$[0]') = j.action \
                             AND json_extract(x.value, '$[1]') = j.region) \
             AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.depends_on \
                             WHERE d.job_id = j.id AND p.state != ?) \
             ORDER BY next_attempt_at, id LIMIT ?",
        )
        .bind(run_id)
        .bind(JobState::Queued.as_str())
        .bind(now)
        .bind(only)
        .bind(only)
        .bind(serde_json::to_string(&except).unwrap_or_else(|_| "[]".into()))
        .bind(JobState::Succeeded.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.get("id");
                let action: &str = row.get("action");
                Ok(QueuedJob {
                    id,
                    kind: row
                        .get::<&str, _>("kind")
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))?,
                    action: Action::from_name(action).ok_or_else(|| {
                        StoreError::Corrupt(format!("job {id} has an unknown action {action:?}"))
                    })?,
                    region: row.get("region"),
                    force_stop: row.get::<i64, _>("force_stop") != 0,
                    instance_ids: parse_ids(row.get("instance_ids"), id)?,
                    key_ids: parse_ids(row.get("key_ids"), id)?,
                    payload: row.get("payload"),
                    attempts: row.get("attempts"),
                    pair_count: row.get("pair_count"),
                })
            })
            .collect()
    }

    /// When the earliest queued job that is not yet due at `now` falls due. Jobs due
    /// already are the dispatcher's to claim; jobs waiting for others are left out
    /// (they become due when those succeed, which a reply announces).
    pub async fn next_due_after(
        &self,
        run_id: i64,
        only: Option<Action>,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let only = only.map(Action::name);
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE run_id = ? AND state = ? AND next_attempt_at > ? \
             AND (? IS NULL OR action = ?)",
        )
        .bind(run_id)
        .bind(JobState::Queued.as_str())
        .bind(now)
        .bind(only)
        .bind(only)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Jobs not yet final (queued or in flight), of one action with `only`.
    pub async fn open_jobs(&self, run_id: i64, only: Option<Action>) -> Result<i64, StoreError> {
        let only = only.map(Action::name);
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND state IN (?, ?) AND (? IS NULL OR action = ?)",
        )
        .bind(run_id)
        .bind(JobState::Queued.as_str())
        .bind(JobState::InFlight.as_str())
        .bind(only)
        .bind(only)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Unbind pair counts (the input's pairs) by status.
    pub async fn pair_counts(&self, run_id: i64) -> Result<PairCounts, StoreError> {
        self.item_counts(run_id, Action::DisassociateInstancesKeyPairs)
            .await
    }

    /// A rotation's bind pairs (instance, new key) by status.
    pub async fn bind_counts(&self, run_id: i64) -> Result<PairCounts, StoreError> {
        self.item_counts(run_id, Action::AssociateInstancesKeyPairs)
            .await
    }

    async fn item_counts(&self, run_id: i64, action: Action) -> Result<PairCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM items WHERE run_id = ? AND bind = ? GROUP BY status",
        )
        .bind(run_id)
        .bind(action == Action::AssociateInstancesKeyPairs)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = PairCounts::default();
        for row in rows {
            let n: i64 = row.get("n");
            let status: ItemStatus = row
                .get::<&str, _>("status")
                .parse()
                .map_err(StoreError::Corrupt)?;
            *match status {
                ItemStatus::Pending => &mut counts.pending,
                ItemStatus::Succeeded => &mut counts.succeeded,
                ItemStatus::Failed => &mut counts.failed,
                ItemStatus::Rejected => &mut counts.rejected,
                ItemStatus::Duplicate => &mut counts.duplicate,
                ItemStatus::Skipped => &mut counts.skipped,
            } = n;
        }
        Ok(counts)
    }

    /// Every valid, distinct pair of a run with its status and proving RequestId, in input order.
    pub async fn pair_outcomes(&self, run_id: i64) -> Result<Vec<PairOutcome>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT region, instance_id, key_id, status, request_id, error_code FROM items \
             WHERE run_id = ? AND status IN ('pending', 'succeeded', 'failed', 'skipped') \
             AND bind = 0 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every bind pair of a run (a rotation's new keys) with its status and the
    /// RequestId of its accepted Associate, in id order.
    pub async fn bind_outcomes(&self, run_id: i64) -> Result<Vec<PairOutcome>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT region, instance_id, key_id, status, request_id, error_code FROM items \
             WHERE run_id = ? AND bind = 1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Failed pairs of a run by error code; a failed pair without a code (which
    /// keyfleet never writes) counts under `(none)`. The summary, `status` and
    /// `report` all read this one query.
    pub async fn failures_by_code(&self, run_id: i64) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT COALESCE(error_code, '(none)') AS code, COUNT(*) AS n FROM items \
             WHERE run_id = ? AND status = 'failed' GROUP BY error_code",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get("code"), row.get("n")))
            .collect())
    }

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

/// Inserts a job and moves its items into it (pending, not held, what an earlier job
/// recorded of them cleared).
pub(super) async fn add_job_with_items(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: i64,
    job: &NewQueuedJob,
    now: i64,
) -> Result<i64, StoreError> {
    let id = insert_job(tx, run_id, job, None, now).await?;
    for chunk in job.item_ids.chunks(500) {
        let list = ids_json_i64(chunk);
        sqlx::query(
            "UPDATE items SET job_id = ?, status = ?, held = 0, error_code = NULL, error_message = NULL, \
             request_id = NULL, verified = NULL, verified_at = NULL, verify_request_id = NULL \
             WHERE run_id = ? AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(id)
        .bind(ItemStatus::Pending.as_str())
        .bind(run_id)
        .bind(list)
        .execute(&mut **tx)
        .await?;
    }
    Ok(id)
}

pub(super) fn ids_json_i64(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())
}

pub(super) async fn insert_job(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: i64,
    job: &NewQueuedJob,
    parent: Option<i64>,
    now: i64,
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (run_id, kind, action, region, force_stop, instance_ids, key_ids, payload, pair_count, \
         state, next_attempt_at, parent_job_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(run_id)
    .bind(job.kind.as_str())
    .bind(job.kind.action().name())
    .bind(&job.region)
    .bind(job.force_stop as i64)
    .bind(ids_json(&job.instance_ids))
    .bind(ids_json(&job.key_ids))
    .bind(&job.payload)
    .bind((job.instance_ids.len() * job.key_ids.len()) as i64)
    .bind(JobState::Queued.as_str())
    .bind(now)
    .bind(parent)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    for prerequisite in &job.after {
        sqlx::query("INSERT INTO job_deps (job_id, depends_on) VALUES (?, ?)")
            .bind(id)
            .bind(prerequisite)
            .execute(&mut **tx)
            .await?;
    }
    Ok(id)
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
    let job_ids: Vec<i64> = starts.iter().map(|(_, job_id, _)| *job_id).collect();
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
    Ok(())
}

async fn start_attempt(
    tx: &mut Transaction<'_, Sqlite>,
    job_id: i64,
    started_at: i64,
) -> Result<Applied, StoreError> {
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
            super::follow::after_success(tx, job_id, finish.kind, now, &finish.follow_up).await?;
        }
        Outcome::Observed {
            request_id,
            verified,
            recheck_at,
            keys,
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
                let read = super::follow::Read { verified, keys };
                super::follow::after_read(tx, job_id, finish.kind, read, now, &finish.follow_up)
                    .await?;
            }
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
    let parent =
        sqlx::query("SELECT run_id, kind, region, force_stop, payload FROM jobs WHERE id = ?")
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

/// How an attempt's error changes its job.
pub(super) struct JobUpdate {
    pub state: JobState,
    /// When the job is due again; `None` keeps it.
    pub next_attempt_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Attempts of the Retry budget spent (0 or 1).
    pub spent: i64,
    /// Throttles counted (0 or 1).
    pub throttled: i64,
}

impl JobUpdate {
    pub(super) async fn apply(
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
        .bind(self.state.as_str())
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

pub(super) async fn fail_items(
    tx: &mut Transaction<'_, Sqlite>,
    job_id: i64,
    error: &ErrorInfo,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE items SET status = ?, error_code = ?, error_message = ? WHERE job_id = ? AND status = ?",
    )
    .bind(ItemStatus::Failed.as_str())
    .bind(&error.code)
    .bind(&error.message)
    .bind(job_id)
    .bind(ItemStatus::Pending.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plan::{Begin, NewItem, NewJob, NewRun};

    /// A store holding one run of `jobs` one-pair jobs (ids 1..=jobs).
    async fn store_with_jobs(dir: &tempfile::TempDir, name: &str, jobs: usize) -> Store {
        let store = Store::open(&dir.path().join(name)).await.unwrap();
        let run = NewRun {
            input_path: "t",
            input_sha256: "0",
            options: "{}",
            rows_read: jobs as u64,
            pairs: jobs as u64,
            duplicates: 0,
            rejected: 0,
            instances: jobs as u64,
            keys: 1,
            regions: 1,
        };
        let Begin::New(mut writer) = store.begin_plan(&run).unwrap() else {
            panic!("a fresh database");
        };
        let key = vec!["skey-00000001".to_string()];
        for n in 1..=jobs {
            let instance = vec![format!("ins-{n:08x}")];
            let job = writer
                .add_job(NewJob {
                    kind: JobKind::Unbind,
                    region: "ap-guangzhou",
                    force_stop: false,
                    instance_ids: &instance,
                    key_ids: &key,
                    payload: None,
                })
                .unwrap();
            let position = format!("line {}", n + 1);
            writer
                .add_items(|sink| {
                    sink.add(NewItem {
                        position: &position,
                        action: Action::DisassociateInstancesKeyPairs,
                        region: Some("ap-guangzhou"),
                        instance_id: Some(&instance[0]),
                        key_id: Some(&key[0]),
                        status: ItemStatus::Pending,
                        duplicate_of: None,
                        reason: None,
                        job_id: Some(job),
                        new_key_id: None,
                        held: false,
                    })
                    .map(|_| ())
                })
                .unwrap();
        }
        writer.commit().unwrap();
        store
    }

    fn start(job_id: i64) -> Write {
        Write::Start {
            job_id,
            started_at: 1_000 + job_id,
        }
    }

    fn finish(attempt_id: i64, job_id: i64, outcome: Outcome) -> Write {
        Write::Finish(Box::new(Finish {
            attempt_id,
            job_id,
            kind: JobKind::Unbind,
            follow_up: FollowUp::default(),
            finished_at: 2_000 + job_id,
            sent_at: 1_500 + job_id,
            latency_ms: 7,
            http_status: Some(200),
            request_id: Some(format!("reply-{job_id}")),
            endpoint: None,
            outcome,
        }))
    }

    fn succeeded(job_id: i64) -> Outcome {
        Outcome::Succeeded {
            request_id: format!("req-{job_id}"),
        }
    }

    fn retry(job_id: i64) -> Outcome {
        Outcome::Retry {
            error: ErrorInfo {
                code: "InternalError".into(),
                message: format!("job {job_id}"),
            },
            transport: false,
            next_attempt_at: 9_000,
            give_up: false,
        }
    }

    /// Every row the writes touch, as text.
    async fn dump(store: &Store) -> Vec<String> {
        let mut rows = Vec::new();
        for query in [
            "SELECT json_array(id, job_id, number, started_at, finished_at, sent_at, outcome, request_id, \
             error_code, error_message, http_status, latency_ms) FROM attempts ORDER BY id",
            "SELECT json_array(id, state, attempts, throttles, next_attempt_at, last_error_code, \
             last_error_message, request_id, finished_at) FROM jobs ORDER BY id",
            "SELECT json_array(id, job_id, status, request_id, error_code, error_message) FROM items ORDER BY id",
        ] {
            let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
                .fetch_all(&store.pool)
                .await
                .unwrap();
            rows.extend(found);
        }
        rows
    }

    /// The writes of one batch give the same replies and the same rows whether they
    /// are committed together (bulk starts and successes) or one commit each.
    #[tokio::test]
    async fn a_batch_records_what_its_writes_record_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let together = store_with_jobs(&dir, "together.db", 5).await;
        let alone = store_with_jobs(&dir, "alone.db", 5).await;
        for store in [&together, &alone] {
            // Job 5 was skipped after the dispatcher read it: its start is refused.
            sqlx::query("UPDATE jobs SET state = 'skipped' WHERE id = 5")
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let first = [start(1), start(2), start(3), start(5)];
        // Attempt ids 1..=3 are jobs 1..=3; job 4 starts in the same batch as the others end.
        let second = [
            finish(1, 1, succeeded(1)),
            start(4),
            finish(2, 2, retry(2)),
            finish(3, 3, succeeded(3)),
        ];
        let mut replies_together = together.apply(&first).await.unwrap();
        replies_together.extend(together.apply(&second).await.unwrap());
        let mut replies_alone = Vec::new();
        for write in first.iter().chain(&second) {
            replies_alone.extend(alone.apply(std::slice::from_ref(write)).await.unwrap());
        }
        assert_eq!(
            replies_together,
            [
                Applied::Started {
                    attempt_id: 1,
                    number: 1
                },
                Applied::Started {
                    attempt_id: 2,
                    number: 1
                },
                Applied::Started {
                    attempt_id: 3,
                    number: 1
                },
                Applied::NotQueued,
                Applied::Finished,
                Applied::Started {
                    attempt_id: 4,
                    number: 1
                },
                Applied::Finished,
                Applied::Finished,
            ]
        );
        assert_eq!(replies_together, replies_alone);
        assert_eq!(dump(&together).await, dump(&alone).await);
        // And what they record is what a success means: job, item and attempt proven.
        let (state, item, attempt): (String, String, String) = sqlx::query_as(
            "SELECT j.state || ' ' || j.request_id, i.status || ' ' || i.request_id, \
             a.outcome || ' ' || a.request_id || ' ' || a.sent_at FROM jobs j \
             JOIN items i ON i.job_id = j.id JOIN attempts a ON a.job_id = j.id WHERE j.id = 3",
        )
        .fetch_one(&together.pool)
        .await
        .unwrap();
        assert_eq!(
            (state.as_str(), item.as_str(), attempt.as_str()),
            (
                "succeeded req-3",
                "succeeded req-3",
                "succeeded reply-3 1503"
            )
        );
        // The retried job starts its second attempt as number 2.
        let again = together.apply(&[start(2)]).await.unwrap();
        assert_eq!(
            again,
            [Applied::Started {
                attempt_id: 5,
                number: 2
            }]
        );
    }

    /// A batch that names one job twice is applied write by write, in order.
    #[tokio::test]
    async fn a_batch_naming_a_job_twice_is_applied_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_jobs(&dir, "k.db", 1).await;
        let replies = store.apply(&[start(1), start(1)]).await.unwrap();
        assert_eq!(
            replies,
            [
                Applied::Started {
                    attempt_id: 1,
                    number: 1
                },
                Applied::NotQueued
            ]
        );
    }
}
