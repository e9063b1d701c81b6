//! Writing a plan: one run, its jobs and its items, in one `BEGIN IMMEDIATE`
//! transaction, all or nothing.
//!
//! The write goes through a connection of its own (rusqlite, the same bundled
//! SQLite as the pool's), one prepared statement per table stepped once per row:
//! see [`open_plan_connection`] for why. Ids are assigned here, sequentially from
//! the table's current maximum (safe: `BEGIN IMMEDIATE` holds the write lock), so
//! that items can name their job and the item they duplicate.

use std::fmt;

use rusqlite::OptionalExtension;

use super::{BUSY_TIMEOUT, Store, StoreError, now_ms};

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
    /// `unbind` for the input's pairs; `bind` for a rotation's new keys; `look` for
    /// the `--keep-one-key` look before unbinding. The action is the kind's.
    pub kind: super::states::JobKind,
    pub region: &'a str,
    pub force_stop: bool,
    /// Sorted; at most 100.
    pub instance_ids: &'a [String],
    /// Sorted; at most 100.
    pub key_ids: &'a [String],
    /// Action-specific JSON (see `jobs.payload`).
    pub payload: Option<&'a str>,
}

/// One item (input pair) of a new plan. Borrowed: a million items cost no allocation.
#[derive(Debug, Clone, Copy)]
pub struct NewItem<'a> {
    /// `line 12`, `index 3`, `index 3, pair 2`.
    pub position: &'a str,
    /// Unbind (the input's pairs) or bind (a rotation's new keys).
    pub action: crate::cvm::Action,
    pub region: Option<&'a str>,
    pub instance_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    /// Pending, Rejected or Duplicate at planning time.
    pub status: ItemStatus,
    /// For a duplicate: the id of the item it repeats.
    pub duplicate_of: Option<i64>,
    /// For a rejected row: why.
    pub reason: Option<&'a str>,
    /// For a pending item: the job that covers it (`None` while held).
    pub job_id: Option<i64>,
    /// An unbind item of a rotation row: its new key id(s), space-separated.
    pub new_key_id: Option<&'a str>,
    /// Waits for a condition on its instance before it gets a job.
    pub held: bool,
}

/// What [`Store::begin_plan`] found.
#[derive(Debug)]
pub enum Begin {
    /// No run has this input and these options: write the plan through this writer.
    New(PlanWriter),
    /// A run with the same input SHA-256 and options exists: its id. Nothing was written.
    Existing(i64),
}

/// A connection of its own for one plan, closed when the plan is committed or dropped.
///
/// Why not the pool: sqlx copies every bound value and round-trips each statement
/// through its worker thread; a million items cost several seconds more than the
/// SQLite work itself (docs/BENCHMARKS.md). Here each item is one step of one
/// prepared statement with borrowed values, as `sqlite3`'s own `.import` does.
///
/// Settings: the file is already in WAL mode (set by [`Store::open`], persistent);
/// `synchronous=FULL` makes the commit durable. Foreign keys are off on this
/// connection only: every id the planner writes (run, job, duplicate_of) is assigned
/// here inside the write lock, so the references are correct by construction, and
/// checking a million of them costs a B-tree lookup each (a test runs
/// `PRAGMA foreign_key_check` after planning). `foreign_keys` cannot change inside
/// a transaction, hence before `BEGIN`. CHECK constraints are skipped the same way:
/// `items.status IN (...)` builds a temporary B-tree of the five words for every
/// row inserted (a quarter of the write's time), and the planner writes only
/// [`ItemStatus::as_str`] words and default run and job states.
fn open_plan_connection(store: &Store) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open_with_flags(
        store.file(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;
         PRAGMA ignore_check_constraints = ON;
         PRAGMA cache_size = -{PLAN_CACHE_KIB};
         PRAGMA temp_store = MEMORY;"
    ))?;
    conn.set_prepared_statement_cache_capacity(8);
    Ok(conn)
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Where [`PlanWriter::add_items`] puts items.
pub struct ItemSink<'w> {
    statement: rusqlite::CachedStatement<'w>,
    run_id: i64,
    next_id: &'w mut i64,
}

impl fmt::Debug for ItemSink<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemSink")
            .field("run_id", &self.run_id)
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl ItemSink<'_> {
    /// Adds an item; returns its id. Ids are consecutive in call order, which is input order.
    pub fn add(&mut self, item: NewItem<'_>) -> Result<i64, StoreError> {
        let id = *self.next_id;
        self.statement.execute(rusqlite::params![
            id,
            self.run_id,
            item.position,
            item.region,
            item.instance_id,
            item.key_id,
            item.status.as_str(),
            item.duplicate_of,
            item.reason,
            item.job_id,
            item.action == crate::cvm::Action::AssociateInstancesKeyPairs,
            item.new_key_id,
            item.held,
        ])?;
        *self.next_id += 1;
        Ok(id)
    }
}

/// A plan being written. Dropping it without [`PlanWriter::commit`] closes its
/// connection, which rolls everything back.
pub struct PlanWriter {
    conn: rusqlite::Connection,
    run_id: i64,
    created_at: i64,
    next_job_id: i64,
    next_item_id: i64,
}

impl fmt::Debug for PlanWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanWriter")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

const JOB_INSERT: &str = "INSERT INTO jobs (id, run_id, region, force_stop, instance_ids, key_ids, pair_count, created_at, kind, action, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const ITEM_INSERT: &str = "INSERT INTO items (id, run_id, position, region, instance_id, key_id, status, duplicate_of, reason, job_id, bind, new_key_id, held) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

impl PlanWriter {
    /// The new run's id.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Adds a job; returns its id. Ids are consecutive in call order.
    pub fn add_job(&mut self, job: NewJob<'_>) -> Result<i64, StoreError> {
        let id = self.next_job_id;
        let json = |ids: &[String]| serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        self.conn
            .prepare_cached(JOB_INSERT)?
            .execute(rusqlite::params![
                id,
                self.run_id,
                job.region,
                job.force_stop,
                json(job.instance_ids),
                json(job.key_ids),
                (job.instance_ids.len() * job.key_ids.len()) as i64,
                self.created_at,
                job.kind.as_str(),
                job.kind.action().name(),
                job.payload,
            ])?;
        self.next_job_id += 1;
        Ok(id)
    }

    /// Adds items through `fill`, which calls [`ItemSink::add`] once per item, in
    /// input order. Every job an item names must have been added first.
    ///
    /// A callback rather than a method per item: the prepared statement lives as
    /// long as `fill`, so a million items do not look it up a million times.
    pub fn add_items<E: From<StoreError>>(
        &mut self,
        fill: impl FnOnce(&mut ItemSink<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let statement = self
            .conn
            .prepare_cached(ITEM_INSERT)
            .map_err(StoreError::from)?;
        let mut sink = ItemSink {
            statement,
            run_id: self.run_id,
            next_id: &mut self.next_item_id,
        };
        fill(&mut sink)
    }

    /// Commits: the plan becomes visible all at once, durable (`synchronous=FULL`).
    pub fn commit(self) -> Result<i64, StoreError> {
        self.conn.execute_batch("COMMIT")?;
        self.conn.close().map_err(|(_, err)| err)?;
        Ok(self.run_id)
    }
}

impl Store {
    /// The id of the run planned from this input with these options, if any.
    pub async fn find_run(
        &self,
        input_sha256: &str,
        options: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM runs WHERE input_sha256 = ? AND options = ?")
                .bind(input_sha256)
                .bind(options)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Opens the plan's own connection and transaction (`BEGIN IMMEDIATE`) and inserts
    /// the run row, unless a run with the same input and options exists.
    ///
    /// Blocking (SQLite calls on this thread): call it from `spawn_blocking`.
    pub fn begin_plan(&self, run: &NewRun<'_>) -> Result<Begin, StoreError> {
        let conn = open_plan_connection(self)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        // Checked inside the write lock: two `plan`s of one file cannot both create a run.
        let existing: Option<i64> = conn
            .query_row(
                "SELECT id FROM runs WHERE input_sha256 = ? AND options = ?",
                (run.input_sha256, run.options),
                |row| row.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            conn.execute_batch("ROLLBACK")?;
            return Ok(Begin::Existing(id));
        }
        let created_at = now_ms();
        let run_id: i64 = conn.query_row(
            "INSERT INTO runs (created_at, input_path, input_sha256, options, rows_read, pairs,
                               duplicates, rejected, instances, keys, regions)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            rusqlite::params![
                created_at,
                run.input_path,
                run.input_sha256,
                run.options,
                as_i64(run.rows_read),
                as_i64(run.pairs),
                as_i64(run.duplicates),
                as_i64(run.rejected),
                as_i64(run.instances),
                as_i64(run.keys),
                as_i64(run.regions),
            ],
            |row| row.get(0),
        )?;
        let next_job_id: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs", [], |row| {
                row.get(0)
            })?;
        let next_item_id: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM items", [], |row| {
                row.get(0)
            })?;
        Ok(Begin::New(PlanWriter {
            conn,
            run_id,
            created_at,
            next_job_id,
            next_item_id,
        }))
    }

    /// Where a run's input came from and what it hashed to when planned.
    pub async fn run_input(&self, run_id: i64) -> Result<(String, String), StoreError> {
        sqlx::query_as("SELECT input_path, input_sha256 FROM runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NoSuchRun(run_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::AssertSqlSafe;

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
            .fetch_one(&store.pool)
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
            position: "line 2",
            action: crate::cvm::Action::DisassociateInstancesKeyPairs,
            region: Some("ap-guangzhou"),
            instance_id: Some("ins-00000001"),
            key_id: Some("skey-00000001"),
            status: ItemStatus::Pending,
            duplicate_of: None,
            reason: None,
            job_id: Some(job_id),
            new_key_id: None,
            held: false,
        };

        // Abandoned part way (more items than one statement): nothing remains.
        let Begin::New(mut writer) = store.begin_plan(&run("aa")).unwrap() else {
            panic!("no run yet")
        };
        let job = writer
            .add_job(NewJob {
                kind: crate::states::JobKind::Unbind,
                region: "ap-guangzhou",
                force_stop: false,
                instance_ids: &instance_ids,
                key_ids: &key_ids,
                payload: None,
            })
            .unwrap();
        writer
            .add_items(|sink| -> Result<(), StoreError> {
                for _ in 0..1005 {
                    sink.add(item(job))?;
                }
                Ok(())
            })
            .unwrap();
        drop(writer);
        for table in ["runs", "jobs", "items"] {
            assert_eq!(count(&store, table).await, 0, "{table}");
        }

        let Begin::New(mut writer) = store.begin_plan(&run("aa")).unwrap() else {
            panic!("the abandoned run must not count")
        };
        let job = writer
            .add_job(NewJob {
                kind: crate::states::JobKind::Unbind,
                region: "ap-guangzhou",
                force_stop: false,
                instance_ids: &instance_ids,
                key_ids: &key_ids,
                payload: None,
            })
            .unwrap();
        let (mut first, mut second) = (0, 0);
        writer
            .add_items(|sink| -> Result<(), StoreError> {
                first = sink.add(item(job))?;
                second = sink.add(item(job))?;
                Ok(())
            })
            .unwrap();
        assert_eq!(second, first + 1, "ids are consecutive in input order");
        let run_id = writer.commit().unwrap();
        assert_eq!(count(&store, "items").await, 2);
        assert!(
            matches!(store.begin_plan(&run("aa")).unwrap(), Begin::Existing(id) if id == run_id)
        );
        assert_eq!(store.find_run("aa", "{}").await.unwrap(), Some(run_id));
        assert_eq!(store.find_run("aa", "{\"x\":1}").await.unwrap(), None);
        assert_eq!(store.run_input(run_id).await.unwrap().1, "aa");
        store.close().await;
    }
}
