//! A run's template changes (`template_changes`: one row per launch template version
//! or launch configuration that hands out a leaked key, and where its change stands)
//! and what `retire` found and did (`retirements`). The jobs of a change are ordinary
//! jobs; what follows each outcome is `rules::template`'s, applied by `follow`.

use sqlx::{Row, Sqlite, Transaction};

use super::jobs::{add_job, ids_json};
use super::states::{ItemStatus, JobKind, JobState, TemplateKind, TemplateState};
use super::{Store, StoreError, now_ms};
use crate::rules::template::{Planned, Update};

/// One row of `template_changes`, as the report reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TemplateChangeRow {
    pub kind: TemplateKind,
    pub template_id: String,
    /// The version that held the key; `None` for a launch configuration.
    pub version: Option<u64>,
    pub name: String,
    pub region: String,
    pub was_default: bool,
    pub keys_before: Vec<String>,
    pub keys_after: Option<Vec<String>>,
    pub state: TemplateState,
    pub made_version: Option<u64>,
    pub reason: Option<String>,
    pub updated_at: i64,
    /// The template's account; `None`: the run's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// What a run's leaked keys and rotation target are, as its items say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunKeys {
    /// The keys the run unbinds.
    pub leaked: Vec<String>,
    /// The new keys it binds (a rotation), distinct.
    pub new_keys: Vec<String>,
}

/// One recorded retirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetirementRow {
    pub id: i64,
    pub run_id: Option<i64>,
    pub key_ids: Vec<String>,
    pub dry_run: bool,
    pub retired: bool,
    /// `incident::Retirement` as JSON.
    pub result: String,
    pub at: i64,
    /// The account the keys were retired in; `None`: the command's own.
    pub account: Option<String>,
}

fn json_ids(text: &str, what: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Applies a change's row update in the outcome's transaction.
pub(super) async fn apply_update(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: i64,
    update: &Update,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE template_changes SET state = ?, keys_after = COALESCE(?, keys_after), \
         made_version = COALESCE(?, made_version), reason = ?, updated_at = ? \
         WHERE run_id = ? AND kind = ? AND template_id = ? AND version = ?",
    )
    .bind(update.state.as_str())
    .bind(update.keys_after.as_deref().map(ids_json))
    .bind(update.made.map(|v| v as i64))
    .bind(&update.reason)
    .bind(now)
    .bind(run_id)
    .bind(update.kind.as_str())
    .bind(&update.template_id)
    .bind(update.version as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// The keys a run unbinds and the new keys it binds (its rotation target).
    pub async fn run_keys(&self, run_id: i64) -> Result<RunKeys, StoreError> {
        let valid = super::jobs::planned_statuses_json();
        let keys = |bind: bool| {
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT key_id FROM items WHERE run_id = ? AND bind = ? \
                 AND status IN (SELECT value FROM json_each(?)) ORDER BY key_id",
            )
            .bind(run_id)
            .bind(bind)
            .bind(&valid)
            .fetch_all(&self.pool)
        };
        Ok(RunKeys {
            leaked: keys(false).await?,
            new_keys: keys(true).await?,
        })
    }

    /// The keys a run unbinds, by account (`None`: its rows without one, the run's
    /// own account), accounts and keys sorted: what `run --retire` retires where.
    pub async fn run_leaked_keys_by_account(
        &self,
        run_id: i64,
    ) -> Result<Vec<(Option<String>, Vec<String>)>, StoreError> {
        let rows: Vec<(Option<String>, String)> = sqlx::query_as(
            "SELECT DISTINCT account, key_id FROM items WHERE run_id = ? AND bind = 0 \
             AND status IN (SELECT value FROM json_each(?)) ORDER BY account, key_id",
        )
        .bind(run_id)
        .bind(super::jobs::planned_statuses_json())
        .fetch_all(&self.pool)
        .await?;
        let mut by_account: Vec<(Option<String>, Vec<String>)> = Vec::new();
        for (account, key) in rows {
            match by_account.last_mut() {
                Some((last, keys)) if *last == account => keys.push(key),
                _ => by_account.push((account, vec![key])),
            }
        }
        Ok(by_account)
    }

    /// The keys of a run's pairs in one account (`None`: the rows without one): those
    /// of `account`, and the rows without one when `account` is the run's own
    /// (`--account`). Templates of an account are changed with that account's keys.
    pub async fn run_keys_in(
        &self,
        run_id: i64,
        account: Option<&str>,
    ) -> Result<RunKeys, StoreError> {
        let own = self.run_account(run_id).await?;
        let with_null = account.is_none() || own.as_deref() == account;
        let valid = super::jobs::planned_statuses_json();
        let keys = |bind: bool| {
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT key_id FROM items WHERE run_id = ? AND bind = ? \
                 AND status IN (SELECT value FROM json_each(?)) \
                 AND (account = ? OR (? AND account IS NULL)) ORDER BY key_id",
            )
            .bind(run_id)
            .bind(bind)
            .bind(&valid)
            .bind(account)
            .bind(with_null)
            .fetch_all(&self.pool)
        };
        Ok(RunKeys {
            leaked: keys(false).await?,
            new_keys: keys(true).await?,
        })
    }

    /// Records a run's template changes and queues the first job of each (its look),
    /// in one transaction; a change of another account than the run's own
    /// (`holder.account`) is recorded with it, and its jobs are sent as it. A run that
    /// has its changes already keeps them (a resumed `run` with the same templates):
    /// returns `false` then, and writes nothing.
    pub async fn add_template_changes(
        &self,
        run_id: i64,
        planned: &[Planned],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existing: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM template_changes WHERE run_id = ?")
                .bind(run_id)
                .fetch_one(&mut *tx)
                .await?;
        if existing > 0 {
            return Ok(false);
        }
        let now = now_ms();
        for p in planned {
            sqlx::query(
                "INSERT INTO template_changes (run_id, kind, template_id, version, name, region, \
                 was_default, keys_before, keys_after, state, reason, updated_at, account) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(run_id)
            .bind(p.holder.kind.as_str())
            .bind(&p.holder.id)
            .bind(p.change.version as i64)
            .bind(&p.holder.name)
            .bind(&p.holder.region)
            .bind(p.holder.default)
            .bind(ids_json(&p.holder.keys))
            .bind(ids_json(&p.keys_after))
            .bind(p.state.as_str())
            .bind(&p.reason)
            .bind(now)
            .bind(&p.holder.account)
            .execute(&mut *tx)
            .await?;
            if let Some(job) = p.first_job(now) {
                add_job(&mut tx, run_id, job, now).await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A run's template changes, by region, kind, id, version.
    pub async fn template_changes(
        &self,
        run_id: i64,
    ) -> Result<Vec<TemplateChangeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, template_id, version, name, region, was_default, keys_before, keys_after, \
             state, made_version, reason, updated_at, account FROM template_changes \
             WHERE run_id = ? ORDER BY account, region, kind, template_id, version",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.get("template_id");
                let kind: TemplateKind = row
                    .get::<&str, _>("kind")
                    .parse()
                    .map_err(StoreError::Corrupt)?;
                let version: i64 = row.get("version");
                Ok(TemplateChangeRow {
                    kind,
                    version: (kind == TemplateKind::LaunchTemplate).then_some(version as u64),
                    name: row.get("name"),
                    region: row.get("region"),
                    was_default: row.get("was_default"),
                    keys_before: json_ids(row.get("keys_before"), &id)?,
                    keys_after: row
                        .get::<Option<&str>, _>("keys_after")
                        .map(|t| json_ids(t, &id))
                        .transpose()?,
                    state: row
                        .get::<&str, _>("state")
                        .parse()
                        .map_err(StoreError::Corrupt)?,
                    made_version: row.get::<Option<i64>, _>("made_version").map(|v| v as u64),
                    reason: row.get("reason"),
                    updated_at: row.get("updated_at"),
                    account: row.get("account"),
                    template_id: id,
                })
            })
            .collect()
    }

    /// True while a template change of the run has a job not yet final.
    pub async fn template_jobs_open(&self, run_id: i64) -> Result<i64, StoreError> {
        let kinds: Vec<&str> = JobKind::ALL
            .iter()
            .filter(|k| k.is_template())
            .map(|k| k.as_str())
            .collect();
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND state IN (?, ?) \
             AND kind IN (SELECT value FROM json_each(?))",
        )
        .bind(run_id)
        .bind(JobState::Queued.as_str())
        .bind(JobState::InFlight.as_str())
        .bind(serde_json::to_string(&kinds).unwrap_or_else(|_| "[]".into()))
        .fetch_one(&self.pool)
        .await?)
    }

    /// A run's unbind pairs (valid, distinct) whose key the last verification did not
    /// find gone: 0 when `run --retire` may retire the run's keys.
    pub async fn pairs_not_verified_gone(&self, run_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM items WHERE run_id = ? AND bind = 0 AND status IN (?, ?, ?, ?) \
             AND verified IS NOT ?",
        )
        .bind(run_id)
        .bind(ItemStatus::Pending.as_str())
        .bind(ItemStatus::Succeeded.as_str())
        .bind(ItemStatus::Failed.as_str())
        .bind(ItemStatus::Skipped.as_str())
        .bind(crate::states::Verified::Gone.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Records what a retirement in `account` (`None`: the command's own) found and
    /// did (`result`: its JSON).
    pub async fn record_retirement(
        &self,
        run_id: Option<i64>,
        account: Option<&str>,
        key_ids: &[String],
        dry_run: bool,
        retired: bool,
        result: &str,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO retirements (run_id, key_ids, dry_run, retired, result, at, account) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(run_id)
        .bind(ids_json(key_ids))
        .bind(dry_run)
        .bind(retired)
        .bind(result)
        .bind(now_ms())
        .bind(account)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The retirements of the run, or of any of `keys` since `since` (Unix ms): a
    /// `keyfleet retire` after the run counts for it.
    pub async fn retirements_for(
        &self,
        run_id: i64,
        keys: &[String],
        since: i64,
    ) -> Result<Vec<RetirementRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, run_id, key_ids, dry_run, retired, result, at, account FROM retirements \
             WHERE run_id = ? OR (at >= ? AND EXISTS (SELECT 1 FROM json_each(retirements.key_ids) k \
                                   WHERE k.value IN (SELECT value FROM json_each(?)))) ORDER BY id",
        )
        .bind(run_id)
        .bind(since)
        .bind(ids_json(keys))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RetirementRow {
                    id: row.get("id"),
                    run_id: row.get("run_id"),
                    key_ids: json_ids(row.get("key_ids"), "retirement")?,
                    dry_run: row.get("dry_run"),
                    retired: row.get("retired"),
                    result: row.get("result"),
                    at: row.get("at"),
                    account: row.get("account"),
                })
            })
            .collect()
    }
}
