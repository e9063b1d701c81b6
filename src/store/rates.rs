//! The achieved rate of a run, per API action and access endpoint (the scope of
//! Tencent Cloud's limit, with the sub-account), and its throttles by error code,
//! read from the `attempts` table: `status` and the run summary show it.

use std::collections::BTreeMap;

use super::{Store, StoreError};
use crate::taxonomy;

/// The requests of one API action to one access endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EndpointRate {
    pub action: String,
    /// The access endpoint (`https://cvm.ap-guangzhou.tencentcloudapi.com/`); `None` for
    /// attempts recorded before keyfleet stored it (migration 0006): an unknown endpoint.
    pub endpoint: Option<String>,
    /// The account the requests were signed as (a run over many accounts; `None`: the
    /// run's own): each account has a limit of its own.
    pub account: Option<String>,
    /// Requests sent (attempts with a known outcome; an attempt a crash left
    /// uncertain is not counted).
    pub requests: i64,
    /// When the first and the last of them left (Unix ms).
    pub first_sent_at: i64,
    pub last_sent_at: i64,
    /// `requests - 1` intervals over `first_sent_at..last_sent_at`, per second; `None`
    /// with fewer than two requests or no time between them.
    pub per_second: Option<f64>,
    /// Requests refused as throttled (any code that classifies as Throttle).
    pub throttled: i64,
    /// Those throttles by error code (`RequestLimitExceeded`: 3).
    pub throttles_by_code: BTreeMap<String, i64>,
}

/// Attempts of one (action, endpoint, account, error code): count, first and last
/// send time.
type AttemptGroup = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
);

impl Store {
    /// The achieved rate of `run_id` per API action and access endpoint, from the
    /// attempts sent at or after `since_ms` (every attempt when `None`), ordered by
    /// action then endpoint (unknown first). An attempt's send time is `sent_at`, or
    /// `started_at` for rows written before `sent_at` was recorded.
    pub async fn achieved_rates(
        &self,
        run_id: i64,
        since_ms: Option<i64>,
    ) -> Result<Vec<EndpointRate>, StoreError> {
        let groups: Vec<AttemptGroup> =
            sqlx::query_as(
                "SELECT j.action, a.endpoint, j.account, a.error_code, COUNT(*), \
                        MIN(COALESCE(a.sent_at, a.started_at)), MAX(COALESCE(a.sent_at, a.started_at)) \
                 FROM attempts a JOIN jobs j ON j.id = a.job_id \
                 WHERE j.run_id = ?1 AND a.outcome IS NOT NULL AND a.outcome <> 'lost' \
                   AND COALESCE(a.sent_at, a.started_at) >= ?2 \
                 GROUP BY j.action, a.endpoint, j.account, a.error_code",
            )
            .bind(run_id)
            .bind(since_ms.unwrap_or(i64::MIN))
            .fetch_all(&self.pool)
            .await?;
        let mut rates: BTreeMap<(String, Option<String>, Option<String>), EndpointRate> =
            BTreeMap::new();
        for (action, endpoint, account, code, n, first, last) in groups {
            let rate = rates
                .entry((action.clone(), endpoint.clone(), account.clone()))
                .or_insert_with(|| EndpointRate {
                    action,
                    endpoint,
                    account,
                    requests: 0,
                    first_sent_at: first,
                    last_sent_at: last,
                    per_second: None,
                    throttled: 0,
                    throttles_by_code: BTreeMap::new(),
                });
            rate.requests += n;
            rate.first_sent_at = rate.first_sent_at.min(first);
            rate.last_sent_at = rate.last_sent_at.max(last);
            if let Some(code) = code.filter(|code| taxonomy::is_throttle(code)) {
                rate.throttled += n;
                *rate.throttles_by_code.entry(code).or_default() += n;
            }
        }
        Ok(rates
            .into_values()
            .map(|mut rate| {
                let span_ms = rate.last_sent_at - rate.first_sent_at;
                rate.per_second = (rate.requests >= 2 && span_ms > 0)
                    .then(|| (rate.requests - 1) as f64 * 1000.0 / span_ms as f64);
                rate
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rates_group_by_action_and_endpoint_and_count_throttles_by_code() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).await.unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(
            &input,
            "instance_id,key_id,region\nins-00000001,skey-00000001,ap-guangzhou\n\
             ins-00000002,skey-00000001,ap-shanghai\n",
        )
        .unwrap();
        let planned = crate::plan::plan_input(&store, &input, &crate::plan::PlanOptions::default())
            .await
            .unwrap();
        let run_id = planned.summary.run_id;
        let jobs: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, region FROM jobs WHERE run_id = ? ORDER BY id")
                .bind(run_id)
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert_eq!(jobs.len(), 2);
        let attempt = |job: i64, n: i64, sent: i64, endpoint: Option<&str>, code: Option<&str>| {
            let outcome = if code.is_some() { "error" } else { "succeeded" };
            sqlx::query(
                "INSERT INTO attempts (job_id, number, started_at, finished_at, sent_at, outcome, \
                 error_code, endpoint) VALUES (?1, ?2, ?3, ?3, ?3, ?4, ?5, ?6)",
            )
            .bind(job)
            .bind(n)
            .bind(sent)
            .bind(outcome)
            .bind(code)
            .bind(endpoint)
            .execute(&store.pool)
        };
        let gz = Some("https://cvm.ap-guangzhou.tencentcloudapi.com/");
        let sh = Some("https://cvm.ap-shanghai.tencentcloudapi.com/");
        let (g, s) = (jobs[0].0, jobs[1].0);
        attempt(g, 1, 10_000, gz, Some("RequestLimitExceeded"))
            .await
            .unwrap();
        attempt(g, 2, 10_500, gz, Some("InternalError"))
            .await
            .unwrap();
        attempt(g, 3, 12_000, gz, None).await.unwrap();
        attempt(s, 1, 11_000, sh, None).await.unwrap();
        // Before endpoints were recorded: an unknown endpoint.
        attempt(
            s,
            2,
            9_000,
            None,
            Some("RequestLimitExceeded.UinLimitExceeded"),
        )
        .await
        .unwrap();
        // A crash left this one uncertain: not counted.
        sqlx::query(
            "INSERT INTO attempts (job_id, number, started_at, outcome) VALUES (?1, 3, 13000, 'lost')",
        )
        .bind(s)
        .execute(&store.pool)
        .await
        .unwrap();

        let rates = store.achieved_rates(run_id, None).await.unwrap();
        let endpoints: Vec<Option<&str>> = rates.iter().map(|r| r.endpoint.as_deref()).collect();
        assert_eq!(endpoints, vec![None, gz, sh]);
        let unknown = &rates[0];
        assert_eq!((unknown.requests, unknown.per_second), (1, None));
        assert_eq!(
            unknown.throttles_by_code,
            BTreeMap::from([("RequestLimitExceeded.UinLimitExceeded".to_string(), 1)])
        );
        let guangzhou = &rates[1];
        assert_eq!(guangzhou.action, "DisassociateInstancesKeyPairs");
        assert_eq!(guangzhou.requests, 3);
        assert_eq!(
            (guangzhou.first_sent_at, guangzhou.last_sent_at),
            (10_000, 12_000)
        );
        assert_eq!(
            guangzhou.per_second,
            Some(1.0),
            "two intervals in two seconds"
        );
        assert_eq!(guangzhou.throttled, 1, "InternalError is not a throttle");
        assert_eq!(
            guangzhou.throttles_by_code,
            BTreeMap::from([("RequestLimitExceeded".to_string(), 1)])
        );
        assert_eq!(rates[2].requests, 1);
        // Since a moment: only what was sent from then on.
        let later = store.achieved_rates(run_id, Some(10_500)).await.unwrap();
        let counts: Vec<i64> = later.iter().map(|r| r.requests).collect();
        assert_eq!(counts, vec![2, 1]);
        store.close().await;
    }
}
