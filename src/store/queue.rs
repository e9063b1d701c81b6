//! The executor's side of the store: the run lease, crash recovery, due jobs and
//! the counts of a run. The writes of attempts and outcomes are in `outcome`; the
//! rows every writer shares (inserting a job, failing its items) in `jobs`.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row;

use super::states::{ItemStatus, JobKind, JobState, RunState};
use super::{Store, StoreError, now_ms};
use crate::cvm::Action;

pub use super::LEASE_STALE_AFTER;
/// How often the owner refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The identity of the process that executes a run.
#[derive(Debug, Clone)]
pub struct Lease {
    pub token: String,
    pub pid: u32,
    pub host: String,
}

impl Lease {
    /// A lease for this process, with a fresh random token.
    pub fn for_this_process() -> Lease {
        Lease {
            token: uuid::Uuid::new_v4().to_string(),
            pid: std::process::id(),
            host: hostname(),
        }
    }
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// True when `pid` on this host is certainly gone. Where that cannot be known
/// (no /proc), only the heartbeat's age decides.
fn process_is_gone(pid: i64) -> bool {
    let proc_root = std::path::Path::new("/proc");
    proc_root.join("self").exists() && !proc_root.join(pid.to_string()).exists()
}

/// Why a run could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "run {run_id} is being executed by process {pid} on {host} (last heartbeat {age_secs} s ago); \
         wait for it to finish, or stop it first (a holder silent for {} s is taken over)",
        LEASE_STALE_AFTER.as_secs()
    )]
    Held {
        run_id: i64,
        pid: i64,
        host: String,
        age_secs: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for LeaseError {
    fn from(e: sqlx::Error) -> Self {
        LeaseError::Store(e.into())
    }
}

/// A job as the executor sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: i64,
    /// Its step in the instance's workflow (what follows its outcome).
    pub kind: JobKind,
    /// The API action it sends (its kind's).
    pub action: Action,
    pub region: String,
    /// The account its requests are signed as (`None`: the run's own).
    pub account: Option<String>,
    pub force_stop: bool,
    pub instance_ids: Vec<String>,
    pub key_ids: Vec<String>,
    /// Action-specific JSON, as stored.
    pub payload: Option<String>,
    /// Retry-class failures so far (the `--max-attempts` budget).
    pub attempts: i64,
    pub pair_count: i64,
}

pub use super::jobs::NewQueuedJob;

/// Where a job's requests go and as whom: its action, account and region (the
/// dispatcher's unit of backlog).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub action: Action,
    pub account: Option<String>,
    pub region: String,
}

impl Route {
    /// A job's route.
    pub fn of(job: &QueuedJob) -> Route {
        Route {
            action: job.action,
            account: job.account.clone(),
            region: job.region.clone(),
        }
    }
}

/// Fenced accounts as a JSON array of names for `COALESCE(account, '') NOT IN
/// (SELECT value FROM json_each(?))`: the run's own account (`None`) is `""`, a name
/// no account has.
fn fence_json(fenced: &[Option<String>]) -> String {
    let names: Vec<&str> = fenced.iter().map(|a| a.as_deref().unwrap_or("")).collect();
    serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
}
pub use super::outcome::{Applied, Finish, Outcome, Write};
pub use crate::rules::{ErrorInfo, FollowUp};

/// Pair counts of a run, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PairCounts {
    pub pending: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub rejected: i64,
    pub duplicate: i64,
    pub skipped: i64,
}

impl PairCounts {
    /// Valid, distinct pairs: the ones the executor works on.
    pub fn valid(&self) -> i64 {
        self.pending + self.succeeded + self.failed + self.skipped
    }
}

/// One valid pair's outcome, for audits.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PairOutcome {
    pub region: String,
    /// Its account (`None`: the run's own).
    pub account: Option<String>,
    pub instance_id: String,
    pub key_id: String,
    pub status: String,
    pub request_id: Option<String>,
    pub error_code: Option<String>,
}

/// What a run's plan records about where it came from.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: i64,
    pub state: RunState,
    pub input_path: String,
    pub input_sha256: String,
    pub options: String,
    pub started_at: Option<i64>,
}

fn parse_ids(json: &str, job_id: i64) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("job {job_id} has unreadable ids: {e}")))
}

impl Store {
    /// A run's identity and state.
    pub async fn run_info(&self, run_id: i64) -> Result<RunInfo, StoreError> {
        let row = sqlx::query("SELECT id, state, input_path, input_sha256, options, started_at FROM runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NoSuchRun(run_id))?;
        Ok(RunInfo {
            id: row.get("id"),
            state: row
                .get::<&str, _>("state")
                .parse()
                .map_err(StoreError::Corrupt)?,
            input_path: row.get("input_path"),
            input_sha256: row.get("input_sha256"),
            options: row.get("options"),
            started_at: row.get("started_at"),
        })
    }

    /// Takes ownership of a run for this process, or says who holds it.
    ///
    /// The holder is taken over when its heartbeat is older than `stale_after`, or
    /// when it ran on this host and its pid no longer exists (a `kill -9`).
    pub async fn acquire_run(
        &self,
        run_id: i64,
        lease: &Lease,
        stale_after: Duration,
    ) -> Result<(), LeaseError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT owner_pid, owner_host, owner_token, heartbeat_at FROM runs WHERE id = ?",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NoSuchRun(run_id))?;
        let token: Option<String> = row.get("owner_token");
        if let Some(token) = token.filter(|t| *t != lease.token) {
            let pid: i64 = row.get::<Option<i64>, _>("owner_pid").unwrap_or(0);
            let host: String = row
                .get::<Option<String>, _>("owner_host")
                .unwrap_or_default();
            let age_ms = now_ms() - row.get::<Option<i64>, _>("heartbeat_at").unwrap_or(0);
            let gone = host == lease.host && process_is_gone(pid);
            if !gone && age_ms < stale_after.as_millis() as i64 {
                return Err(LeaseError::Held {
                    run_id,
                    pid,
                    host,
                    age_secs: age_ms / 1000,
                });
            }
            tracing::warn!(run_id, pid, %host, %token, age_ms, "taking over a run whose holder is gone");
        }
        sqlx::query("UPDATE runs SET owner_pid = ?, owner_host = ?, owner_token = ?, heartbeat_at = ? WHERE id = ?")
            .bind(lease.pid as i64)
            .bind(&lease.host)
            .bind(&lease.token)
            .bind(now_ms())
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes the lease; false when another process has taken the run over.
    pub async fn heartbeat(&self, run_id: i64, lease: &Lease) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND owner_token = ?")
            .bind(now_ms())
            .bind(run_id)
            .bind(&lease.token)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the run up, recording where it ended.
    pub async fn release_run(
        &self,
        run_id: i64,
        lease: &Lease,
        state: RunState,
        stop_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let finished_at = (state == RunState::Finished).then(now_ms);
        sqlx::query(
            "UPDATE runs SET owner_pid = NULL, owner_host = NULL, owner_token = NULL, heartbeat_at = NULL, \
             state = ?, stop_reason = ?, finished_at = COALESCE(?, finished_at) \
             WHERE id = ? AND owner_token = ?",
        )
        .bind(state.as_str())
        .bind(stop_reason)
        .bind(finished_at)
        .bind(run_id)
        .bind(&lease.token)
        .execute(&self.pool)
        .await?;
        if state == RunState::Finished {
            super::claims::release_finished(&self.pool, run_id).await?;
        }
        Ok(())
    }

    /// Marks the run as executing (first start time kept across resumes).
    pub async fn mark_running(&self, run_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET state = ?, stop_reason = NULL, finished_at = NULL, \
             started_at = COALESCE(started_at, ?) WHERE id = ?",
        )
        .bind(RunState::Running.as_str())
        .bind(now_ms())
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// After a crash: every attempt left open is marked `lost` (its outcome is unknown)
    /// and its job queued again, due now. Returns how many jobs were requeued.
    ///
    /// A lost attempt does not spend the job's budget: the crash was ours, not the API's.
    pub async fn recover_in_flight(&self, run_id: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE attempts SET outcome = 'lost', finished_at = ? \
             WHERE finished_at IS NULL AND job_id IN (SELECT id FROM jobs WHERE run_id = ?)",
        )
        .bind(now)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        // A write that is not sent twice (a template's new version) is replaced by a
        // look that finds what it did (`rules::template::in_doubt`).
        let doubtful: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, kind FROM jobs WHERE run_id = ? AND state = ? ORDER BY id")
                .bind(run_id)
                .bind(JobState::InFlight.as_str())
                .fetch_all(&mut *tx)
                .await?;
        let lost = crate::rules::ErrorInfo::new(
            "KeyFleet.Lost",
            "the attempt was open when keyfleet stopped: whether it was applied is unknown",
        );
        let mut replaced = 0;
        for (job_id, kind) in doubtful {
            let kind: JobKind = kind.parse().map_err(StoreError::Corrupt)?;
            if kind.rereads_when_in_doubt() {
                super::follow::after_doubt(&mut tx, job_id, kind, &lost, now).await?;
                replaced += 1;
            }
        }
        let requeued = sqlx::query(
            "UPDATE jobs SET state = ?, next_attempt_at = ? WHERE run_id = ? AND state = ?",
        )
        .bind(JobState::Queued.as_str())
        .bind(now)
        .bind(run_id)
        .bind(JobState::InFlight.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            + replaced;
        tx.commit().await?;
        Ok(requeued)
    }

    /// Up to `limit` queued jobs due at `now`, earliest first: their time has come
    /// and every job they depend on has succeeded.
    /// `only` limits it to jobs of one action.
    pub async fn due_jobs(
        &self,
        run_id: i64,
        only: Option<Action>,
        now: i64,
        limit: i64,
    ) -> Result<Vec<QueuedJob>, StoreError> {
        self.due_jobs_except(run_id, only, now, limit, &[], &[])
            .await
    }

    /// [`Store::due_jobs`] leaving out jobs of the given routes (those whose lane is
    /// full, so that they do not hide the others) and of the fenced accounts (whose
    /// credentials failed: their jobs wait for a resume).
    pub async fn due_jobs_except(
        &self,
        run_id: i64,
        only: Option<Action>,
        now: i64,
        limit: i64,
        except: &[Route],
        fenced: &[Option<String>],
    ) -> Result<Vec<QueuedJob>, StoreError> {
        let only = only.map(Action::name);
        let except: Vec<[&str; 3]> = except
            .iter()
            .map(|route| {
                [
                    route.action.name(),
                    route.account.as_deref().unwrap_or(""),
                    route.region.as_str(),
                ]
            })
            .collect();
        let rows = sqlx::query(
            "SELECT id, kind, action, region, account, force_stop, instance_ids, key_ids, payload, attempts, pair_count \
             FROM jobs j WHERE run_id = ? AND state = ? AND next_attempt_at <= ? \
             AND (? IS NULL OR action = ?) \
             AND NOT EXISTS (SELECT 1 FROM json_each(?) x \
                             WHERE json_extract(x.value, '$[0]') = j.action \
                             AND json_extract(x.value, '$[1]') = COALESCE(j.account, '') \
                             AND json_extract(x.value, '$[2]') = j.region) \
             AND COALESCE(j.account, '') NOT IN (SELECT value FROM json_each(?)) \
             AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.depends_on \
                             WHERE d.job_id = j.id AND p.state != ?) \
             ORDER BY next_attempt_at, id LIMIT ?",
        )
        .bind(run_id)
        .bind(JobState::Queued.as_str())
        .bind(now)
        .bind(only)
        .bind(only)
        .bind(serde_json::to_string(&except).unwrap_or_else(|_| "[]".into()))
        .bind(fence_json(fenced))
        .bind(JobState::Succeeded.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.get("id");
                let action: &str = row.get("action");
                Ok(QueuedJob {
                    id,
                    kind: row
                        .get::<&str, _>("kind")
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))?,
                    action: Action::from_name(action).ok_or_else(|| {
                        StoreError::Corrupt(format!("job {id} has an unknown action {action:?}"))
                    })?,
                    region: row.get("region"),
                    account: row.get("account"),
                    force_stop: row.get::<i64, _>("force_stop") != 0,
                    instance_ids: parse_ids(row.get("instance_ids"), id)?,
                    key_ids: parse_ids(row.get("key_ids"), id)?,
                    payload: row.get("payload"),
                    attempts: row.get("attempts"),
                    pair_count: row.get("pair_count"),
                })
            })
            .collect()
    }

    /// When the earliest queued job that is not yet due at `now` falls due. Jobs due
    /// already are the dispatcher's to claim; jobs waiting for others are left out
    /// (they become due when those succeed, which a reply announces).
    pub async fn next_due_after(
        &self,
        run_id: i64,
        only: Option<Action>,
        now: i64,
        fenced: &[Option<String>],
    ) -> Result<Option<i64>, StoreError> {
        let only = only.map(Action::name);
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE run_id = ? AND state = ? AND next_attempt_at > ? \
             AND (? IS NULL OR action = ?) AND COALESCE(account, '') NOT IN (SELECT value FROM json_each(?))",
        )
        .bind(run_id)
        .bind(JobState::Queued.as_str())
        .bind(now)
        .bind(only)
        .bind(only)
        .bind(fence_json(fenced))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Jobs not yet final (queued or in flight), of one action with `only`.
    pub async fn open_jobs(&self, run_id: i64, only: Option<Action>) -> Result<i64, StoreError> {
        self.open_jobs_outside(run_id, only, &[]).await
    }

    /// [`Store::open_jobs`] but those of the fenced accounts.
    pub async fn open_jobs_outside(
        &self,
        run_id: i64,
        only: Option<Action>,
        fenced: &[Option<String>],
    ) -> Result<i64, StoreError> {
        let only = only.map(Action::name);
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND state IN (?, ?) AND (? IS NULL OR action = ?) \
             AND COALESCE(account, '') NOT IN (SELECT value FROM json_each(?))",
        )
        .bind(run_id)
        .bind(JobState::Queued.as_str())
        .bind(JobState::InFlight.as_str())
        .bind(only)
        .bind(only)
        .bind(fence_json(fenced))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Unbind pair counts (the input's pairs) by status.
    pub async fn pair_counts(&self, run_id: i64) -> Result<PairCounts, StoreError> {
        self.item_counts(run_id, Action::DisassociateInstancesKeyPairs)
            .await
    }

    /// A rotation's bind pairs (instance, new key) by status.
    pub async fn bind_counts(&self, run_id: i64) -> Result<PairCounts, StoreError> {
        self.item_counts(run_id, Action::AssociateInstancesKeyPairs)
            .await
    }

    async fn item_counts(&self, run_id: i64, action: Action) -> Result<PairCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM items WHERE run_id = ? AND bind = ? GROUP BY status",
        )
        .bind(run_id)
        .bind(action == Action::AssociateInstancesKeyPairs)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = PairCounts::default();
        for row in rows {
            let n: i64 = row.get("n");
            let status: ItemStatus = row
                .get::<&str, _>("status")
                .parse()
                .map_err(StoreError::Corrupt)?;
            *match status {
                ItemStatus::Pending => &mut counts.pending,
                ItemStatus::Succeeded => &mut counts.succeeded,
                ItemStatus::Failed => &mut counts.failed,
                ItemStatus::Rejected => &mut counts.rejected,
                ItemStatus::Duplicate => &mut counts.duplicate,
                ItemStatus::Skipped => &mut counts.skipped,
            } = n;
        }
        Ok(counts)
    }

    /// Every valid, distinct pair of a run with its status and proving RequestId, in input order.
    pub async fn pair_outcomes(&self, run_id: i64) -> Result<Vec<PairOutcome>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT region, account, instance_id, key_id, status, request_id, error_code FROM items \
             WHERE run_id = ? AND status IN ('pending', 'succeeded', 'failed', 'skipped') \
             AND bind = 0 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every bind pair of a run (a rotation's new keys) with its status and the
    /// RequestId of its accepted Associate, in id order.
    pub async fn bind_outcomes(&self, run_id: i64) -> Result<Vec<PairOutcome>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT region, account, instance_id, key_id, status, request_id, error_code FROM items \
             WHERE run_id = ? AND bind = 1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Failed pairs of a run by error code; a failed pair without a code (which
    /// keyfleet never writes) counts under `(none)`. The summary, `status` and
    /// `report` all read this one query.
    pub async fn failures_by_code(&self, run_id: i64) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT COALESCE(error_code, '(none)') AS code, COUNT(*) AS n FROM items \
             WHERE run_id = ? AND status = 'failed' GROUP BY error_code",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get("code"), row.get("n")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plan::{Begin, NewItem, NewJob, NewRun};

    /// A store holding one run of `jobs` one-pair jobs (ids 1..=jobs).
    async fn store_with_jobs(dir: &tempfile::TempDir, name: &str, jobs: usize) -> Store {
        let store = Store::open(&dir.path().join(name)).await.unwrap();
        let run = NewRun {
            input_path: "t",
            input_sha256: "0",
            options: "{}",
            rows_read: jobs as u64,
            pairs: jobs as u64,
            duplicates: 0,
            rejected: 0,
            instances: jobs as u64,
            keys: 1,
            regions: 1,
        };
        let Begin::New(mut writer) = store.begin_plan(&run).unwrap() else {
            panic!("a fresh database");
        };
        let key = vec!["skey-00000001".to_string()];
        for n in 1..=jobs {
            let instance = vec![format!("ins-{n:08x}")];
            let job = writer
                .add_job(NewJob {
                    kind: JobKind::Unbind,
                    region: "ap-guangzhou",
                    account: None,
                    force_stop: false,
                    instance_ids: &instance,
                    key_ids: &key,
                    payload: None,
                })
                .unwrap();
            let position = format!("line {}", n + 1);
            writer
                .add_items(|sink| {
                    sink.add(NewItem {
                        position: &position,
                        action: Action::DisassociateInstancesKeyPairs,
                        region: Some("ap-guangzhou"),
                        account: None,
                        instance_id: Some(&instance[0]),
                        key_id: Some(&key[0]),
                        status: ItemStatus::Pending,
                        duplicate_of: None,
                        reason: None,
                        job_id: Some(job),
                        new_key_id: None,
                        held: false,
                    })
                    .map(|_| ())
                })
                .unwrap();
        }
        writer.commit().unwrap();
        store
    }

    fn start(job_id: i64) -> Write {
        Write::Start {
            job_id,
            started_at: 1_000 + job_id,
        }
    }

    fn finish(attempt_id: i64, job_id: i64, outcome: Outcome) -> Write {
        Write::Finish(Box::new(Finish {
            attempt_id,
            job_id,
            kind: JobKind::Unbind,
            follow_up: FollowUp::default(),
            finished_at: 2_000 + job_id,
            sent_at: 1_500 + job_id,
            latency_ms: 7,
            http_status: Some(200),
            request_id: Some(format!("reply-{job_id}")),
            endpoint: None,
            outcome,
        }))
    }

    fn succeeded(job_id: i64) -> Outcome {
        Outcome::Succeeded {
            request_id: format!("req-{job_id}"),
        }
    }

    fn retry(job_id: i64) -> Outcome {
        Outcome::Retry {
            error: ErrorInfo {
                code: "InternalError".into(),
                message: format!("job {job_id}"),
            },
            transport: false,
            next_attempt_at: 9_000,
            give_up: false,
        }
    }

    /// Every row the writes touch, as text.
    async fn dump(store: &Store) -> Vec<String> {
        let mut rows = Vec::new();
        for query in [
            "SELECT json_array(id, job_id, number, started_at, finished_at, sent_at, outcome, request_id, \
             error_code, error_message, http_status, latency_ms) FROM attempts ORDER BY id",
            "SELECT json_array(id, state, attempts, throttles, next_attempt_at, last_error_code, \
             last_error_message, request_id, finished_at) FROM jobs ORDER BY id",
            "SELECT json_array(id, job_id, status, request_id, error_code, error_message) FROM items ORDER BY id",
        ] {
            let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
                .fetch_all(&store.pool)
                .await
                .unwrap();
            rows.extend(found);
        }
        rows
    }

    /// The writes of one batch give the same replies and the same rows whether they
    /// are committed together (bulk starts and successes) or one commit each.
    #[tokio::test]
    async fn a_batch_records_what_its_writes_record_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let together = store_with_jobs(&dir, "together.db", 5).await;
        let alone = store_with_jobs(&dir, "alone.db", 5).await;
        for store in [&together, &alone] {
            // Job 5 was skipped after the dispatcher read it: its start is refused.
            sqlx::query("UPDATE jobs SET state = 'skipped' WHERE id = 5")
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let first = [start(1), start(2), start(3), start(5)];
        // Attempt ids 1..=3 are jobs 1..=3; job 4 starts in the same batch as the others end.
        let second = [
            finish(1, 1, succeeded(1)),
            start(4),
            finish(2, 2, retry(2)),
            finish(3, 3, succeeded(3)),
        ];
        let mut replies_together = together.apply(&first).await.unwrap();
        replies_together.extend(together.apply(&second).await.unwrap());
        let mut replies_alone = Vec::new();
        for write in first.iter().chain(&second) {
            replies_alone.extend(alone.apply(std::slice::from_ref(write)).await.unwrap());
        }
        assert_eq!(
            replies_together,
            [
                Applied::Started {
                    attempt_id: 1,
                    number: 1
                },
                Applied::Started {
                    attempt_id: 2,
                    number: 1
                },
                Applied::Started {
                    attempt_id: 3,
                    number: 1
                },
                Applied::NotQueued,
                Applied::Finished,
                Applied::Started {
                    attempt_id: 4,
                    number: 1
                },
                Applied::Finished,
                Applied::Finished,
            ]
        );
        assert_eq!(replies_together, replies_alone);
        assert_eq!(dump(&together).await, dump(&alone).await);
        // And what they record is what a success means: job, item and attempt proven.
        let (state, item, attempt): (String, String, String) = sqlx::query_as(
            "SELECT j.state || ' ' || j.request_id, i.status || ' ' || i.request_id, \
             a.outcome || ' ' || a.request_id || ' ' || a.sent_at FROM jobs j \
             JOIN items i ON i.job_id = j.id JOIN attempts a ON a.job_id = j.id WHERE j.id = 3",
        )
        .fetch_one(&together.pool)
        .await
        .unwrap();
        assert_eq!(
            (state.as_str(), item.as_str(), attempt.as_str()),
            (
                "succeeded req-3",
                "succeeded req-3",
                "succeeded reply-3 1503"
            )
        );
        // The retried job starts its second attempt as number 2.
        let again = together.apply(&[start(2)]).await.unwrap();
        assert_eq!(
            again,
            [Applied::Started {
                attempt_id: 5,
                number: 2
            }]
        );
    }

    /// A batch that names one job twice is applied write by write, in order.
    #[tokio::test]
    async fn a_batch_naming_a_job_twice_is_applied_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_jobs(&dir, "k.db", 1).await;
        let replies = store.apply(&[start(1), start(1)]).await.unwrap();
        assert_eq!(
            replies,
            [
                Applied::Started {
                    attempt_id: 1,
                    number: 1
                },
                Applied::NotQueued
            ]
        );
    }
}
