//! The rows every writer shares: inserting a job (and moving its items into it),
//! failing a job's items, the update an attempt's error makes to its job.

use sqlx::{Row, Sqlite, Transaction};

use super::StoreError;
use super::states::{ItemStatus, JobKind, JobState};
use crate::rules::{ErrorInfo, NewJob, Pair};

/// A job to add to a run's queue (see [`JobWriter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewQueuedJob {
    /// Its step in the instance's workflow; the action is the kind's.
    pub kind: JobKind,
    pub region: String,
    /// The account its requests are signed as (`None`: the run's own).
    pub account: Option<String>,
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
        "INSERT INTO jobs (run_id, kind, action, region, account, force_stop, instance_ids, key_ids, payload, pair_count, \
         state, next_attempt_at, parent_job_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(run_id)
    .bind(job.kind.as_str())
    .bind(job.kind.action().name())
    .bind(&job.region)
    .bind(&job.account)
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

/// The statuses of the pairs a run plans to act on (rejected and duplicate rows are
/// not), as a JSON array for `status IN (SELECT value FROM json_each(?))`.
pub(super) fn planned_statuses_json() -> String {
    let planned = [
        ItemStatus::Pending,
        ItemStatus::Succeeded,
        ItemStatus::Failed,
        ItemStatus::Skipped,
    ]
    .map(|s| s.as_str().to_string());
    serde_json::to_string(&planned).unwrap_or_else(|_| "[]".into())
}

/// Ids as stored (a JSON array).
pub(super) fn ids_json(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())
}

/// Inserts a job an effect adds, due at its time.
pub(super) async fn add_job(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: i64,
    job: NewJob,
    now: i64,
) -> Result<i64, StoreError> {
    let due_at = job.due_at;
    let new = NewQueuedJob {
        kind: job.kind,
        region: job.region,
        account: job.account,
        force_stop: job.force_stop,
        instance_ids: job.instance_ids,
        key_ids: job.key_ids,
        payload: job.payload,
        after: Vec::new(),
        item_ids: job.item_ids,
    };
    let id = add_job_with_items(tx, run_id, &new, now).await?;
    if due_at != now {
        sqlx::query("UPDATE jobs SET next_attempt_at = ? WHERE id = ?")
            .bind(due_at)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(id)
}

/// The held unbind pairs of some instances of a run in one region, in instance and
/// key order.
pub(super) async fn held_items(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: i64,
    region: &str,
    instances: &[String],
    bind: bool,
) -> Result<Vec<Pair>, StoreError> {
    let mut held = Vec::new();
    for chunk in instances.chunks(500) {
        let rows = sqlx::query(
            "SELECT id, instance_id, key_id FROM items WHERE run_id = ? AND region = ? AND held = 1 \
             AND instance_id IN (SELECT value FROM json_each(?)) AND status = ? AND bind = ?",
        )
        .bind(run_id)
        .bind(region)
        .bind(serde_json::to_string(chunk).unwrap_or_else(|_| "[]".into()))
        .bind(ItemStatus::Pending.as_str())
        .bind(bind)
        .fetch_all(&mut **tx)
        .await?;
        held.extend(
            rows.iter()
                .map(|r| Pair::new(r.get("id"), r.get("instance_id"), r.get("key_id"))),
        );
    }
    held.sort_by(|a, b| (&a.instance_id, &a.key_id).cmp(&(&b.instance_id, &b.key_id)));
    Ok(held)
}
