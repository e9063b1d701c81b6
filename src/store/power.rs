//! A live run's power rows (`power`, migration 0010): reading them for the rules,
//! applying the rules' power effects, admitting instances into the downtime budget,
//! and turning a planned run into a live one before anything is sent.

use std::collections::BTreeMap;

use sqlx::{Row, Sqlite, Transaction};

use super::jobs::ids_json;
use super::jobs::{add_job, held_items};
use super::states::{ItemStatus, JobKind, JobState, PowerState};
use super::{Store, StoreError, now_ms};
use crate::rules::power::{self, Live, PowerChange, PowerRow};
use crate::rules::{ErrorInfo, jobs_for_pairs};

type Tx<'a> = Transaction<'a, Sqlite>;

/// The prefix of `runs.admissions` while an interrupt brings instances back up.
pub(super) const DRAINING: &str = "draining";

/// A live run's settings (`runs.options.live`), `None` for any other run.
pub(super) async fn live_of(tx: &mut Tx<'_>, run_id: i64) -> Result<Option<Live>, StoreError> {
    let live: Option<String> =
        sqlx::query_scalar("SELECT json_extract(options, '$.live') FROM runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(&mut **tx)
            .await?
            .flatten();
    live.map(|text| {
        serde_json::from_str(&text).map_err(|e| {
            StoreError::Corrupt(format!("run {run_id} has unreadable live options: {e}"))
        })
    })
    .transpose()
}

/// The power rows of some instances of a run in one region (all of the run's with
/// `instances` `None`).
pub(super) async fn rows(
    tx: &mut Tx<'_>,
    run_id: i64,
    only: Option<(&str, &[String])>,
) -> Result<Vec<PowerRow>, StoreError> {
    let (region, list) = match only {
        Some((region, instances)) => (Some(region), Some(ids_json(instances))),
        None => (None, None),
    };
    let rows = sqlx::query(
        "SELECT region, account, instance_id, state, grp, seq, start_failures FROM power WHERE run_id = ? \
         AND (?2 IS NULL OR region = ?2) \
         AND (?3 IS NULL OR instance_id IN (SELECT value FROM json_each(?3))) ORDER BY seq",
    )
    .bind(run_id)
    .bind(region)
    .bind(list)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(PowerRow {
                region: row.get("region"),
                account: row.get("account"),
                instance_id: row.get("instance_id"),
                state: row
                    .get::<&str, _>("state")
                    .parse()
                    .map_err(StoreError::Corrupt)?,
                group: row.get("grp"),
                seq: row.get("seq"),
                start_failures: row.get("start_failures"),
            })
        })
        .collect()
}

/// Per instance whose latest key-pair operation ended FAILED, the pairs of the run it
/// claimed (the operation's RequestId is theirs) that may be sent again: fewer than
/// `max_attempts` operations so far. `true` marks a bind pair.
pub(super) async fn failed_key_operations(
    tx: &mut Tx<'_>,
    run_id: i64,
    region: &str,
    seen: &[power::Seen],
    max_attempts: i64,
) -> Result<BTreeMap<String, Vec<(crate::rules::Pair, bool)>>, StoreError> {
    let mut failed = BTreeMap::new();
    for s in seen {
        let key_operation = matches!(
            s.latest_operation.as_deref(),
            Some("DisassociateInstancesKeyPairs" | "AssociateInstancesKeyPairs")
        );
        let Some(request_id) = s.latest_request_id.as_deref() else {
            continue;
        };
        if !key_operation || s.latest_state.as_deref() != Some("FAILED") {
            continue;
        }
        let rows = sqlx::query(
            "SELECT id, key_id, bind FROM items WHERE run_id = ? AND region = ? AND instance_id = ? \
             AND status = ? AND request_id = ? AND op_failures + 1 < ? ORDER BY key_id",
        )
        .bind(run_id)
        .bind(region)
        .bind(&s.instance_id)
        .bind(ItemStatus::Succeeded.as_str())
        .bind(request_id)
        .bind(max_attempts)
        .fetch_all(&mut **tx)
        .await?;
        let pairs: Vec<(crate::rules::Pair, bool)> = rows
            .iter()
            .map(|row| {
                (
                    crate::rules::Pair::new(row.get("id"), &s.instance_id, row.get("key_id")),
                    row.get::<bool, _>("bind"),
                )
            })
            .collect();
        if !pairs.is_empty() {
            failed.insert(s.instance_id.clone(), pairs);
        }
    }
    Ok(failed)
}

/// With `--max-down-per COLUMN`: these instances' values of the column, as planned.
pub(super) async fn column_groups(
    tx: &mut Tx<'_>,
    run_id: i64,
    instances: &[String],
) -> Result<BTreeMap<String, String>, StoreError> {
    let rows = sqlx::query(
        "SELECT instance_id, grp FROM live_groups WHERE run_id = ? \
         AND instance_id IN (SELECT value FROM json_each(?))",
    )
    .bind(run_id)
    .bind(ids_json(instances))
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get("instance_id"), row.get("grp")))
        .collect())
}

/// Applies one power change. The survey's (`before` set) creates the instance's row,
/// in `account` (the survey job's).
pub(super) async fn change(
    tx: &mut Tx<'_>,
    run_id: i64,
    change: &PowerChange,
    account: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    if let Some(before) = &change.before {
        sqlx::query(
            "INSERT INTO power (run_id, region, instance_id, state, seq, power_before, zone, grp, reason, account) \
             VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM power WHERE run_id = ?1), \
                     ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (run_id, region, instance_id) DO NOTHING",
        )
        .bind(run_id)
        .bind(&change.region)
        .bind(&change.instance_id)
        .bind(change.state.as_str())
        .bind(before)
        .bind(&change.zone)
        .bind(&change.group)
        .bind(&change.reason)
        .bind(account)
        .execute(&mut **tx)
        .await?;
        return Ok(());
    }
    let (stopped, started, up) = match change.state {
        PowerState::Stopping => (Some(now), None, None),
        PowerState::Starting => (None, Some(now), None),
        PowerState::Warming | PowerState::Up => (None, None, Some(now)),
        _ => (None, None, None),
    };
    let after = match change.state {
        PowerState::Warming | PowerState::Up | PowerState::NotStopped => Some("RUNNING"),
        PowerState::LeftStopped => Some("STOPPED"),
        _ => None,
    };
    sqlx::query(
        "UPDATE power SET state = ?, stopped_at = COALESCE(stopped_at, ?), started_at = COALESCE(?, started_at), \
         up_at = COALESCE(up_at, ?), power_after = COALESCE(?, power_after), reason = COALESCE(?, reason) \
         WHERE run_id = ? AND region = ? AND instance_id = ?",
    )
    .bind(change.state.as_str())
    .bind(stopped)
    .bind(started)
    .bind(up)
    .bind(after)
    .bind(&change.reason)
    .bind(run_id)
    .bind(&change.region)
    .bind(&change.instance_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The held pairs of these instances go into jobs: a rotating instance's new keys
/// first (its unbinds stay held until they are confirmed), otherwise its unbinds.
pub(super) async fn release_keys(
    tx: &mut Tx<'_>,
    run_id: i64,
    (region, account): (&str, Option<&str>),
    instances: &[String],
    force_stop: bool,
    now: i64,
) -> Result<(), StoreError> {
    let binds = held_items(tx, run_id, region, instances, true).await?;
    let rotating: std::collections::BTreeSet<&str> =
        binds.iter().map(|p| p.instance_id.as_str()).collect();
    let unbinds: Vec<_> = held_items(tx, run_id, region, instances, false)
        .await?
        .into_iter()
        .filter(|p| !rotating.contains(p.instance_id.as_str()))
        .collect();
    for (kind, pairs) in [(JobKind::Bind, binds), (JobKind::Unbind, unbinds)] {
        for mut job in jobs_for_pairs(kind, region, force_stop, &pairs, now) {
            job.account = account.map(str::to_string);
            add_job(tx, run_id, job, now).await?;
        }
    }
    Ok(())
}

/// The held pairs of these instances fail with the reason.
pub(super) async fn fail_held(
    tx: &mut Tx<'_>,
    run_id: i64,
    region: &str,
    instances: &[String],
    reason: &ErrorInfo,
    status: ItemStatus,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE items SET status = ?, held = 0, error_code = ?, error_message = ? \
         WHERE run_id = ? AND region = ? AND held = 1 AND status = ? \
         AND instance_id IN (SELECT value FROM json_each(?))",
    )
    .bind(status.as_str())
    .bind(&reason.code)
    .bind(&reason.message)
    .bind(run_id)
    .bind(region)
    .bind(ItemStatus::Pending.as_str())
    .bind(ids_json(instances))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The run takes no further instance down: the instances still waiting are not
/// stopped, and their pairs are skipped with the reason.
pub(super) async fn halt(tx: &mut Tx<'_>, run_id: i64, reason: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE runs SET admissions = ? WHERE id = ?")
        .bind(format!("halted: {reason}"))
        .bind(run_id)
        .execute(&mut **tx)
        .await?;
    let waiting =
        sqlx::query("SELECT region, instance_id FROM power WHERE run_id = ? AND state = ?")
            .bind(run_id)
            .bind(PowerState::Waiting.as_str())
            .fetch_all(&mut **tx)
            .await?;
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in &waiting {
        by_region
            .entry(row.get("region"))
            .or_default()
            .push(row.get("instance_id"));
    }
    let why = ErrorInfo::new(
        power::NOT_STOPPED,
        format!(
            "not stopped: the run stopped taking instances down ({reason}); its keys were not changed"
        ),
    );
    for (region, instances) in by_region {
        fail_held(tx, run_id, &region, &instances, &why, ItemStatus::Skipped).await?;
    }
    sqlx::query("UPDATE power SET state = ?, reason = ? WHERE run_id = ? AND state = ?")
        .bind(PowerState::NotStopped.as_str())
        .bind(&why.message)
        .bind(run_id)
        .bind(PowerState::Waiting.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Instances of a live run by power state, and the budget's figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PowerCounts {
    pub by_state: BTreeMap<String, i64>,
    /// Down now (stopping, stopped, starting, warming, left stopped).
    pub down: i64,
    /// The most down at once over the run (from each instance's stop to its return).
    pub max_down: i64,
    /// The budget as asked (`5`, `5%`), and per what.
    pub budget: String,
    /// Instances left stopped, with why.
    pub left_stopped: Vec<(String, String)>,
    /// Downtime of the instances back up, seconds: p50, p95, max.
    pub downtime_s: Option<(f64, f64, f64)>,
    /// Why the run takes no further instance down, if it does not.
    pub admissions: Option<String>,
}

impl Store {
    /// `--max-down-per COLUMN`: records each instance's value of the column for the
    /// run (its budget group). Idempotent: a value already recorded stays.
    pub async fn record_groups(
        &self,
        run_id: i64,
        groups: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in groups.chunks(500) {
            let rows: Vec<[&str; 2]> = chunk
                .iter()
                .map(|(i, g)| [i.as_str(), g.as_str()])
                .collect();
            sqlx::query(
                "INSERT INTO live_groups (run_id, instance_id, grp) \
                 SELECT ?, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?) \
                 WHERE true ON CONFLICT (run_id, instance_id) DO NOTHING",
            )
            .bind(run_id)
            .bind(serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes a planned live run ready (once, before anything is sent): every pending
    /// pair is held, the plan's unsent key jobs are dropped, and `survey` jobs of its
    /// instances are queued. Idempotent; `false` for a run that is not live.
    pub async fn prepare_live(&self, run_id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if live_of(&mut tx, run_id).await?.is_none() {
            return Ok(false);
        }
        let surveyed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE run_id = ? AND kind = ?")
                .bind(run_id)
                .bind(JobKind::Survey.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if surveyed == 0 {
            let now = now_ms();
            sqlx::query(
                "UPDATE items SET held = 1, job_id = NULL WHERE run_id = ? AND status = ? \
                 AND job_id IN (SELECT id FROM jobs WHERE run_id = ? AND attempts = 0 AND state = ?)",
            )
            .bind(run_id)
            .bind(ItemStatus::Pending.as_str())
            .bind(run_id)
            .bind(JobState::Queued.as_str())
            .execute(&mut *tx)
            .await?;
            // The plan's key jobs only: a template change's jobs (no items) stay queued.
            sqlx::query(
                "DELETE FROM jobs WHERE run_id = ? AND state = ? AND attempts = 0 \
                 AND kind IN (?, ?) \
                 AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = jobs.id) \
                 AND NOT EXISTS (SELECT 1 FROM items i WHERE i.job_id = jobs.id)",
            )
            .bind(run_id)
            .bind(JobState::Queued.as_str())
            .bind(JobKind::Unbind.as_str())
            .bind(JobKind::Bind.as_str())
            .execute(&mut *tx)
            .await?;
            let instances = sqlx::query(
                "SELECT DISTINCT account, region, instance_id FROM items WHERE run_id = ? AND status = ? \
                 ORDER BY account, region, instance_id",
            )
            .bind(run_id)
            .bind(ItemStatus::Pending.as_str())
            .fetch_all(&mut *tx)
            .await?;
            // Surveyed per (account, region): a survey's instances are one account's.
            let mut by_route: BTreeMap<(Option<String>, String), Vec<String>> = BTreeMap::new();
            for row in &instances {
                by_route
                    .entry((row.get("account"), row.get("region")))
                    .or_default()
                    .push(row.get("instance_id"));
            }
            for ((account, region), instances) in by_route {
                for batch in instances.chunks(crate::ids::MAX_IDS_PER_REQUEST) {
                    let survey = crate::rules::NewJob {
                        kind: JobKind::Survey,
                        region: region.clone(),
                        account: account.clone(),
                        force_stop: false,
                        instance_ids: batch.to_vec(),
                        key_ids: Vec::new(),
                        payload: None,
                        item_ids: Vec::new(),
                        due_at: now,
                    };
                    add_job(&mut tx, run_id, survey, now).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Instances of a live run still waiting for a slot of the budget (a run that
    /// has them is not finished: an interrupt drained it, or it resumes them).
    pub async fn waiting_instances(&self, run_id: i64) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM power WHERE run_id = ? AND state = ?")
                .bind(run_id)
                .bind(PowerState::Waiting.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Instances a live run has down now.
    pub async fn down_now(&self, run_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM power WHERE run_id = ? AND state IN ('stopping', 'stopped', 'starting', 'warming')",
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// An interrupt: the run takes no new instance down (until resumed).
    pub async fn drain_admissions(&self, run_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET admissions = ? WHERE id = ? AND admissions IS NULL")
            .bind(DRAINING)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A live run's instances by power state, what is down, what was left stopped,
    /// and the downtime of those back up.
    pub async fn power_counts(&self, run_id: i64) -> Result<Option<PowerCounts>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, instance_id, reason, stopped_at, up_at FROM power WHERE run_id = ?",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut counts = PowerCounts::default();
        let mut downtimes = Vec::new();
        let mut events: Vec<(i64, i64)> = Vec::new();
        for row in &rows {
            let state: PowerState = row
                .get::<&str, _>("state")
                .parse()
                .map_err(StoreError::Corrupt)?;
            *counts.by_state.entry(state.to_string()).or_default() += 1;
            if state.is_down() {
                counts.down += 1;
            }
            if state == PowerState::LeftStopped {
                counts.left_stopped.push((
                    row.get("instance_id"),
                    row.get::<Option<String>, _>("reason").unwrap_or_default(),
                ));
            }
            let (stopped, up) = (
                row.get::<Option<i64>, _>("stopped_at"),
                row.get::<Option<i64>, _>("up_at"),
            );
            if let Some(stopped) = stopped {
                events.push((stopped, 1));
                events.push((up.unwrap_or(i64::MAX), -1));
            }
            if let (Some(stopped), Some(up)) = (stopped, up) {
                downtimes.push((up - stopped) as f64 / 1000.0);
            }
        }
        if !downtimes.is_empty() {
            downtimes.sort_by(f64::total_cmp);
            let at = |q: f64| downtimes[((downtimes.len() - 1) as f64 * q).round() as usize];
            counts.downtime_s = Some((at(0.5), at(0.95), at(1.0)));
        }
        // Ends before starts at one moment: an instance back up frees its slot first.
        events.sort();
        let mut now_down = 0;
        for (_, delta) in events {
            now_down += delta;
            counts.max_down = counts.max_down.max(now_down);
        }
        let row = sqlx::query(
            "SELECT admissions, json_extract(options, '$.live') AS live FROM runs WHERE id = ?",
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?;
        counts.admissions = row.get("admissions");
        if let Some(live) = row
            .get::<Option<String>, _>("live")
            .and_then(|text| serde_json::from_str::<Live>(&text).ok())
        {
            counts.budget = match &live.per {
                None => live.max_down.to_string(),
                Some(per) => format!("{} per {per}", live.max_down),
            };
        }
        Ok(Some(counts))
    }
}
