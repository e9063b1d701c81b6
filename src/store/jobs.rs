//! The rows every writer shares: inserting a job (and moving its items into it),
//! failing a job's items, the update an attempt's error makes to its job.

use sqlx::{Sqlite, Transaction};

use super::StoreError;
use super::states::{ItemStatus, JobKind, JobState};
use crate::rules::ErrorInfo;

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

/// Ids as stored (a JSON array).
pub(super) fn ids_json(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())
}
