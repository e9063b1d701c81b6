//! What follows an outcome in a rotation (and a `--keep-one-key` run), inside the
//! transaction that records the outcome, so a crash never separates the two.
//!
//! - An accepted Associate job: a confirmation (`DescribeInstances`, [`Purpose::Confirm`])
//!   of its bind items is queued, due [`FIRST_LOOK_MS`] later.
//! - A confirmation's verdicts: a bind item the cloud reports FAILED (or not bound) is
//!   sent again in a new Associate job, up to `--max-attempts` times; an instance
//!   whose every new key is `bound` has its held unbinds released, chunked into
//!   Disassociate jobs (<= 100 x 100, identical key sets) as they become ready; an
//!   instance whose new key cannot be bound has them skipped with the reason
//!   (`new key skey-... not bound: <code>`). Its old keys stay.
//! - An Associate job that failed for good: its instances' held unbinds are skipped;
//!   a key the API says does not exist (`InvalidKeyPairId.*`) stops every other
//!   Associate job of that key, so the whole rotation to it ends cleanly.
//! - A `--keep-one-key` look ([`Purpose::Precheck`]): an instance left with a key
//!   after its held unbinds has them released; one that would be left with none has
//!   them skipped, with the keys it holds in the reason.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Row, Sqlite, Transaction};

use super::StoreError;
use super::queue::{
    ErrorInfo, FollowUp, JobUpdate, NewQueuedJob, add_job_with_items, fail_items, ids_json_i64,
};
use super::states::{ItemStatus, JobState, Verified};
use super::verify::{Purpose, VerifyItem, VerifyPayload};
use crate::cvm::Action;
use crate::plan::{PairRef, chunk};
use crate::taxonomy::{Scope, classify};

/// How long after an Associate is accepted its confirmation first looks (its
/// operation is asynchronous; looking sooner mostly sees it OPERATING).
pub const FIRST_LOOK_MS: i64 = 1_000;

/// The code recorded on an unbind skipped because `--keep-one-key` found it would
/// leave its instance with no key.
pub const LAST_KEY: &str = "KeepOneKey.LastKey";

type Tx<'a> = Transaction<'a, Sqlite>;

/// An item of a run as a follow-up handles it: (item id, instance id, key id).
type ItemPair = (i64, String, String);

/// The parts of a job a follow-up needs.
struct JobRow {
    run_id: i64,
    region: String,
    force_stop: bool,
    instance_ids: Vec<String>,
    key_ids: Vec<String>,
    payload: Option<String>,
}

async fn job_row(tx: &mut Tx<'_>, job_id: i64) -> Result<JobRow, StoreError> {
    let row = sqlx::query(
        "SELECT run_id, region, force_stop, instance_ids, key_ids, payload FROM jobs WHERE id = ?",
    )
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    let ids = |column: &str| -> Result<Vec<String>, StoreError> {
        serde_json::from_str(row.get::<&str, _>(column))
            .map_err(|e| StoreError::Corrupt(format!("job {job_id} has unreadable ids: {e}")))
    };
    Ok(JobRow {
        run_id: row.get("run_id"),
        region: row.get("region"),
        force_stop: row.get::<i64, _>("force_stop") != 0,
        instance_ids: ids("instance_ids")?,
        key_ids: ids("key_ids")?,
        payload: row.get("payload"),
    })
}

/// An accepted Associate job: queue the confirmation of its bind items.
pub(super) async fn confirm_later(
    tx: &mut Tx<'_>,
    job_id: i64,
    now: i64,
    follow_up: &FollowUp,
) -> Result<(), StoreError> {
    let job = job_row(tx, job_id).await?;
    let rows = sqlx::query(
        "SELECT id, instance_id, key_id, request_id FROM items WHERE job_id = ? AND status = ? \
         ORDER BY instance_id, key_id",
    )
    .bind(job_id)
    .bind(ItemStatus::Succeeded.as_str())
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let items: Vec<VerifyItem> = rows
        .iter()
        .map(|row| VerifyItem {
            item_id: row.get("id"),
            instance_id: row.get("instance_id"),
            key_id: row.get("key_id"),
            request_id: row.get("request_id"),
            bind: true,
        })
        .collect();
    let instance_ids: Vec<String> = items
        .iter()
        .map(|i| i.instance_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let payload = VerifyPayload {
        purpose: Purpose::Confirm,
        recheck_until: now + FIRST_LOOK_MS + follow_up.confirm_wait_ms,
        items,
    };
    let confirm = NewQueuedJob {
        action: Action::DescribeInstances,
        region: job.region,
        force_stop: job.force_stop,
        instance_ids,
        key_ids: job.key_ids,
        payload: Some(payload.encode()?),
        after: Vec::new(),
        item_ids: Vec::new(),
    };
    let id = add_job_with_items(tx, job.run_id, &confirm, now).await?;
    sqlx::query("UPDATE jobs SET next_attempt_at = ? WHERE id = ?")
        .bind(now + FIRST_LOOK_MS)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A confirmation's verdicts are recorded: send again, release, or skip.
pub(super) async fn confirmed(
    tx: &mut Tx<'_>,
    job_id: i64,
    verified: &[(i64, Verified)],
    now: i64,
    follow_up: &FollowUp,
) -> Result<(), StoreError> {
    let job = job_row(tx, job_id).await?;
    let verdict: BTreeMap<i64, Verified> = verified.iter().copied().collect();
    let rows = sqlx::query(
        "SELECT id, instance_id, key_id, op_failures FROM items \
         WHERE id IN (SELECT value FROM json_each(?)) ORDER BY instance_id, key_id",
    )
    .bind(ids_json_i64(&verdict.keys().copied().collect::<Vec<_>>()))
    .fetch_all(&mut **tx)
    .await?;
    let mut resend: Vec<ItemPair> = Vec::new();
    let mut lost: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut bound: BTreeSet<String> = BTreeSet::new();
    for row in &rows {
        let id: i64 = row.get("id");
        let instance: String = row.get("instance_id");
        let key: String = row.get("key_id");
        match verdict.get(&id).copied() {
            Some(Verified::Bound) => {
                bound.insert(instance);
            }
            Some(v @ (Verified::OperationFailed | Verified::NotBound))
                if row.get::<i64, _>("op_failures") + 1 < follow_up.max_attempts =>
            {
                tracing::info!(item = id, verdict = %v, "an Associate the cloud did not apply is sent again");
                resend.push((id, instance, key));
            }
            Some(v) => {
                lost.entry(instance)
                    .or_insert((key, v.as_str().to_string()));
            }
            None => {}
        }
    }
    if !resend.is_empty() {
        for chunk in resend.chunks(500) {
            let ids: Vec<i64> = chunk.iter().map(|r| r.0).collect();
            sqlx::query(
                "UPDATE items SET op_failures = op_failures + 1 WHERE id IN (SELECT value FROM json_each(?))",
            )
            .bind(ids_json_i64(&ids))
            .execute(&mut **tx)
            .await?;
        }
        let pairs: Vec<(i64, &str, &str)> = resend
            .iter()
            .map(|(id, i, k)| (*id, i.as_str(), k.as_str()))
            .collect();
        add_jobs(tx, &job, Action::AssociateInstancesKeyPairs, &pairs, now).await?;
    }
    for (instance, (key, code)) in &lost {
        let reason = ErrorInfo {
            code: code.clone(),
            message: format!("new key {key} not bound: {code}"),
        };
        skip_held(
            tx,
            job.run_id,
            &job.region,
            std::slice::from_ref(instance),
            &reason,
        )
        .await?;
    }
    // An instance is ready when every bind item it has in the run is bound.
    let mut ready = Vec::new();
    for instance in bound {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM items WHERE run_id = ? AND region = ? AND instance_id = ? \
             AND bind = 1 AND (status != ? OR verified IS NOT ?)",
        )
        .bind(job.run_id)
        .bind(&job.region)
        .bind(&instance)
        .bind(ItemStatus::Succeeded.as_str())
        .bind(Verified::Bound.as_str())
        .fetch_one(&mut **tx)
        .await?;
        if waiting == 0 {
            ready.push(instance);
        }
    }
    release(tx, &job, &ready, now).await
}

/// A `--keep-one-key` look: release the instances that keep a key, skip the others.
pub(super) async fn looked(
    tx: &mut Tx<'_>,
    job_id: i64,
    keys: &[(String, Vec<String>)],
    now: i64,
) -> Result<(), StoreError> {
    let job = job_row(tx, job_id).await?;
    let seen: BTreeMap<&str, &[String]> = keys
        .iter()
        .map(|(i, k)| (i.as_str(), k.as_slice()))
        .collect();
    let held = held_items(tx, &job, &job.instance_ids).await?;
    let mut removing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (_, instance, key) in &held {
        removing.entry(instance).or_default().push(key);
    }
    let mut ready = Vec::new();
    for (instance, removed) in removing {
        let refusal = match seen.get(instance) {
            None => Some(ErrorInfo {
                code: "InvalidInstanceId.NotFound".into(),
                message: format!("--keep-one-key: DescribeInstances does not know {instance}"),
            }),
            Some(bound) if bound.iter().any(|k| !removed.contains(&k.as_str())) => None,
            Some(bound) => Some(ErrorInfo {
                code: LAST_KEY.into(),
                message: format!(
                    "--keep-one-key: unbinding {} would leave {instance} with no key (it holds {}); \
                     nothing was unbound from it",
                    removed.join(" "),
                    if bound.is_empty() {
                        "none".to_string()
                    } else {
                        bound.join(" ")
                    }
                ),
            }),
        };
        match refusal {
            None => ready.push(instance.to_string()),
            Some(reason) => {
                let one = [instance.to_string()];
                skip_held(tx, job.run_id, &job.region, &one, &reason).await?;
            }
        }
    }
    release(tx, &job, &ready, now).await
}

/// An Associate job failed for good: its instances keep their old keys. A key the
/// API does not know stops the rest of the rotation to it.
pub(super) async fn bind_failed(
    tx: &mut Tx<'_>,
    job_id: i64,
    error: &ErrorInfo,
    now: i64,
) -> Result<(), StoreError> {
    let job = job_row(tx, job_id).await?;
    let reason = ErrorInfo {
        code: error.code.clone(),
        message: format!(
            "new key {} not bound: {}",
            job.key_ids.join(" "),
            error.code
        ),
    };
    skip_held(tx, job.run_id, &job.region, &job.instance_ids, &reason).await?;
    let key_scoped = classify(Action::AssociateInstancesKeyPairs, &error.code).scope == Scope::Key;
    let [key] = job.key_ids.as_slice() else {
        return Ok(());
    };
    if !key_scoped {
        return Ok(());
    }
    let others = sqlx::query(
        "SELECT id, region, instance_ids FROM jobs WHERE run_id = ? AND action = ? AND state = ? \
         AND EXISTS (SELECT 1 FROM json_each(jobs.key_ids) WHERE value = ?)",
    )
    .bind(job.run_id)
    .bind(Action::AssociateInstancesKeyPairs.name())
    .bind(JobState::Queued.as_str())
    .bind(key)
    .fetch_all(&mut **tx)
    .await?;
    let stopped = ErrorInfo {
        code: error.code.clone(),
        message: format!(
            "not sent: job {job_id} found that new key {key} cannot be bound ({}: {})",
            error.code, error.message
        ),
    };
    for other in others {
        let other_id: i64 = other.get("id");
        let instances: Vec<String> = serde_json::from_str(other.get::<&str, _>("instance_ids"))
            .map_err(|e| StoreError::Corrupt(format!("job {other_id} has unreadable ids: {e}")))?;
        let update = JobUpdate {
            state: JobState::Failed,
            next_attempt_at: None,
            finished_at: Some(now),
            spent: 0,
            throttled: 0,
        };
        update.apply(tx, other_id, &stopped).await?;
        fail_items(tx, other_id, &stopped).await?;
        let region: String = other.get("region");
        skip_held(tx, job.run_id, &region, &instances, &reason).await?;
    }
    Ok(())
}

/// A confirmation or a `--keep-one-key` look failed for good: without the cloud's
/// word nothing held is unbound.
pub(super) async fn look_failed(
    tx: &mut Tx<'_>,
    job_id: i64,
    error: &ErrorInfo,
) -> Result<(), StoreError> {
    let job = job_row(tx, job_id).await?;
    let purpose = job
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_str::<VerifyPayload>(p).ok())
        .map(|p| p.purpose)
        .unwrap_or_default();
    let message = match purpose {
        Purpose::Verify => return Ok(()),
        Purpose::Confirm => format!(
            "new key {} not bound: not confirmed ({})",
            job.key_ids.join(" "),
            error.code
        ),
        Purpose::Precheck => format!(
            "--keep-one-key: could not look at the instance ({})",
            error.code
        ),
    };
    let reason = ErrorInfo {
        code: error.code.clone(),
        message,
    };
    skip_held(tx, job.run_id, &job.region, &job.instance_ids, &reason).await
}

/// The held unbind items of some instances of the job's run and region:
/// (id, instance, key), in instance and key order.
async fn held_items(
    tx: &mut Tx<'_>,
    job: &JobRow,
    instances: &[String],
) -> Result<Vec<ItemPair>, StoreError> {
    let mut held = Vec::new();
    for chunk in instances.chunks(500) {
        let rows = sqlx::query(
            "SELECT id, instance_id, key_id FROM items WHERE run_id = ? AND region = ? AND held = 1 \
             AND instance_id IN (SELECT value FROM json_each(?)) AND status = ?",
        )
        .bind(job.run_id)
        .bind(&job.region)
        .bind(serde_json::to_string(chunk).unwrap_or_else(|_| "[]".into()))
        .bind(ItemStatus::Pending.as_str())
        .fetch_all(&mut **tx)
        .await?;
        held.extend(
            rows.iter()
                .map(|r| (r.get("id"), r.get("instance_id"), r.get("key_id"))),
        );
    }
    held.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
    Ok(held)
}

/// Releases the held unbinds of `instances` into Disassociate jobs.
async fn release(
    tx: &mut Tx<'_>,
    job: &JobRow,
    instances: &[String],
    now: i64,
) -> Result<(), StoreError> {
    if instances.is_empty() {
        return Ok(());
    }
    let held = held_items(tx, job, instances).await?;
    let pairs: Vec<(i64, &str, &str)> = held
        .iter()
        .map(|(id, i, k)| (*id, i.as_str(), k.as_str()))
        .collect();
    add_jobs(tx, job, Action::DisassociateInstancesKeyPairs, &pairs, now).await
}

/// Chunks (item, instance, key) pairs of the job's region into jobs of `action`
/// (identical key sets, <= 100 x 100) and moves the items into them.
async fn add_jobs(
    tx: &mut Tx<'_>,
    job: &JobRow,
    action: Action,
    pairs: &[(i64, &str, &str)],
    now: i64,
) -> Result<(), StoreError> {
    let specs = chunk(
        pairs.iter().map(|(_, instance_id, key_id)| PairRef {
            region: &job.region,
            instance_id,
            key_id,
        }),
        job.force_stop,
    );
    for spec in specs {
        let item_ids = pairs
            .iter()
            .filter(|(_, i, k)| {
                spec.instance_ids
                    .binary_search_by(|x| x.as_str().cmp(i))
                    .is_ok()
                    && spec.key_ids.binary_search_by(|x| x.as_str().cmp(k)).is_ok()
            })
            .map(|(id, _, _)| *id)
            .collect();
        let new = NewQueuedJob {
            action,
            region: spec.region,
            force_stop: spec.force_stop,
            instance_ids: spec.instance_ids,
            key_ids: spec.key_ids,
            payload: None,
            after: Vec::new(),
            item_ids,
        };
        add_job_with_items(tx, job.run_id, &new, now).await?;
    }
    Ok(())
}

/// Ends the held unbinds of `instances` as skipped, with the reason.
async fn skip_held(
    tx: &mut Tx<'_>,
    run_id: i64,
    region: &str,
    instances: &[String],
    reason: &ErrorInfo,
) -> Result<(), StoreError> {
    for chunk in instances.chunks(500) {
        sqlx::query(
            "UPDATE items SET status = ?, held = 0, error_code = ?, error_message = ? \
             WHERE run_id = ? AND region = ? AND held = 1 AND status = ? \
             AND instance_id IN (SELECT value FROM json_each(?))",
        )
        .bind(ItemStatus::Skipped.as_str())
        .bind(&reason.code)
        .bind(&reason.message)
        .bind(run_id)
        .bind(region)
        .bind(ItemStatus::Pending.as_str())
        .bind(serde_json::to_string(chunk).unwrap_or_else(|_| "[]".into()))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The code of an unbind that stayed held with nothing left to release it (a
/// safety net: every path of a rotation ends a hold itself).
pub const NOT_RELEASED: &str = "KeyFleet.NotReleased";

impl super::Store {
    /// `keyfleet retry` for what a rotation or `--keep-one-key` left undone: bind
    /// pairs that failed (with one of `codes`, any when empty) or that the cloud did
    /// not show bound go into new Associate jobs, and the unbinds their instances
    /// skipped are held again; unbinds `--keep-one-key` skipped are held again behind
    /// a new look. Returns (bind pairs, unbind pairs) requeued.
    pub async fn requeue_rotation(
        &self,
        run_id: i64,
        codes: &[String],
    ) -> Result<(u64, u64), StoreError> {
        let mut writer = self.begin_jobs(run_id).await?;
        let tx = &mut writer.tx;
        let rows = sqlx::query(
            // A bind pair that succeeded has no error code of its own: the code its
            // instance's skipped unbinds carry says why (`retry --code` matches it).
            "SELECT i.id, i.region, j.force_stop, i.instance_id, i.key_id, \
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
        .fetch_all(&mut **tx)
        .await?;
        let wanted =
            |code: Option<String>| codes.is_empty() || code.is_some_and(|c| codes.contains(&c));
        // (region, force_stop) -> (item, instance, key)
        let mut binds: BTreeMap<(String, bool), Vec<ItemPair>> = BTreeMap::new();
        for row in rows {
            if !wanted(row.get("error_code")) {
                continue;
            }
            binds
                .entry((row.get("region"), row.get::<i64, _>("force_stop") != 0))
                .or_default()
                .push((row.get("id"), row.get("instance_id"), row.get("key_id")));
        }
        let (mut bind_pairs, mut held) = (0u64, 0u64);
        for ((region, force_stop), pairs) in &binds {
            let job = JobRow {
                run_id,
                region: region.clone(),
                force_stop: *force_stop,
                instance_ids: Vec::new(),
                key_ids: Vec::new(),
                payload: None,
            };
            let refs: Vec<(i64, &str, &str)> = pairs
                .iter()
                .map(|(id, i, k)| (*id, i.as_str(), k.as_str()))
                .collect();
            add_jobs(
                tx,
                &job,
                Action::AssociateInstancesKeyPairs,
                &refs,
                writer.now,
            )
            .await?;
            writer.added += 1;
            bind_pairs += pairs.len() as u64;
            let instances: Vec<String> = pairs
                .iter()
                .map(|(_, i, _)| i.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for chunk in instances.chunks(500) {
                held += sqlx::query(
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
                .execute(&mut **tx)
                .await?
                .rows_affected();
            }
        }
        if codes.is_empty() || codes.iter().any(|c| c == LAST_KEY) {
            let rows = sqlx::query(
                "SELECT i.id, i.region, i.instance_id FROM items i WHERE i.run_id = ? AND i.bind = 0 \
                 AND i.status = ? AND i.error_code = ? AND i.new_key_id IS NULL \
                 ORDER BY i.region, i.instance_id",
            )
            .bind(run_id)
            .bind(ItemStatus::Skipped.as_str())
            .bind(LAST_KEY)
            .fetch_all(&mut **tx)
            .await?;
            let force_stop: bool = sqlx::query_scalar(
                "SELECT COALESCE(json_extract(options, '$.force_stop'), 0) FROM runs WHERE id = ?",
            )
            .bind(run_id)
            .fetch_one(&mut **tx)
            .await?;
            let mut regions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for row in &rows {
                regions
                    .entry(row.get("region"))
                    .or_default()
                    .insert(row.get("instance_id"));
            }
            for chunk in rows.chunks(500) {
                let ids: Vec<i64> = chunk.iter().map(|r| r.get("id")).collect();
                held += sqlx::query(
                    "UPDATE items SET status = ?, held = 1, job_id = NULL, error_code = NULL, \
                     error_message = NULL WHERE id IN (SELECT value FROM json_each(?))",
                )
                .bind(ItemStatus::Pending.as_str())
                .bind(ids_json_i64(&ids))
                .execute(&mut **tx)
                .await?
                .rows_affected();
            }
            let precheck = VerifyPayload::precheck().encode()?;
            for (region, instances) in regions {
                let instances: Vec<String> = instances.into_iter().collect();
                for batch in instances.chunks(crate::ids::MAX_IDS_PER_REQUEST) {
                    let look = NewQueuedJob {
                        action: Action::DescribeInstances,
                        region: region.clone(),
                        force_stop,
                        instance_ids: batch.to_vec(),
                        key_ids: Vec::new(),
                        payload: Some(precheck.clone()),
                        after: Vec::new(),
                        item_ids: Vec::new(),
                    };
                    add_job_with_items(tx, run_id, &look, writer.now).await?;
                    writer.added += 1;
                }
            }
        }
        writer.commit().await?;
        Ok((bind_pairs, held))
    }

    /// Ends, as skipped, every unbind still held once the run has no open job left
    /// (nothing could release it any more). Every path of a rotation ends its holds
    /// itself; this is the net under them, so no row is ever left pending unseen.
    pub async fn end_stranded_holds(&self, run_id: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE items SET status = ?, held = 0, error_code = ?, error_message = ? \
             WHERE run_id = ? AND held = 1 AND status = ? AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE run_id = ? AND state IN (?, ?))",
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
        .bind(JobState::Queued.as_str())
        .bind(JobState::InFlight.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
