//! The account a run was planned for (`runs.options.account`, many accounts: issue 23).

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// The account run `run_id` was planned for (`--account`), `None` for a run of the
    /// base credentials (every run planned before accounts existed).
    pub async fn run_account(&self, run_id: i64) -> Result<Option<String>, StoreError> {
        let account: Option<Option<String>> =
            sqlx::query_scalar("SELECT json_extract(options, '$.account') FROM runs WHERE id = ?")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(account.flatten())
    }

    /// The accounts run `run_id`'s rows name (`runs.options.accounts`), in name order;
    /// empty for a one-account run.
    pub async fn run_accounts(&self, run_id: i64) -> Result<Vec<String>, StoreError> {
        let names: Option<String> =
            sqlx::query_scalar("SELECT json_extract(options, '$.accounts') FROM runs WHERE id = ?")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        match names {
            None => Ok(Vec::new()),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("run {run_id}: its accounts: {e}"))),
        }
    }

    /// Each account's pairs by status (`None`: the run's own account), the input's
    /// unbind pairs and a rotation's binds together, in account order.
    pub async fn account_counts(&self, run_id: i64) -> Result<Vec<AccountCounts>, StoreError> {
        let rows = sqlx::query(
            "SELECT account, status, COUNT(*) AS n FROM items WHERE run_id = ? \
             GROUP BY account, status ORDER BY account, status",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let mut counts: Vec<AccountCounts> = Vec::new();
        for row in &rows {
            let account: Option<String> = row.get("account");
            if counts.last().is_none_or(|c| c.account != account) {
                counts.push(AccountCounts {
                    account: account.clone(),
                    ..AccountCounts::default()
                });
            }
            let Some(entry) = counts.last_mut() else {
                continue;
            };
            let n: i64 = row.get("n");
            match row.get::<&str, _>("status") {
                "pending" => entry.pairs.pending += n,
                "succeeded" => entry.pairs.succeeded += n,
                "failed" => entry.pairs.failed += n,
                "rejected" => entry.pairs.rejected += n,
                "duplicate" => entry.pairs.duplicate += n,
                "skipped" => entry.pairs.skipped += n,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "run {run_id}: an item's status is {other:?}"
                    )));
                }
            }
        }
        Ok(counts)
    }
}

impl Store {
    /// Each account's unbind pairs by verdict (`unverified`: never looked at), in
    /// account order (`None`: the run's own account).
    pub async fn account_verdicts(
        &self,
        run_id: i64,
    ) -> Result<Vec<(Option<String>, BTreeMap<String, i64>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT account, COALESCE(verified, 'unverified') AS verdict, COUNT(*) AS n FROM items \
             WHERE run_id = ? AND bind = 0 AND status IN (SELECT value FROM json_each(?)) \
             GROUP BY account, verdict ORDER BY account, verdict",
        )
        .bind(run_id)
        .bind(super::jobs::planned_statuses_json())
        .fetch_all(&self.pool)
        .await?;
        let mut verdicts: Vec<(Option<String>, BTreeMap<String, i64>)> = Vec::new();
        for row in &rows {
            let account: Option<String> = row.get("account");
            if verdicts.last().is_none_or(|(a, _)| *a != account) {
                verdicts.push((account, BTreeMap::new()));
            }
            if let Some((_, counts)) = verdicts.last_mut() {
                counts.insert(row.get("verdict"), row.get("n"));
            }
        }
        Ok(verdicts)
    }
}

/// One account's pairs of a run ([`Store::account_counts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AccountCounts {
    /// `None`: the run's own account (rows without one).
    pub account: Option<String>,
    #[serde(flatten)]
    pub pairs: super::queue::PairCounts,
}
