//! What `keyfleet report --incident` reads of a run: where its instances were, what was
//! done and skipped and why, when the verification looked, and every request with its
//! RequestId. The template changes and retirements are `store::templates`'.

use std::collections::BTreeMap;

use sqlx::Row;

use super::states::{ItemStatus, Verified};
use super::{Store, StoreError};

/// One request a run sent (an attempt), for the report's appendix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestRecord {
    pub run_id: i64,
    pub job_id: i64,
    pub action: String,
    pub region: String,
    /// The account it was signed as (`None`: the run's own).
    pub account: Option<String>,
    /// When it was sent (its send slot; the attempt's start before it), Unix ms.
    pub at: i64,
    /// succeeded, error, transport (no reply), lost (a crash: unknown).
    pub outcome: Option<String>,
    pub request_id: Option<String>,
    pub error_code: Option<String>,
}

/// What the database knows of one run for the incident report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IncidentFacts {
    /// Regions of the run's pairs, with the distinct instances in each.
    pub instances_by_region: BTreeMap<String, i64>,
    /// A live run's instances by the power state they were found in, and by zone
    /// (only a live run stores them).
    pub instances_by_state: BTreeMap<String, i64>,
    pub instances_by_zone: BTreeMap<String, i64>,
    /// Skipped pairs by why (code: message).
    pub skipped_by_reason: BTreeMap<String, i64>,
    /// Failed pairs by code (unbinds and binds).
    pub failed_by_code: BTreeMap<String, i64>,
    /// Distinct instances that lost the key (an unbind that succeeded) and that got a
    /// new one (a bind that succeeded).
    pub instances_unbound: i64,
    pub instances_rotated: i64,
    /// The run's pairs (unbinds) by the last verification's verdict; `unverified` for none.
    pub verdicts: BTreeMap<String, i64>,
    /// When the last verdict was recorded, Unix ms.
    pub verified_at: Option<i64>,
    /// Every request, in order.
    pub requests: Vec<RequestRecord>,
}

impl Store {
    /// The facts of `run_id` the incident report shows.
    pub async fn incident_facts(&self, run_id: i64) -> Result<IncidentFacts, StoreError> {
        let valid = super::jobs::planned_statuses_json();
        let mut facts = IncidentFacts::default();
        let counted = |rows: Vec<(Option<String>, i64)>, unknown: &str| -> BTreeMap<String, i64> {
            rows.into_iter()
                .map(|(k, n)| (k.unwrap_or_else(|| unknown.to_string()), n))
                .collect()
        };
        facts.instances_by_region = counted(
            sqlx::query_as(
                "SELECT region, COUNT(DISTINCT instance_id) FROM items WHERE run_id = ? \
                 AND status IN (SELECT value FROM json_each(?)) GROUP BY region",
            )
            .bind(run_id)
            .bind(&valid)
            .fetch_all(&self.pool)
            .await?,
            "",
        );
        facts.instances_by_state = counted(
            sqlx::query_as(
                "SELECT power_before, COUNT(*) FROM power WHERE run_id = ? GROUP BY power_before",
            )
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?,
            "unknown",
        );
        facts.instances_by_zone = counted(
            sqlx::query_as("SELECT zone, COUNT(*) FROM power WHERE run_id = ? GROUP BY zone")
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?,
            "unknown",
        );
        facts.skipped_by_reason = counted(
            sqlx::query_as(
                "SELECT COALESCE(error_code, '') || ': ' || COALESCE(error_message, ''), COUNT(*) \
                 FROM items WHERE run_id = ? AND status = ? GROUP BY 1",
            )
            .bind(run_id)
            .bind(ItemStatus::Skipped.as_str())
            .fetch_all(&self.pool)
            .await?,
            "",
        );
        facts.failed_by_code = counted(
            sqlx::query_as(
                "SELECT error_code, COUNT(*) FROM items WHERE run_id = ? AND status = ? \
                 GROUP BY error_code",
            )
            .bind(run_id)
            .bind(ItemStatus::Failed.as_str())
            .fetch_all(&self.pool)
            .await?,
            "unknown",
        );
        let done = |bind: bool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(DISTINCT region || ' ' || instance_id) FROM items \
                 WHERE run_id = ? AND bind = ? AND status = ?",
            )
            .bind(run_id)
            .bind(bind)
            .bind(ItemStatus::Succeeded.as_str())
            .fetch_one(&self.pool)
        };
        facts.instances_unbound = done(false).await?;
        facts.instances_rotated = done(true).await?;
        facts.verdicts = counted(
            sqlx::query_as(
                "SELECT verified, COUNT(*) FROM items WHERE run_id = ? AND bind = 0 \
                 AND status IN (SELECT value FROM json_each(?)) GROUP BY verified",
            )
            .bind(run_id)
            .bind(&valid)
            .fetch_all(&self.pool)
            .await?,
            "unverified",
        );
        debug_assert!(Verified::ALL.iter().all(|v| v.as_str() != "unverified"));
        facts.verified_at = sqlx::query_scalar(
            "SELECT MAX(verified_at) FROM items WHERE run_id = ? AND verified IS NOT NULL",
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT a.job_id, j.action, j.region, j.account, COALESCE(a.sent_at, a.started_at) AS at, \
             a.outcome, a.request_id, a.error_code FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE j.run_id = ? ORDER BY a.id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        facts.requests = rows
            .iter()
            .map(|row| RequestRecord {
                run_id,
                job_id: row.get("job_id"),
                action: row.get("action"),
                region: row.get("region"),
                account: row.get("account"),
                at: row.get("at"),
                outcome: row.get("outcome"),
                request_id: row.get("request_id"),
                error_code: row.get("error_code"),
            })
            .collect();
        Ok(facts)
    }
}
