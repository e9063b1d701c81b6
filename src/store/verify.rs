//! The store's side of `keyfleet verify`: verification batches are jobs of action
//! `DescribeInstances` in the run's own queue (so they are paced, retried, crash-safe
//! and resumable like every other job), each carrying in its payload the items it
//! checks. Their results land in `items.verified`; pair statuses never change here.

use std::collections::BTreeMap;

use sqlx::Row;

use super::queue::NewQueuedJob;
use super::states::{ItemStatus, JobKind, JobState, Verified};
use super::{Store, StoreError, now_ms};
use crate::cvm::Action;
use crate::ids::MAX_IDS_PER_REQUEST;

pub use crate::rules::{ReadItem as VerifyItem, ReadPayload as VerifyPayload};

/// Counts of a run's valid pairs by verification result (`None`: never verified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerificationCounts {
    pub by_value: BTreeMap<Verified, i64>,
    pub unverified: i64,
    /// Succeeded unbind pairs whose key is not verified `gone`.
    pub succeeded_not_gone: i64,
    /// Succeeded bind pairs (a rotation's new keys) not verified `bound`.
    pub binds_not_bound: i64,
}

impl VerificationCounts {
    pub fn get(&self, value: Verified) -> i64 {
        self.by_value.get(&value).copied().unwrap_or(0)
    }
}

impl Store {
    /// Open (queued or in flight) verification batches of a run: a verification that
    /// a crash or a stop interrupted, to be finished rather than started again. A
    /// rotation's confirmations and `--keep-one-key` looks are not verification rounds.
    pub async fn open_verification(&self, run_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND kind = ? AND state IN (?, ?)",
        )
        .bind(run_id)
        .bind(JobKind::Verify.as_str())
        .bind(JobState::Queued.as_str())
        .bind(JobState::InFlight.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Queues one round of verification of every valid pair of the run: per region,
    /// batches of at most 100 instances. Returns the number of batches.
    pub async fn begin_verification(
        &self,
        run_id: i64,
        recheck_for_ms: i64,
    ) -> Result<u64, StoreError> {
        let rows = sqlx::query(
            "SELECT id, region, account, instance_id, key_id, request_id, bind FROM items \
             WHERE run_id = ? AND status IN (?, ?, ?, ?) ORDER BY region, instance_id, key_id",
        )
        .bind(run_id)
        .bind(ItemStatus::Pending.as_str())
        .bind(ItemStatus::Succeeded.as_str())
        .bind(ItemStatus::Failed.as_str())
        .bind(ItemStatus::Skipped.as_str())
        .fetch_all(&self.pool)
        .await?;
        // (Account, region) -> instance -> its items, in id order.
        let mut regions: BTreeMap<(Option<String>, String), BTreeMap<String, Vec<VerifyItem>>> =
            BTreeMap::new();
        for row in &rows {
            let instance_id: String = row.get("instance_id");
            regions
                .entry((row.get("account"), row.get("region")))
                .or_default()
                .entry(instance_id.clone())
                .or_default()
                .push(VerifyItem {
                    item_id: row.get("id"),
                    instance_id,
                    key_id: row.get("key_id"),
                    request_id: row.get("request_id"),
                    bind: row.get::<bool, _>("bind"),
                });
        }
        let recheck_until = now_ms() + recheck_for_ms;
        let mut writer = self.begin_jobs(run_id).await?;
        for ((account, region), instances) in regions {
            let instances: Vec<(String, Vec<VerifyItem>)> = instances.into_iter().collect();
            for batch in instances.chunks(MAX_IDS_PER_REQUEST) {
                let instance_ids: Vec<String> = batch.iter().map(|(i, _)| i.clone()).collect();
                let mut key_ids: Vec<String> = batch
                    .iter()
                    .flat_map(|(_, items)| items.iter().map(|i| i.key_id.clone()))
                    .collect();
                key_ids.sort();
                key_ids.dedup();
                let payload = VerifyPayload {
                    recheck_until,
                    items: batch.iter().flat_map(|(_, items)| items.clone()).collect(),
                };
                writer
                    .add(&NewQueuedJob {
                        kind: JobKind::Verify,
                        region: region.clone(),
                        account: account.clone(),
                        force_stop: false,
                        instance_ids,
                        key_ids,
                        payload: Some(payload.encode()),
                        after: Vec::new(),
                        item_ids: Vec::new(),
                    })
                    .await?;
            }
        }
        writer.commit().await
    }

    /// Ends every open job of `action` in the run as skipped, with the reason (a
    /// verification that cannot go on: the run is complete without it).
    pub async fn cancel_open_jobs(
        &self,
        run_id: i64,
        action: Action,
        code: &str,
        reason: &str,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE jobs SET state = ?, finished_at = ?, last_error_code = ?, last_error_message = ? \
             WHERE run_id = ? AND action = ? AND state IN (?, ?)",
        )
        .bind(JobState::Skipped.as_str())
        .bind(now_ms())
        .bind(code)
        .bind(reason)
        .bind(run_id)
        .bind(action.name())
        .bind(JobState::Queued.as_str())
        .bind(JobState::InFlight.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Marks the run finished when no job of it is left open (after a verification
    /// that could not go on was ended: the run's own work is complete).
    pub async fn finish_if_done(&self, run_id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE runs SET state = ?, stop_reason = NULL, finished_at = COALESCE(finished_at, ?) \
             WHERE id = ? AND owner_token IS NULL AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE run_id = ? AND state IN (?, ?))",
        )
        .bind(super::states::RunState::Finished.as_str())
        .bind(now_ms())
        .bind(run_id)
        .bind(run_id)
        .bind(JobState::Queued.as_str())
        .bind(JobState::InFlight.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            super::claims::release_finished(&self.pool, run_id).await?;
        }
        Ok(done.rows_affected() == 1)
    }

    /// A run's valid pairs by verification result.
    pub async fn verification_counts(&self, run_id: i64) -> Result<VerificationCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT verified, status = ? AS succeeded, bind, COUNT(*) AS n FROM items \
             WHERE run_id = ? AND status IN (?, ?, ?, ?) GROUP BY verified, status = ?, bind",
        )
        .bind(ItemStatus::Succeeded.as_str())
        .bind(run_id)
        .bind(ItemStatus::Pending.as_str())
        .bind(ItemStatus::Succeeded.as_str())
        .bind(ItemStatus::Failed.as_str())
        .bind(ItemStatus::Skipped.as_str())
        .bind(ItemStatus::Succeeded.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut counts = VerificationCounts::default();
        for row in rows {
            let n: i64 = row.get("n");
            let succeeded: bool = row.get("succeeded");
            let bind: bool = row.get("bind");
            let value: Option<Verified> = row
                .get::<Option<&str>, _>("verified")
                .map(str::parse)
                .transpose()
                .map_err(StoreError::Corrupt)?;
            match value {
                Some(v) => *counts.by_value.entry(v).or_default() += n,
                None => counts.unverified += n,
            }
            match (succeeded, bind) {
                (true, false) if value != Some(Verified::Gone) => counts.succeeded_not_gone += n,
                (true, true) if value != Some(Verified::Bound) => counts.binds_not_bound += n,
                _ => {}
            }
        }
        Ok(counts)
    }
}
