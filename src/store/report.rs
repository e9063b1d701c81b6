//! Reading runs back: summaries, status counts, and the per-item report.
//!
//! The report is read in pages by item id (keyset pagination): a million items
//! never sit in memory at once, and no read transaction is held open for the
//! whole report while an executor may be writing.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::plan::ItemStatus;
use super::{BUSY_TIMEOUT, Store, StoreError, now_ms};
use crate::cvm::Action;
use crate::taxonomy;

/// Items fetched per report page.
const REPORT_PAGE_ROWS: i64 = 5000;
/// Rejections a summary lists (the full list is in the report).
pub const SUMMARY_REJECTIONS: i64 = 5;

/// A rejected row: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub position: String,
    pub reason: String,
}

/// What a run was planned from and what the plan holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub run_id: i64,
    pub created_at: i64,
    pub input_path: String,
    pub input_sha256: String,
    pub state: String,
    /// Input rows read (a set row counts once).
    pub rows: i64,
    /// Distinct valid (region, instance, key) pairs: what will be sent.
    pub pairs: i64,
    /// Items that repeat an earlier valid pair.
    pub duplicates: i64,
    /// Rejected items (a set row can reject several pairs).
    pub rejected: i64,
    pub instances: i64,
    pub keys: i64,
    pub regions: i64,
    /// Jobs as planned (splits made later by the executor not counted).
    pub jobs: i64,
    /// A rotation's bind pairs (instance, new key): Associate work.
    pub binds: i64,
    /// Unbind pairs held until their instance's new keys are confirmed (or until the
    /// `--keep-one-key` look): Disassociate jobs made as they become ready.
    pub held: i64,
    /// The first few rejections in input order.
    pub rejections: Vec<Rejection>,
}

/// One line of `keyfleet runs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunListing {
    pub run_id: i64,
    pub created_at: i64,
    pub state: String,
    pub input_path: String,
    pub rows: i64,
    pub pairs: i64,
    pub duplicates: i64,
    pub rejected: i64,
    pub jobs: i64,
    /// Item counts by status (all five statuses present).
    pub items: BTreeMap<String, i64>,
}

/// Where a run stands: what `keyfleet status` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunStatus {
    pub run_id: i64,
    pub state: String,
    pub stop_reason: Option<String>,
    pub input_path: String,
    /// Unbind pairs (the input's) by status: succeeded, failed, rejected, duplicate,
    /// pending, skipped.
    pub pairs: BTreeMap<String, i64>,
    /// A rotation's bind pairs (instance, new key) by status; all zero without one.
    pub binds: BTreeMap<String, i64>,
    /// Unbind pairs still held: waiting for their instance's new keys to be confirmed
    /// (or for the `--keep-one-key` look).
    pub held: i64,
    /// Job counts by state: queued, in_flight, succeeded, failed, split, skipped.
    pub jobs: BTreeMap<String, i64>,
    /// Job counts by API action, then state (both phases of a rotation, the reads).
    pub jobs_by_action: BTreeMap<String, BTreeMap<String, i64>>,
    /// Failed pairs by the error code that failed them.
    pub failures_by_code: BTreeMap<String, i64>,
    /// Attempts recorded: requests sent (or started).
    pub requests: i64,
    /// Attempts whose error code classifies as Throttle.
    pub throttled: i64,
    /// Attempts by error code (every error reply or transport failure).
    pub errors_by_code: BTreeMap<String, i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// From start to finish, or to now while unfinished.
    pub elapsed_ms: Option<i64>,
}

/// One line of the report: one input pair and what became of it. Borrowed from the
/// page being reported (see [`Store::for_each_report_row`]): a million rows are
/// reported without allocating per row or per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow<'a> {
    pub position: &'a str,
    pub region: Option<&'a str>,
    pub instance_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub status: &'a str,
    /// RequestId of the success reply that covered the pair.
    pub request_id: Option<&'a str>,
    pub error_code: Option<&'a str>,
    /// For a rejected row, the reason it was rejected.
    pub error_message: Option<&'a str>,
    /// Attempts of the covering job and of the jobs it was split from.
    pub attempts: i64,
    /// The leaf job that covered the pair (for a duplicate: the first occurrence's).
    pub job_id: Option<i64>,
    /// What `keyfleet verify` found (`gone`, `still_bound`, ...); `None` when never verified.
    pub verified: Option<&'a str>,
    /// A rotation row: the new key(s) bound before the old one is unbound.
    pub new_key_id: Option<&'a str>,
    /// A rotation row: the Associate half, per new key (space-separated): its status,
    /// the RequestId that accepted it, and what the cloud showed (`bound`, ...).
    pub associate_status: Option<&'a str>,
    pub associate_request_id: Option<&'a str>,
    pub associate_verified: Option<&'a str>,
    /// A live run (`--running stop-start|force-stop`): the instance's `InstanceState`
    /// when the run looked at it; `None` outside a live run.
    pub power_before: Option<&'a str>,
    /// A live run: when the run took the instance down (UTC, RFC 3339, ms: the moment
    /// it was counted down, just before its stop or ForceStop request); `None` for an
    /// instance never stopped.
    pub stopped_at: Option<&'a str>,
    /// A live run: when the run sent the instance's StartInstances (`None` when it
    /// never had to: never stopped, or the cloud restarted it after a ForceStop).
    pub started_at: Option<&'a str>,
    /// A live run: seconds from `stopped_at` until the run saw the instance RUNNING
    /// again (3 decimals); `None` for an instance never stopped or not back up.
    pub downtime_s: Option<&'a str>,
    /// A live run: the `InstanceState` the run last saw after the instance's cycle
    /// (`RUNNING`; `STOPPED` for one left stopped); `None` when it was never cycled.
    pub power_after: Option<&'a str>,
    /// The row's account (a run over many accounts); `None`: the run's own.
    pub account: Option<&'a str>,
}

impl Store {
    /// The newest run's id.
    pub async fn newest_run(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT id FROM runs ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NoRuns)
    }

    /// `run` if given (and it exists), else the newest run.
    pub async fn resolve_run(&self, run: Option<i64>) -> Result<i64, StoreError> {
        match run {
            None => self.newest_run().await,
            Some(id) => {
                let found: Option<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE id = ?")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                found.ok_or(StoreError::NoSuchRun(id))
            }
        }
    }

    /// The first `limit` rejections of a run, in input order.
    pub async fn rejections(&self, run_id: i64, limit: i64) -> Result<Vec<Rejection>, StoreError> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT position, reason FROM items WHERE run_id = ? AND status = 'rejected'
             ORDER BY id LIMIT ?",
        )
        .bind(run_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(position, reason)| Rejection {
                position,
                reason: reason.unwrap_or_default(),
            })
            .collect())
    }

    /// A run's plan summary.
    pub async fn run_summary(&self, run_id: i64) -> Result<RunSummary, StoreError> {
        let row = sqlx::query(
            "SELECT id, created_at, input_path, input_sha256, state, rows_read, pairs, duplicates,
                    rejected, instances, keys, regions,
                    (SELECT COUNT(*) FROM jobs WHERE jobs.run_id = runs.id AND parent_job_id IS NULL) AS jobs,
                    (SELECT COUNT(*) FROM items WHERE items.run_id = runs.id AND bind = 1) AS binds,
                    (SELECT COUNT(*) FROM items WHERE items.run_id = runs.id AND held = 1) AS held
             FROM runs WHERE id = ?",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NoSuchRun(run_id))?;
        Ok(RunSummary {
            run_id: row.try_get("id")?,
            created_at: row.try_get("created_at")?,
            input_path: row.try_get("input_path")?,
            input_sha256: row.try_get("input_sha256")?,
            state: row.try_get("state")?,
            rows: row.try_get("rows_read")?,
            pairs: row.try_get("pairs")?,
            duplicates: row.try_get("duplicates")?,
            rejected: row.try_get("rejected")?,
            instances: row.try_get("instances")?,
            keys: row.try_get("keys")?,
            regions: row.try_get("regions")?,
            jobs: row.try_get("jobs")?,
            binds: row.try_get("binds")?,
            held: row.try_get("held")?,
            rejections: self.rejections(run_id, SUMMARY_REJECTIONS).await?,
        })
    }

    /// Every run, newest first.
    pub async fn list_runs(&self) -> Result<Vec<RunListing>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, state, input_path, rows_read, pairs, duplicates, rejected,
                    (SELECT COUNT(*) FROM jobs WHERE jobs.run_id = runs.id AND parent_job_id IS NULL) AS jobs
             FROM runs ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            let run_id: i64 = row.try_get("id")?;
            runs.push(RunListing {
                run_id,
                created_at: row.try_get("created_at")?,
                state: row.try_get("state")?,
                input_path: row.try_get("input_path")?,
                rows: row.try_get("rows_read")?,
                pairs: row.try_get("pairs")?,
                duplicates: row.try_get("duplicates")?,
                rejected: row.try_get("rejected")?,
                jobs: row.try_get("jobs")?,
                items: self
                    .status_counts(run_id, Action::DisassociateInstancesKeyPairs)
                    .await?,
            });
        }
        Ok(runs)
    }

    /// A run's items of one action (unbind: the input's pairs; bind: a rotation's new
    /// keys) by status, every status present.
    async fn status_counts(
        &self,
        run_id: i64,
        action: Action,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM items WHERE run_id = ? AND bind = ? GROUP BY status",
        )
        .bind(run_id)
        .bind(action == Action::AssociateInstancesKeyPairs)
        .fetch_all(&self.pool)
        .await?;
        let mut counts: BTreeMap<String, i64> = ItemStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        counts.extend(rows);
        Ok(counts)
    }

    /// A run's status: counts of pairs, jobs, attempts and failures.
    pub async fn run_status(&self, run_id: i64) -> Result<RunStatus, StoreError> {
        let run = sqlx::query(
            "SELECT id, state, stop_reason, input_path, created_at, started_at, finished_at
             FROM runs WHERE id = ?",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NoSuchRun(run_id))?;
        let pairs = self
            .status_counts(run_id, Action::DisassociateInstancesKeyPairs)
            .await?;
        let binds = self
            .status_counts(run_id, Action::AssociateInstancesKeyPairs)
            .await?;
        let held: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM items WHERE run_id = ? AND held = 1")
                .bind(run_id)
                .fetch_one(&self.pool)
                .await?;
        let job_rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT action, state, COUNT(*) FROM jobs WHERE run_id = ? GROUP BY action, state",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let mut jobs: BTreeMap<String, i64> = super::JobState::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        let mut jobs_by_action: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (action, state, n) in job_rows {
            *jobs.entry(state.clone()).or_default() += n;
            jobs_by_action.entry(action).or_default().insert(state, n);
        }
        let failures_by_code = self.failures_by_code(run_id).await?;
        let attempts: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT a.error_code, COUNT(*) FROM attempts a JOIN jobs j ON j.id = a.job_id
             WHERE j.run_id = ? GROUP BY a.error_code",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let mut requests = 0;
        let mut throttled = 0;
        let mut errors_by_code = BTreeMap::new();
        for (code, n) in attempts {
            requests += n;
            if let Some(code) = code {
                if taxonomy::is_throttle(&code) {
                    throttled += n;
                }
                errors_by_code.insert(code, n);
            }
        }
        let started_at: Option<i64> = run.try_get("started_at")?;
        let finished_at: Option<i64> = run.try_get("finished_at")?;
        Ok(RunStatus {
            run_id,
            state: run.try_get("state")?,
            stop_reason: run.try_get("stop_reason")?,
            input_path: run.try_get("input_path")?,
            pairs,
            binds,
            held,
            jobs,
            jobs_by_action,
            failures_by_code,
            requests,
            throttled,
            errors_by_code,
            created_at: run.try_get("created_at")?,
            started_at,
            finished_at,
            elapsed_ms: started_at.map(|start| finished_at.unwrap_or_else(now_ms) - start),
        })
    }

    /// Calls `emit` for every item of a run in input order (optionally only one status),
    /// reading in pages. Stops at the first error `emit` returns.
    ///
    /// A duplicate shows status `duplicate` with the outcome (request id, error, job)
    /// of the item it repeats. The job is `items.job_id`, which the executor keeps
    /// pointing at the leaf job when it splits one.
    ///
    /// The pages are read through a read-only connection of its own (rusqlite): sqlx
    /// decodes each row through its worker thread and a channel, which made the report
    /// of a million items several times slower than `sqlite3` printing the same table.
    /// Each page is one short read (blocking this thread for milliseconds) into one
    /// buffer, so no read snapshot is held while `emit` writes, and the rows `emit`
    /// sees borrow from that buffer: nothing is allocated per row or per cell.
    pub async fn for_each_report_row<E>(
        &self,
        run_id: i64,
        only: Option<ItemStatus>,
        mut emit: impl FnMut(&ReportRow<'_>) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let attempts = self.attempts_with_ancestors(run_id).await?;
        let conn = rusqlite::Connection::open_with_flags(
            self.file(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let (first, last): (Option<i64>, Option<i64>) = conn.query_row(
            "SELECT MIN(id), MAX(id) FROM items WHERE run_id = ?",
            [run_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(Ok(()));
        };
        let only = only.map(ItemStatus::as_str);
        let mut after = first - 1;
        let mut page = ReportPage::default();
        // Rows come grouped by job: most look up the same job as the row before.
        let mut seen: (Option<i64>, i64) = (None, 0);
        let mut attempts_of = |job_id: Option<i64>| {
            if job_id != seen.0 {
                seen = (
                    job_id,
                    job_id.and_then(|j| attempts.get(&j).copied()).unwrap_or(0),
                );
            }
            seen.1
        };
        loop {
            page.clear();
            // Asked per page: a live run's survey may add power rows while a report of
            // it is read. Without any, the page skips the join (a lookup per item).
            let live: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM power WHERE run_id = ?)")?
                .query_row([run_id], |row| row.get(0))?;
            {
                let mut statement =
                    conn.prepare_cached(if live { REPORT_PAGE_LIVE } else { REPORT_PAGE })?;
                let mut rows = statement.query(rusqlite::params![
                    after,
                    last,
                    run_id,
                    only,
                    REPORT_PAGE_ROWS
                ])?;
                while let Some(row) = rows.next()? {
                    page.push(row)?;
                }
            }
            let Some(last_id) = page.last_id() else {
                return Ok(Ok(()));
            };
            after = last_id;
            for n in 0..page.len() {
                let row = page.row(n, &mut attempts_of);
                if let Err(e) = emit(&row) {
                    return Ok(Err(e));
                }
            }
        }
    }

    /// For every job of a run: attempts of the job itself plus those of its ancestors
    /// (the jobs it was split from). Jobs are few (pairs / 10,000 or so), so this fits in memory.
    async fn attempts_with_ancestors(&self, run_id: i64) -> Result<HashMap<i64, i64>, StoreError> {
        let jobs: Vec<(i64, Option<i64>, i64)> = sqlx::query_as(
            "SELECT j.id, j.parent_job_id, (SELECT COUNT(*) FROM attempts a WHERE a.job_id = j.id)
             FROM jobs j WHERE j.run_id = ? ORDER BY j.id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let parent: HashMap<i64, (Option<i64>, i64)> =
            jobs.iter().map(|&(id, p, n)| (id, (p, n))).collect();
        let mut total = HashMap::with_capacity(jobs.len());
        for &(id, _, _) in &jobs {
            let mut sum = 0;
            let mut cursor = Some(id);
            // Bounded walk: a malformed cycle cannot loop forever.
            for _ in 0..=jobs.len() {
                let Some(job) = cursor else { break };
                let Some(&(up, n)) = parent.get(&job) else {
                    break;
                };
                sum += n;
                cursor = up;
            }
            total.insert(id, sum);
        }
        Ok(total)
    }
}

/// The report's page query, up to its power columns: items by id within the run's
/// range, keeping only the run's unbind items. Ids need not be consecutive (another
/// run's items may sit between). The `+` on run_id and status keeps SQLite from
/// choosing the (run_id, status) index, which would sort the whole run per page.
/// Columns: the id, the covering job, then [`REPORT_TEXT_COLUMNS`] texts in the
/// order of [`ReportRow`]'s fields.
macro_rules! report_page {
    ($power_columns:literal, $power_join:literal) => {
        concat!(
            "SELECT i.id, COALESCE(d.job_id, i.job_id),
                    i.position, i.region, i.instance_id, i.key_id, i.status,
                    COALESCE(d.request_id, i.request_id),
                    CASE WHEN i.status = 'rejected' THEN NULL
                         ELSE COALESCE(d.error_code, i.error_code) END,
                    CASE WHEN i.status = 'rejected' THEN i.reason
                         ELSE COALESCE(d.error_message, i.error_message) END,
                    CASE WHEN i.status = 'duplicate' THEN d.verified ELSE i.verified END,
                    i.new_key_id,
                    CASE WHEN i.new_key_id IS NOT NULL THEN
                        (SELECT group_concat(b.status, ' ') FROM (SELECT status FROM items
                             INDEXED BY items_bind WHERE run_id = i.run_id AND bind = 1
                             AND region = i.region AND instance_id = i.instance_id
                             ORDER BY key_id) b) END,
                    CASE WHEN i.new_key_id IS NOT NULL THEN
                        (SELECT group_concat(COALESCE(b.request_id, '-'), ' ') FROM
                            (SELECT request_id FROM items INDEXED BY items_bind
                             WHERE run_id = i.run_id AND bind = 1 AND region = i.region
                             AND instance_id = i.instance_id ORDER BY key_id) b) END,
                    CASE WHEN i.new_key_id IS NOT NULL THEN
                        (SELECT group_concat(COALESCE(b.verified, '-'), ' ') FROM
                            (SELECT verified FROM items INDEXED BY items_bind
                             WHERE run_id = i.run_id AND bind = 1 AND region = i.region
                             AND instance_id = i.instance_id ORDER BY key_id) b) END,
                    i.account",
            $power_columns,
            "
             FROM items i LEFT JOIN items d ON d.id = i.duplicate_of ",
            $power_join,
            "
             WHERE i.id > ?1 AND i.id <= ?2 AND +i.run_id = ?3 AND (?4 IS NULL OR +i.status = ?4)
                   AND +i.bind = 0
             ORDER BY i.id LIMIT ?5"
        )
    };
}

/// A page of a live run's report: the power columns from the instance's `power` row.
const REPORT_PAGE_LIVE: &str = report_page!(
    ",
     p.power_before,
     strftime('%Y-%m-%dT%H:%M:%fZ', p.stopped_at / 1000.0, 'unixepoch'),
     strftime('%Y-%m-%dT%H:%M:%fZ', p.started_at / 1000.0, 'unixepoch'),
     CASE WHEN p.stopped_at IS NOT NULL AND p.up_at IS NOT NULL
          THEN printf('%.3f', (p.up_at - p.stopped_at) / 1000.0) END,
     p.power_after",
    "LEFT JOIN power p ON p.run_id = i.run_id AND p.region = i.region
                        AND p.instance_id = i.instance_id"
);

/// A page of a run without power rows: without the power columns, which stay empty.
const REPORT_PAGE: &str = report_page!("", "");

/// Text columns of a live run's report page (every column of [`ReportRow`] but the
/// two numbers, the account before the power columns); a page of a run without power
/// rows reads the first 14.
const REPORT_TEXT_COLUMNS: usize = 19;

/// A page of the report as read: every row's text back to back in one buffer, reused
/// from page to page.
#[derive(Debug, Default)]
struct ReportPage {
    text: String,
    rows: Vec<PageRow>,
}

/// One row of a [`ReportPage`]: its text cells as ranges of the page's buffer.
#[derive(Debug)]
struct PageRow {
    id: i64,
    job_id: Option<i64>,
    cells: [Option<(usize, usize)>; REPORT_TEXT_COLUMNS],
}

impl ReportPage {
    fn clear(&mut self) {
        self.text.clear();
        self.rows.clear();
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn last_id(&self) -> Option<i64> {
        self.rows.last().map(|row| row.id)
    }

    /// Copies a row of a page query ([`REPORT_PAGE`]) into the page.
    fn push(&mut self, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        let mut cells = [None; REPORT_TEXT_COLUMNS];
        let read = row.as_ref().column_count().saturating_sub(2);
        for (n, cell) in cells.iter_mut().take(read).enumerate() {
            let column = n + 2;
            *cell = match row.get_ref(column)? {
                rusqlite::types::ValueRef::Null => None,
                rusqlite::types::ValueRef::Text(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|err| {
                        rusqlite::Error::FromSqlConversionFailure(
                            column,
                            rusqlite::types::Type::Text,
                            Box::new(err),
                        )
                    })?;
                    let start = self.text.len();
                    self.text.push_str(text);
                    Some((start, self.text.len()))
                }
                other => {
                    return Err(rusqlite::Error::InvalidColumnType(
                        column,
                        String::new(),
                        other.data_type(),
                    ));
                }
            };
        }
        self.rows.push(PageRow {
            id: row.get(0)?,
            job_id: row.get(1)?,
            cells,
        });
        Ok(())
    }

    /// Row `n` of the page, its attempts from `attempts_of` (the covering job's).
    fn row(&self, n: usize, attempts_of: &mut impl FnMut(Option<i64>) -> i64) -> ReportRow<'_> {
        let row = &self.rows[n];
        let cell = |c: usize| row.cells[c].map(|(start, end)| &self.text[start..end]);
        ReportRow {
            position: cell(0).unwrap_or_default(),
            region: cell(1),
            instance_id: cell(2),
            key_id: cell(3),
            status: cell(4).unwrap_or_default(),
            request_id: cell(5),
            error_code: cell(6),
            error_message: cell(7),
            attempts: attempts_of(row.job_id),
            job_id: row.job_id,
            verified: cell(8),
            new_key_id: cell(9),
            associate_status: cell(10),
            associate_request_id: cell(11),
            associate_verified: cell(12),
            account: cell(13),
            power_before: cell(14),
            stopped_at: cell(15),
            started_at: cell(16),
            downtime_s: cell(17),
            power_after: cell(18),
        }
    }
}
