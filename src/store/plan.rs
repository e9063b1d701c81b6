//! Writing a plan: one run, its jobs and its items, in one `BEGIN IMMEDIATE`
//! transaction, all or nothing.
//!
//! Rows are buffered and written with multi-row `INSERT`s: sqlx pays a fixed cost
//! per statement, so a million single-row inserts would take minutes where a few
//! thousand statements of several hundred rows take seconds. Ids are assigned here,
//! sequentially from the table's current maximum (safe: `BEGIN IMMEDIATE` holds the
//! write lock), so that items can name their job and the item they duplicate
//! before either is flushed.

use std::fmt;

use sqlx::sqlite::Sqlite;
use sqlx::{AssertSqlSafe, Transaction};

use super::{Store, StoreError, now_ms};

/// Rows per multi-row `INSERT` for items (10 values each: under SQLite's 32,766 variable limit).
const ITEM_ROWS_PER_STATEMENT: usize = 1000;
/// Rows per multi-row `INSERT` for jobs (8 values each).
const JOB_ROWS_PER_STATEMENT: usize = 500;
/// SQLite page cache for the planning connection, in KiB (negative `cache_size` means KiB).
/// Index inserts for a million items stay in memory instead of re-reading pages.
const PLAN_CACHE_KIB: i64 = 32 * 1024;

pub use super::states::ItemStatus;

/// The run row of a new plan.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Absolute path of the input, or `-` for standard input.
    pub input_path: &'a str,
    /// Lowercase hex SHA-256 of the input bytes.
    pub input_sha256: &'a str,
    /// Canonical JSON of the plan options; with the SHA-256, the run's identity.
    pub options: &'a str,
    pub rows_read: u64,
    /// Distinct valid pairs.
    pub pairs: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub instances: u64,
    pub keys: u64,
    pub regions: u64,
}

/// One job of a new plan.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub region: &'a str,
    pub force_stop: bool,
    /// Sorted; at most 100.
    pub instance_ids: &'a [String],
    /// Sorted; at most 100.
    pub key_ids: &'a [String],
}

/// One item (input pair) of a new plan.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// `line 12`, `index 3`, `index 3, pair 2`.
    pub position: String,
    pub region: Option<String>,
    pub instance_id: Option<String>,
    pub key_id: Option<String>,
    /// Pending, Rejected or Duplicate at planning time.
    pub status: ItemStatus,
    /// For a duplicate: the id of the item it repeats.
    pub duplicate_of: Option<i64>,
    /// For a rejected row: why.
    pub reason: Option<String>,
    /// For a pending item: the job that covers it.
    pub job_id: Option<i64>,
}

/// What [`begin_plan`] found.
#[derive(Debug)]
pub enum Begin {
    /// No run has this input and these options: write the plan through this writer.
    New(PlanWriter),
    /// A run with the same input SHA-256 and options exists: its id. Nothing was written.
    Existing(i64),
}

/// The id of the run planned from this input with these options, if any.
pub async fn find_run(
    store: &Store,
    input_sha256: &str,
    options: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM runs WHERE input_sha256 = ? AND options = ?")
            .bind(input_sha256)
            .bind(options)
            .fetch_optional(store.pool())
            .await?,
    )
}

/// Opens the plan's transaction (`BEGIN IMMEDIATE`) and inserts the run row,
/// unless a run with the same input and options exists.
pub async fn begin_plan(store: &Store, run: &NewRun<'_>) -> Result<Begin, StoreError> {
    let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await?;
    // Checked inside the write lock: two `plan`s of one file cannot both create a run.
    let existing: Option<i64> =
        sqlx::query_scalar("SELECT id FROM runs WHERE input_sha256 = ? AND options = ?")
            .bind(run.input_sha256)
            .bind(run.options)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(id) = existing {
        tx.rollback().await?;
        return Ok(Begin::Existing(id));
    }
    sqlx::query(AssertSqlSafe(format!(
        "PRAGMA cache_size = -{PLAN_CACHE_KIB}"
    )))
    .execute(&mut *tx)
    .await?;
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (created_at, input_path, input_sha256, options, rows_read, pairs,
                           duplicates, rejected, instances, keys, regions)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(now_ms())
    .bind(run.input_path)
    .bind(run.input_sha256)
    .bind(run.options)
    .bind(as_i64(run.rows_read))
    .bind(as_i64(run.pairs))
    .bind(as_i64(run.duplicates))
    .bind(as_i64(run.rejected))
    .bind(as_i64(run.instances))
    .bind(as_i64(run.keys))
    .bind(as_i64(run.regions))
    .fetch_one(&mut *tx)
    .await?;
    let next_job_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs")
        .fetch_one(&mut *tx)
        .await?;
    let next_item_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM items")
        .fetch_one(&mut *tx)
        .await?;
    Ok(Begin::New(PlanWriter {
        tx,
        run_id,
        created_at: now_ms(),
        next_job_id,
        next_item_id,
        jobs: Vec::with_capacity(JOB_ROWS_PER_STATEMENT),
        items: Vec::with_capacity(ITEM_ROWS_PER_STATEMENT),
        job_sql: None,
        item_sql: None,
    }))
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A plan being written. Dropping it without [`PlanWriter::commit`] rolls everything back.
pub struct PlanWriter {
    tx: Transaction<'static, Sqlite>,
    run_id: i64,
    created_at: i64,
    next_job_id: i64,
    next_item_id: i64,
    jobs: Vec<PendingJob>,
    items: Vec<(i64, NewItem)>,
    job_sql: Option<String>,
    item_sql: Option<String>,
}

impl fmt::Debug for PlanWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanWriter")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

struct PendingJob {
    id: i64,
    region: String,
    force_stop: bool,
    instance_ids: String,
    key_ids: String,
    pair_count: i64,
}

/// The multi-row INSERT for `rows` rows; the full-size statement, used for every
/// batch but the last, is built once and kept in `cache`.
fn cached_values_sql(
    cache: &mut Option<String>,
    insert: &str,
    columns: usize,
    rows: usize,
    full_rows: usize,
) -> String {
    if rows != full_rows {
        return values_sql(insert, columns, rows);
    }
    cache
        .get_or_insert_with(|| values_sql(insert, columns, rows))
        .clone()
}

fn values_sql(head: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(","));
    let mut sql = String::with_capacity(head.len() + rows * (row.len() + 1));
    sql.push_str(head);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&row);
    }
    sql
}

const JOB_INSERT: &str = "INSERT INTO jobs (id, run_id, region, force_stop, instance_ids, key_ids, pair_count, created_at) VALUES ";
const ITEM_INSERT: &str = "INSERT INTO items (id, run_id, position, region, instance_id, key_id, status, duplicate_of, reason, job_id) VALUES ";

impl PlanWriter {
    /// The new run's id.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Adds a job; returns its id. Ids are consecutive in call order.
    pub async fn add_job(&mut self, job: NewJob<'_>) -> Result<i64, StoreError> {
        let id = self.next_job_id;
        self.next_job_id += 1;
        let json = |ids: &[String]| serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        self.jobs.push(PendingJob {
            id,
            region: job.region.to_string(),
            force_stop: job.force_stop,
            instance_ids: json(job.instance_ids),
            key_ids: json(job.key_ids),
            pair_count: (job.instance_ids.len() * job.key_ids.len()) as i64,
        });
        if self.jobs.len() >= JOB_ROWS_PER_STATEMENT {
            self.flush_jobs().await?;
        }
        Ok(id)
    }

    /// Adds an item; returns its id. Ids are consecutive in call order, which is input order.
    /// Every job an item names must have been added first.
    pub async fn add_item(&mut self, item: NewItem) -> Result<i64, StoreError> {
        let id = self.next_item_id;
        self.next_item_id += 1;
        self.items.push((id, item));
        if self.items.len() >= ITEM_ROWS_PER_STATEMENT {
            self.flush_items().await?;
        }
        Ok(id)
    }

    async fn flush_jobs(&mut self) -> Result<(), StoreError> {
        if self.jobs.is_empty() {
            return Ok(());
        }
        let sql = cached_values_sql(
            &mut self.job_sql,
            JOB_INSERT,
            8,
            self.jobs.len(),
            JOB_ROWS_PER_STATEMENT,
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for job in self.jobs.drain(..) {
            query = query
                .bind(job.id)
                .bind(self.run_id)
                .bind(job.region)
                .bind(job.force_stop)
                .bind(job.instance_ids)
                .bind(job.key_ids)
                .bind(job.pair_count)
                .bind(self.created_at);
        }
        query.execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn flush_items(&mut self) -> Result<(), StoreError> {
        // Items name jobs: the jobs must be in the table first.
        self.flush_jobs().await?;
        if self.items.is_empty() {
            return Ok(());
        }
        let sql = cached_values_sql(
            &mut self.item_sql,
            ITEM_INSERT,
            10,
            self.items.len(),
            ITEM_ROWS_PER_STATEMENT,
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (id, item) in self.items.drain(..) {
            query = query
                .bind(id)
                .bind(self.run_id)
                .bind(item.position)
                .bind(item.region)
                .bind(item.instance_id)
                .bind(item.key_id)
                .bind(item.status.as_str())
                .bind(item.duplicate_of)
                .bind(item.reason)
                .bind(item.job_id);
        }
        query.execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Writes what is buffered and commits: the plan becomes visible all at once.
    pub async fn commit(mut self) -> Result<i64, StoreError> {
        self.flush_jobs().await?;
        self.flush_items().await?;
        // Back to the default cache for whoever gets this pooled connection next.
        sqlx::query("PRAGMA cache_size = -2000")
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(self.run_id)
    }
}

/// Where a run's input came from and what it hashed to when planned.
pub async fn run_input(store: &Store, run_id: i64) -> Result<(String, String), StoreError> {
    sqlx::query_as("SELECT input_path, input_sha256 FROM runs WHERE id = ?")
        .bind(run_id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NoSuchRun(run_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(sha: &'a str) -> NewRun<'a> {
        NewRun {
            input_path: "/tmp/rows.csv",
            input_sha256: sha,
            options: "{}",
            rows_read: 1,
            pairs: 1,
            duplicates: 0,
            rejected: 0,
            instances: 1,
            keys: 1,
            regions: 1,
        }
    }

    async fn count(store: &Store, table: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_plan_is_all_or_nothing_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).await.unwrap();
        let instance_ids = vec!["ins-00000001".to_string()];
        let key_ids = vec!["skey-00000001".to_string()];
        let item = |job_id| NewItem {
            position: "line 2".into(),
            region: Some("ap-guangzhou".into()),
            instance_id: Some("ins-00000001".into()),
            key_id: Some("skey-00000001".into()),
            status: ItemStatus::Pending,
            duplicate_of: None,
            reason: None,
            job_id: Some(job_id),
        };

        // Abandoned part way (more items than one statement): nothing remains.
        let Begin::New(mut writer) = begin_plan(&store, &run("aa")).await.unwrap() else {
            panic!("no run yet")
        };
        let job = writer
            .add_job(NewJob {
                region: "ap-guangzhou",
                force_stop: false,
                instance_ids: &instance_ids,
                key_ids: &key_ids,
            })
            .await
            .unwrap();
        for _ in 0..ITEM_ROWS_PER_STATEMENT + 5 {
            writer.add_item(item(job)).await.unwrap();
        }
        drop(writer);
        for table in ["runs", "jobs", "items"] {
            assert_eq!(count(&store, table).await, 0, "{table}");
        }

        let Begin::New(mut writer) = begin_plan(&store, &run("aa")).await.unwrap() else {
            panic!("the abandoned run must not count")
        };
        let job = writer
            .add_job(NewJob {
                region: "ap-guangzhou",
                force_stop: false,
                instance_ids: &instance_ids,
                key_ids: &key_ids,
            })
            .await
            .unwrap();
        let first = writer.add_item(item(job)).await.unwrap();
        let second = writer.add_item(item(job)).await.unwrap();
        assert_eq!(second, first + 1, "ids are consecutive in input order");
        let run_id = writer.commit().await.unwrap();
        assert_eq!(count(&store, "items").await, 2);
        assert!(
            matches!(begin_plan(&store, &run("aa")).await.unwrap(), Begin::Existing(id) if id == run_id)
        );
        assert_eq!(find_run(&store, "aa", "{}").await.unwrap(), Some(run_id));
        assert_eq!(find_run(&store, "aa", "{\"x\":1}").await.unwrap(), None);
        assert_eq!(run_input(&store, run_id).await.unwrap().1, "aa");
        store.close().await;
    }
}
