//! Jobs added after planning: [`JobWriter`] (one transaction; verification rounds and
//! tests use it) and [`Store::requeue`], which sends pairs again (`keyfleet retry`,
//! `verify --requeue`, the run's own resend of operations the cloud reported FAILED)
//! in one transaction: it selects the pairs, chunks them like a plan and queues them.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Row, Sqlite, Transaction};

use super::jobs::{NewQueuedJob, add_job, add_job_with_items, ids_json_i64};
use super::states::{ItemStatus, JobKind, RunState, Verified};
use super::{Store, StoreError, now_ms};
use crate::rules::keep_one_key::LAST_KEY;
use crate::rules::rotation::NOT_RELEASED;
use crate::rules::{Pair, ReadPayload, jobs_for_pairs};

/// Adds jobs (of any kind) to a run in one transaction; dropping it rolls back.
/// The typed counterpart of the planner's `PlanWriter` for everything after planning.
pub struct JobWriter {
    pub(super) tx: Transaction<'static, Sqlite>,
    run_id: i64,
    pub(super) now: i64,
    pub(super) added: u64,
}

impl JobWriter {
    /// Adds one job, due now (once its prerequisites succeed); returns its id. Its
    /// items, if any, become pending in it, with what an earlier job recorded of them
    /// cleared (that history stays in the earlier job's attempts).
    pub async fn add(&mut self, job: &NewQueuedJob) -> Result<i64, StoreError> {
        let id = add_job_with_items(&mut self.tx, self.run_id, job, self.now).await?;
        self.added += 1;
        Ok(id)
    }

    /// Commits; the run becomes `planned` again when jobs were added (it has work).
    pub async fn commit(mut self) -> Result<u64, StoreError> {
        if self.added > 0 {
            sqlx::query("UPDATE runs SET state = ?, finished_at = NULL WHERE id = ?")
                .bind(RunState::Planned.as_str())
                .bind(self.run_id)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(self.added)
    }
}

/// Which pairs [`Store::requeue`] sends again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue<'a> {
    /// `keyfleet retry`: failed pairs (with one of `codes`, any when empty), and what a
    /// rotation or `--keep-one-key` left undone: bind pairs that failed or were not
    /// confirmed (their instances' unbinds held again behind a new confirmation),
    /// unbinds `--keep-one-key` skipped (held again behind a new look).
    Failed { codes: &'a [String] },
    /// `verify --requeue`: succeeded unbind pairs verification found not applied
    /// (`still_bound`, `operating`, `operation_failed`).
    Unverified,
    /// The run's own resend: succeeded unbind pairs verified `operation_failed`, while
    /// each has been sent fewer than `max_attempts` times (the resend is counted).
    FailedOperations { max_attempts: i64 },
}

/// What [`Store::requeue`] queued again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Unbind pairs sent again.
    pub pairs: u64,
    /// A rotation's bind pairs sent again.
    pub binds: u64,
    /// Unbind pairs held again (behind a new confirmation or look).
    pub held: u64,
}

impl Requeued {
    pub fn total(&self) -> u64 {
        self.pairs + self.binds + self.held
    }
}

/// A pair to send again, with the ForceStop of the job it was in.
struct Again {
    pair: Pair,
    region: String,
    account: Option<String>,
    force_stop: bool,
}

/// What new jobs are grouped by: where they go, as whom, with which ForceStop.
type Group<'a> = (Option<&'a str>, &'a str, bool);

impl Store {
    /// Starts adding jobs to run `run_id` in one transaction (see [`JobWriter`]).
    pub async fn begin_jobs(&self, run_id: i64) -> Result<JobWriter, StoreError> {
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(JobWriter {
            tx,
            run_id,
            now: now_ms(),
            added: 0,
        })
    }

    /// Sends `what` again: the pairs go back to `pending` in new jobs, chunked like a
    /// plan (each keeps the ForceStop of the job it was in, and its attempt history),
    /// all in one transaction. `keyfleet resume` (or the run going on) sends them.
    pub async fn requeue(&self, run_id: i64, what: Requeue<'_>) -> Result<Requeued, StoreError> {
        let mut writer = self.begin_jobs(run_id).await?;
        let (status, verdicts, codes, max_sends): (_, &str, &[String], _) = match what {
            Requeue::Failed { codes } => (ItemStatus::Failed, "", codes, None),
            Requeue::Unverified => (
                ItemStatus::Succeeded,
                "('still_bound', 'operating', 'operation_failed')",
                &[],
                None,
            ),
            Requeue::FailedOperations { max_attempts } => (
                ItemStatus::Succeeded,
                "('operation_failed')",
                &[],
                Some(max_attempts),
            ),
        };
        let again = unbinds_of(&mut writer, status, verdicts, codes, max_sends).await?;
        let mut requeued = Requeued {
            pairs: again.len() as u64,
            ..Requeued::default()
        };
        let again = hold_for_power(&mut writer, again).await?;
        add_unbind_jobs(&mut writer, &again).await?;
        if let Requeue::Failed { codes } = what {
            requeue_rotation(&mut writer, codes, &mut requeued).await?;
        }
        writer.commit().await?;
        Ok(requeued)
    }

    /// Ends, as skipped, every unbind still held once the run has no open job left
    /// (nothing could release it any more). Every path of a rotation ends its holds
    /// itself; this is the net under them, so no row is ever left pending unseen.
    pub async fn end_stranded_holds(&self, run_id: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE items SET status = ?, held = 0, error_code = ?, error_message = ? \
             WHERE run_id = ? AND held = 1 AND status = ? AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE run_id = ? AND state IN (?, ?)) \
             AND NOT EXISTS (SELECT 1 FROM power p WHERE p.run_id = items.run_id \
                             AND p.region = items.region AND p.instance_id = items.instance_id \
                             AND p.state = 'waiting')",
        )
        .bind(ItemStatus::Skipped.as_str())
        .bind(NOT_RELEASED)
        .bind(
            "held until its instance's new keys were confirmed, but nothing left in the queue \
             could confirm them; its old key is still bound (keyfleet retry)",
        )
        .bind(run_id)
        .bind(ItemStatus::Pending.as_str())
        .bind(run_id)
        .bind(super::states::JobState::Queued.as_str())
        .bind(super::states::JobState::InFlight.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

/// The unbind pairs of `status` whose verdict is in `verdicts` (an SQL list, or empty
/// for any), with one of `codes` (any when empty), and with fewer than `max_sends`
/// operations sent (their resend counted), in input order.
async fn unbinds_of(
    writer: &mut JobWriter,
    status: ItemStatus,
    verdicts: &'static str,
    codes: &[String],
    max_sends: Option<i64>,
) -> Result<Vec<Again>, StoreError> {
    let verdict_filter = if verdicts.is_empty() {
        String::new()
    } else {
        format!("AND i.verified IN {verdicts}")
    };
    let sql = format!(
        "SELECT i.id, i.region, i.account, j.force_stop, i.instance_id, i.key_id, i.error_code FROM items i \
         JOIN jobs j ON j.id = i.job_id WHERE i.run_id = ? AND i.status = ? AND i.bind = 0 \
         {verdict_filter} AND (? IS NULL OR i.op_failures + 1 < ?) ORDER BY i.id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(writer.run_id)
        .bind(status.as_str())
        .bind(max_sends)
        .bind(max_sends)
        .fetch_all(&mut *writer.tx)
        .await?;
    let wanted =
        |code: Option<String>| codes.is_empty() || code.is_some_and(|c| codes.contains(&c));
    let again: Vec<Again> = rows
        .iter()
        .filter(|row| wanted(row.get("error_code")))
        .map(|row| Again {
            pair: Pair::new(row.get("id"), row.get("instance_id"), row.get("key_id")),
            region: row.get("region"),
            account: row.get("account"),
            force_stop: row.get::<i64, _>("force_stop") != 0,
        })
        .collect();
    if max_sends.is_some() {
        let ids: Vec<i64> = again.iter().map(|a| a.pair.item_id).collect();
        for chunk in ids.chunks(500) {
            sqlx::query(
                "UPDATE items SET op_failures = op_failures + 1 WHERE id IN (SELECT value FROM json_each(?))",
            )
            .bind(ids_json_i64(chunk))
            .execute(&mut *writer.tx)
            .await?;
        }
    }
    Ok(again)
}

/// In a live run, a pair to send again on an instance the run powered off and on (or
/// left RUNNING) needs it stopped again: it is held, and its instance waits for a slot
/// of the budget once more (`resume` admits it). Returns the pairs that need no power
/// cycle (their instance was not RUNNING): those are queued at once.
async fn hold_for_power(
    writer: &mut JobWriter,
    again: Vec<Again>,
) -> Result<Vec<Again>, StoreError> {
    let live: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM power WHERE run_id = ?)")
        .bind(writer.run_id)
        .fetch_one(&mut *writer.tx)
        .await?;
    if !live {
        return Ok(again);
    }
    let mut now = Vec::new();
    for a in again {
        let cycled = sqlx::query(
            "UPDATE power SET state = 'waiting', stopped_at = NULL, started_at = NULL, up_at = NULL, \
             reason = NULL WHERE run_id = ? AND region = ? AND instance_id = ? \
             AND (state IN ('up', 'waiting') OR (state = 'not_stopped' AND reason LIKE 'StopInstances%'))",
        )
        .bind(writer.run_id)
        .bind(&a.region)
        .bind(&a.pair.instance_id)
        .execute(&mut *writer.tx)
        .await?
        .rows_affected();
        if cycled == 0 {
            now.push(a);
            continue;
        }
        sqlx::query(
            "UPDATE items SET status = ?, held = 1, job_id = NULL, error_code = NULL, error_message = NULL, \
             request_id = NULL, verified = NULL, verified_at = NULL, verify_request_id = NULL WHERE id = ?",
        )
        .bind(ItemStatus::Pending.as_str())
        .bind(a.pair.item_id)
        .execute(&mut *writer.tx)
        .await?;
        writer.added += 1;
    }
    if writer.added > 0 {
        sqlx::query(
            "UPDATE runs SET admissions = NULL WHERE id = ? AND admissions NOT LIKE 'halted%'",
        )
        .bind(writer.run_id)
        .execute(&mut *writer.tx)
        .await?;
    }
    Ok(now)
}

/// Queues unbind jobs for `again`, chunked per (account, region, ForceStop).
async fn add_unbind_jobs(writer: &mut JobWriter, again: &[Again]) -> Result<(), StoreError> {
    let mut groups: BTreeMap<Group<'_>, Vec<Pair>> = BTreeMap::new();
    for a in again {
        groups
            .entry((a.account.as_deref(), &a.region, a.force_stop))
            .or_default()
            .push(a.pair.clone());
    }
    add_jobs(writer, JobKind::Unbind, groups).await
}

async fn add_jobs(
    writer: &mut JobWriter,
    kind: JobKind,
    groups: BTreeMap<Group<'_>, Vec<Pair>>,
) -> Result<(), StoreError> {
    for ((account, region, force_stop), pairs) in groups {
        for mut job in jobs_for_pairs(kind, region, force_stop, &pairs, writer.now) {
            job.account = account.map(str::to_string);
            add_job(&mut writer.tx, writer.run_id, job, writer.now).await?;
            writer.added += 1;
        }
    }
    Ok(())
}

/// `keyfleet retry` for what a rotation or `--keep-one-key` left undone: bind pairs
/// that failed (with one of `codes`, any when empty) or that the cloud did not show
/// bound go into new bind jobs, and the unbinds their instances skipped are held
/// again; unbinds `--keep-one-key` skipped are held again behind a new look.
async fn requeue_rotation(
    writer: &mut JobWriter,
    codes: &[String],
    requeued: &mut Requeued,
) -> Result<(), StoreError> {
    let run_id = writer.run_id;
    let rows = sqlx::query(
        // A bind pair that succeeded has no error code of its own: the code its
        // instance's skipped unbinds carry says why (`retry --code` matches it).
        "SELECT i.id, i.region, i.account, j.force_stop, i.instance_id, i.key_id, \
                COALESCE(i.error_code, (SELECT u.error_code FROM items u \
                    WHERE u.run_id = i.run_id AND u.region = i.region \
                    AND u.instance_id = i.instance_id AND u.bind = 0 AND u.status = ? \
                    LIMIT 1)) AS error_code \
         FROM items i JOIN jobs j ON j.id = i.job_id WHERE i.run_id = ? AND i.bind = 1 \
         AND (i.status = ? OR (i.status = ? AND i.verified IS NOT NULL AND i.verified != ?) \
              OR EXISTS (SELECT 1 FROM items u WHERE u.run_id = i.run_id AND u.region = i.region \
                         AND u.instance_id = i.instance_id AND u.bind = 0 AND u.status = ? \
                         AND u.error_code = ?)) \
         ORDER BY i.region, i.instance_id, i.key_id",
    )
    .bind(ItemStatus::Skipped.as_str())
    .bind(run_id)
    .bind(ItemStatus::Failed.as_str())
    .bind(ItemStatus::Succeeded.as_str())
    .bind(Verified::Bound.as_str())
    .bind(ItemStatus::Skipped.as_str())
    .bind(NOT_RELEASED)
    .fetch_all(&mut *writer.tx)
    .await?;
    let wanted =
        |code: Option<String>| codes.is_empty() || code.is_some_and(|c| codes.contains(&c));
    let mut binds: BTreeMap<(Option<String>, String, bool), Vec<Pair>> = BTreeMap::new();
    for row in rows {
        if !wanted(row.get("error_code")) {
            continue;
        }
        binds
            .entry((
                row.get("account"),
                row.get("region"),
                row.get::<i64, _>("force_stop") != 0,
            ))
            .or_default()
            .push(Pair::new(
                row.get("id"),
                row.get("instance_id"),
                row.get("key_id"),
            ));
    }
    for ((account, region, force_stop), pairs) in &binds {
        requeued.binds += pairs.len() as u64;
        let group = BTreeMap::from([(
            (account.as_deref(), region.as_str(), *force_stop),
            pairs.clone(),
        )]);
        add_jobs(writer, JobKind::Bind, group).await?;
        let instances: Vec<String> = pairs
            .iter()
            .map(|p| p.instance_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for chunk in instances.chunks(500) {
            requeued.held += sqlx::query(
                "UPDATE items SET status = ?, held = 1, job_id = NULL, error_code = NULL, \
                 error_message = NULL WHERE run_id = ? AND region = ? AND bind = 0 \
                 AND status = ? AND new_key_id IS NOT NULL \
                 AND instance_id IN (SELECT value FROM json_each(?))",
            )
            .bind(ItemStatus::Pending.as_str())
            .bind(run_id)
            .bind(region)
            .bind(ItemStatus::Skipped.as_str())
            .bind(serde_json::to_string(chunk).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *writer.tx)
            .await?
            .rows_affected();
        }
    }
    if codes.is_empty() || codes.iter().any(|c| c == LAST_KEY) {
        look_again(writer, requeued).await?;
    }
    Ok(())
}

/// Unbinds `--keep-one-key` skipped are held again behind a new look.
async fn look_again(writer: &mut JobWriter, requeued: &mut Requeued) -> Result<(), StoreError> {
    let run_id = writer.run_id;
    let rows = sqlx::query(
        "SELECT i.id, i.region, i.account, i.instance_id FROM items i WHERE i.run_id = ? AND i.bind = 0 \
         AND i.status = ? AND i.error_code = ? AND i.new_key_id IS NULL \
         ORDER BY i.account, i.region, i.instance_id",
    )
    .bind(run_id)
    .bind(ItemStatus::Skipped.as_str())
    .bind(LAST_KEY)
    .fetch_all(&mut *writer.tx)
    .await?;
    let force_stop: bool = sqlx::query_scalar(
        "SELECT COALESCE(json_extract(options, '$.force_stop'), 0) FROM runs WHERE id = ?",
    )
    .bind(run_id)
    .fetch_one(&mut *writer.tx)
    .await?;
    let mut regions: BTreeMap<(Option<String>, String), BTreeSet<String>> = BTreeMap::new();
    for row in &rows {
        regions
            .entry((row.get("account"), row.get("region")))
            .or_default()
            .insert(row.get("instance_id"));
    }
    for chunk in rows.chunks(500) {
        let ids: Vec<i64> = chunk.iter().map(|r| r.get("id")).collect();
        requeued.held += sqlx::query(
            "UPDATE items SET status = ?, held = 1, job_id = NULL, error_code = NULL, \
             error_message = NULL WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(ItemStatus::Pending.as_str())
        .bind(ids_json_i64(&ids))
        .execute(&mut *writer.tx)
        .await?
        .rows_affected();
    }
    let look = ReadPayload::default().encode();
    for ((account, region), instances) in regions {
        let instances: Vec<String> = instances.into_iter().collect();
        for batch in instances.chunks(crate::ids::MAX_IDS_PER_REQUEST) {
            writer
                .add(&NewQueuedJob {
                    kind: JobKind::Look,
                    region: region.clone(),
                    account: account.clone(),
                    force_stop,
                    instance_ids: batch.to_vec(),
                    key_ids: Vec::new(),
                    payload: Some(look.clone()),
                    after: Vec::new(),
                    item_ids: Vec::new(),
                })
                .await?;
        }
    }
    Ok(())
}
