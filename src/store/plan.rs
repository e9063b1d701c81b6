//! Writing a plan: one run, its jobs and its items, in one `BEGIN IMMEDIATE`
//! transaction, all or nothing.
//!
//! The write goes through a connection of its own (rusqlite, the same bundled
//! SQLite as the pool's): one prepared statement per table, items 64 to a statement
//! (see [`open_plan_connection`] and [`ItemSink`] for why). Ids are assigned here,
//! sequentially from the table's current maximum (safe: `BEGIN IMMEDIATE` holds the
//! write lock), so that items can name their job and the item they duplicate. Text
//! values are bound in place, not copied ([`StaticStatement`]). A plan at least as
//! large as the items already stored builds two of the item indexes once at commit
//! instead of row by row ([`deferred_indexes`]), unless its items come in the
//! indexes' order ([`PlanWriter::items_in_index_order`]), when keeping them as it
//! goes costs less.
//!
//! Each page once: in WAL mode every page of a plan is written twice, to the WAL and
//! again by the checkpoint. A plan that has the database to itself ([`Alone`]: this
//! process's pool parked, no other connection open, no other keyfleet process able
//! to open it meanwhile) writes through a rollback journal instead, where the pages a
//! plan appends past the end of the file need no journal at all, and puts WAL back
//! at commit.

use std::fmt;

use rusqlite::OptionalExtension;

use super::{BUSY_TIMEOUT, Store, StoreError, WAL_RETRY, now_ms};

/// SQLite page cache for the planning connection, in KiB (negative `cache_size` means KiB).
/// Index inserts for a million items stay in memory instead of re-reading pages.
const PLAN_CACHE_KIB: i64 = 32 * 1024;

/// The page cache while deferred indexes are built at commit, in KiB (see
/// [`PlanWriter::commit`]): also the memory `CREATE INDEX` sorts in before it
/// spills to temporary files.
const INDEX_BUILD_CACHE_KIB: i64 = 64 * 1024;

/// The indexes on `items` that a large plan builds once, after its rows, instead of
/// inserting into them row by row (see [`deferred_indexes`]). The partial indexes
/// (`items_held`, `items_bind`) are not among them: a plain item only tests their
/// condition, and rebuilding them would scan the whole table twice more.
const DEFERRABLE_INDEXES: [&str; 2] = ["items_run", "items_job"];

/// Below this many new items a plan keeps every index up to date as it goes: the
/// schema change of dropping and recreating indexes is not worth it.
const DEFER_INDEXES_FROM_ITEMS: i64 = 20_000;

pub use super::states::ItemStatus;

/// How long [`Store::claim_for_plan`] waits for this process's pool connections to
/// come back idle before the plan goes through the WAL instead.
const PARK_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The database to one plan alone, from [`Store::claim_for_plan`] to the plan's
/// commit (or its drop): no connection of this process's pool is open, and
/// `<db>-migrate.lock` is held, which every keyfleet process takes to open the
/// database (`Store::open`), so none connects meanwhile: its open waits, up to
/// [`super::MIGRATE_LOCK_WAIT`], and then names this process. Whether any other
/// connection is still open (another process that opened the database earlier, or a
/// `sqlite3` shell) is only known when the plan tries to leave WAL mode, which SQLite
/// refuses then; the plan goes through the WAL instead.
#[derive(Debug)]
pub struct Alone {
    /// Held (`flock`) until dropped; the kernel lets go if the process is killed.
    _lock: std::fs::File,
}

/// How a plan's pages reach the database file (see [`PlanWriter::journal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanJournal {
    /// Through the WAL, then the checkpoint: each page twice. Another connection was
    /// open, or the plan did not have the database to itself.
    Wal,
    /// Through a rollback journal (`journal_mode=DELETE`), WAL put back at commit:
    /// each new page once.
    Rollback,
}

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
    /// The account its requests are signed as (`None`: the run's own).
    pub account: Option<&'a str>,
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
    /// The row's account (`None`: the run's own).
    pub account: Option<&'a str>,
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
/// Settings: the file is in WAL mode (set by [`Store::open`], persistent; in rollback
/// mode only while a plan alone writes, or after one could not put WAL back);
/// `synchronous=FULL` makes the commit durable. Foreign keys are off on this
/// connection only: every id the planner writes (run, job, duplicate_of) is assigned
/// here inside the write lock, so the references are correct by construction, and
/// checking a million of them costs a B-tree lookup each (a test runs
/// `PRAGMA foreign_key_check` after planning). `foreign_keys` cannot change inside
/// a transaction, hence before `BEGIN`. CHECK constraints are skipped the same way:
/// `items.status IN (...)` builds a temporary B-tree of the five words for every
/// row inserted (a quarter of the write's time), and the planner writes only
/// [`ItemStatus::as_str`] words and default run and job states. Temporary files
/// (the sort of a deferred index build) stay files: in memory they would add the
/// whole sort to the process's peak RSS.
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
         PRAGMA cache_size = -{PLAN_CACHE_KIB};"
    ))?;
    conn.set_prepared_statement_cache_capacity(8);
    Ok(conn)
}

/// Writes `pid N on HOST, writing a plan` into the lock just taken: what another
/// process's open, waiting on it, reports (`StoreError::MigrationLocked`).
#[cfg(unix)]
fn record_planner(mut file: &std::fs::File) {
    use std::io::{Seek, Write};
    let text = format!(
        "pid {} on {}, writing a plan\n",
        std::process::id(),
        super::queue::hostname()
    );
    // Best effort: a lock without its holder's name still locks.
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
        .and_then(|_| file.write_all(text.as_bytes()));
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Items per `INSERT` statement of [`ItemSink`]: one statement execution (cursors
/// opened, the program run, the statement reset) per batch rather than per item.
const ITEMS_PER_INSERT: usize = 64;

/// Values bound per item: every column the planner writes but `id` (assigned by
/// SQLite as the next rowid, checked) and `run_id` (a literal in the statement).
const ITEM_VALUES: usize = 12;

/// Values bound per plain item (see [`item_insert`]): position, region, instance,
/// key and job.
const PLAIN_ITEM_VALUES: usize = 5;

/// Where [`PlanWriter::add_items`] puts items.
///
/// Items are buffered ([`NewItem`]s borrow the caller's buffers, reused from one item
/// to the next) and written [`ITEMS_PER_INSERT`] at a time through one multi-row
/// `INSERT`; the last partial batch row by row.
pub struct ItemSink<'w> {
    conn: &'w rusqlite::Connection,
    batch: StaticStatement<'w>,
    /// A batch of plain items only ([`BufferedItem::is_plain`]).
    plain_batch: StaticStatement<'w>,
    single: StaticStatement<'w>,
    batch_rows: usize,
    /// The text of the buffered items, back to back; `BufferedItem`s hold ranges.
    text: String,
    buffered: Vec<BufferedItem>,
    run_id: i64,
    next_id: &'w mut i64,
}

/// An item waiting in [`ItemSink`]'s buffer: its text columns as ranges of `text`.
#[derive(Debug, Clone)]
struct BufferedItem {
    position: (usize, usize),
    region: Option<(usize, usize)>,
    account: Option<(usize, usize)>,
    instance_id: Option<(usize, usize)>,
    key_id: Option<(usize, usize)>,
    reason: Option<(usize, usize)>,
    new_key_id: Option<(usize, usize)>,
    status: &'static str,
    duplicate_of: Option<i64>,
    job_id: Option<i64>,
    bind: bool,
    held: bool,
}

impl BufferedItem {
    /// A pending unbind pair with its job, not held, in no rotation, of the run's own
    /// account: what [`item_insert`]'s plain statement writes with literals.
    fn is_plain(&self) -> bool {
        self.status == ItemStatus::Pending.as_str()
            && self.duplicate_of.is_none()
            && self.reason.is_none()
            && self.job_id.is_some()
            && !self.bind
            && self.new_key_id.is_none()
            && !self.held
            && self.account.is_none()
    }
}

impl fmt::Debug for ItemSink<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemSink")
            .field("run_id", &self.run_id)
            .field("next_id", &self.next_id)
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

/// `INSERT INTO items (...) VALUES (...), ...` of `rows` items of run `run_id`.
///
/// `OR FAIL`: a statement that may abort part way (the default, `ABORT`) opens a
/// statement journal and writes the pages it changes there too: 181,000 small writes
/// for a million items, half the plan's system time, and 3% of its instructions.
/// Nothing here needs a statement undone on its own: any error fails the plan, whose
/// transaction is rolled back whole.
///
/// `plain`: items as most are, a pending unbind pair with its job, in no rotation,
/// of the run's own account (see [`BufferedItem::is_plain`]): the columns that are
/// the same for all of them are literals, and only [`PLAIN_ITEM_VALUES`] are bound.
fn item_insert(run_id: i64, rows: usize, plain: bool) -> String {
    let mut sql = String::from(
        "INSERT OR FAIL INTO items (run_id, position, region, instance_id, key_id, status, duplicate_of, \
         reason, job_id, bind, new_key_id, held, account) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        // The run id is an integer this writer assigned, not input; the status one of
        // ItemStatus's words.
        if plain {
            let pending = ItemStatus::Pending.as_str();
            sql.push_str(&format!(
                "({run_id}, ?, ?, ?, ?, '{pending}', NULL, NULL, ?, 0, NULL, 0, NULL)"
            ));
        } else {
            sql.push_str(&format!("({run_id}, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
        }
    }
    sql
}

impl ItemSink<'_> {
    /// Adds an item; returns its id. Ids are consecutive in call order, which is input order.
    pub fn add(&mut self, item: NewItem<'_>) -> Result<i64, StoreError> {
        let id = *self.next_id + self.buffered.len() as i64;
        let text = &mut self.text;
        let mut keep = |value: &str| {
            let start = text.len();
            text.push_str(value);
            (start, text.len())
        };
        let buffered = BufferedItem {
            position: keep(item.position),
            region: item.region.map(&mut keep),
            account: item.account.map(&mut keep),
            instance_id: item.instance_id.map(&mut keep),
            key_id: item.key_id.map(&mut keep),
            reason: item.reason.map(&mut keep),
            new_key_id: item.new_key_id.map(&mut keep),
            status: item.status.as_str(),
            duplicate_of: item.duplicate_of,
            job_id: item.job_id,
            bind: item.action == crate::cvm::Action::AssociateInstancesKeyPairs,
            held: item.held,
        };
        self.buffered.push(buffered);
        if self.buffered.len() == self.batch_rows {
            self.flush()?;
        }
        Ok(id)
    }

    /// Writes the buffered items: a full batch through the multi-row statement, a
    /// partial one row by row. SQLite gives each the next rowid (the largest plus one:
    /// the write lock is held, and `next_id` started there); checked, so an id handed
    /// out by [`ItemSink::add`] is always the row's.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let text = self.text.as_str();
        let slice = |range: (usize, usize)| &text[range.0..range.1];
        let text_of =
            |range: Option<(usize, usize)>| range.map_or(Value::Null, |r| Value::Text(slice(r)));
        let int_of = |n: Option<i64>| n.map_or(Value::Null, Value::Int);
        let values = |item: &BufferedItem| -> [Value<'_>; ITEM_VALUES] {
            [
                Value::Text(slice(item.position)),
                text_of(item.region),
                text_of(item.instance_id),
                text_of(item.key_id),
                Value::Text(item.status),
                int_of(item.duplicate_of),
                text_of(item.reason),
                int_of(item.job_id),
                Value::Int(i64::from(item.bind)),
                text_of(item.new_key_id),
                Value::Int(i64::from(item.held)),
                text_of(item.account),
            ]
        };
        let plain_values = |item: &BufferedItem| -> [Value<'_>; PLAIN_ITEM_VALUES] {
            [
                Value::Text(slice(item.position)),
                text_of(item.region),
                text_of(item.instance_id),
                text_of(item.key_id),
                int_of(item.job_id),
            ]
        };
        if self.buffered.len() == self.batch_rows {
            if self.buffered.iter().all(BufferedItem::is_plain) {
                self.plain_batch
                    .execute(self.buffered.iter().flat_map(plain_values))?;
            } else {
                self.batch.execute(self.buffered.iter().flat_map(values))?;
            }
        } else {
            for item in &self.buffered {
                self.single.execute(values(item).into_iter())?;
            }
        }
        let last = *self.next_id + self.buffered.len() as i64 - 1;
        let written = self.conn.last_insert_rowid();
        if written != last {
            return Err(StoreError::Corrupt(format!(
                "item ids out of step: SQLite gave {written}, the plan expected {last}"
            )));
        }
        *self.next_id = last + 1;
        self.buffered.clear();
        self.text.clear();
        Ok(())
    }
}

/// A value bound to a [`StaticStatement`].
#[derive(Debug, Clone, Copy)]
enum Value<'v> {
    Null,
    Int(i64),
    Text(&'v str),
}

/// A prepared statement whose text values are bound in place (`SQLITE_STATIC`), not
/// copied: rusqlite binds every text as `SQLITE_TRANSIENT`, a copy into memory SQLite
/// allocates and frees again, which cost about a tenth of a plan's instructions
/// (docs/BENCHMARKS.md). Safe to use: [`StaticStatement::execute`] binds, steps and
/// unbinds within one call, so no bound text outlives the borrow it came from.
struct StaticStatement<'c> {
    raw: std::ptr::NonNull<rusqlite::ffi::sqlite3_stmt>,
    /// The connection the statement was prepared on; it outlives the statement.
    conn: &'c rusqlite::Connection,
}

impl<'c> StaticStatement<'c> {
    fn prepare(conn: &'c rusqlite::Connection, sql: &str) -> rusqlite::Result<Self> {
        use rusqlite::ffi;
        let mut raw = std::ptr::null_mut();
        let len = std::ffi::c_int::try_from(sql.len()).map_err(|_| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
        })?;
        // SAFETY: the handle is `conn`'s, open for at least 'c; `sql` is valid for
        // `len` bytes (SQLite reads no further: the length is given); `raw` receives
        // the statement, finalized in `Drop` before 'c ends.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                conn.handle(),
                sql.as_ptr().cast(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT as std::ffi::c_uint,
                &mut raw,
                std::ptr::null_mut(),
            )
        };
        let statement = std::ptr::NonNull::new(raw);
        match (rc, statement) {
            (ffi::SQLITE_OK, Some(raw)) => Ok(StaticStatement { raw, conn }),
            _ => Err(last_error(conn, rc)),
        }
    }

    /// Binds `values` to the parameters 1, 2, ... in order, runs the statement to its
    /// end (an `INSERT`: no rows), and resets and unbinds it.
    fn execute<'v>(&mut self, values: impl Iterator<Item = Value<'v>>) -> rusqlite::Result<()> {
        use rusqlite::ffi;
        let stmt = self.raw.as_ptr();
        let mut rc = ffi::SQLITE_OK;
        for (n, value) in values.enumerate() {
            let index = std::ffi::c_int::try_from(n + 1).unwrap_or(std::ffi::c_int::MAX);
            // A text's length must be given exactly: a negative one would make SQLite
            // read up to a NUL byte that a `&str` does not have.
            let text_len = match value {
                Value::Text(v) => match std::ffi::c_int::try_from(v.len()) {
                    Ok(len) => len,
                    Err(_) => {
                        rc = ffi::SQLITE_TOOBIG;
                        break;
                    }
                },
                _ => 0,
            };
            // SAFETY: `stmt` is a live statement of this connection; a text is bound
            // with its exact length and SQLITE_STATIC, valid for as long as `values`'
            // borrow ('v, which outlives this call and so the `sqlite3_clear_bindings`
            // below, the last use of the pointer).
            rc = unsafe {
                match value {
                    Value::Null => ffi::sqlite3_bind_null(stmt, index),
                    Value::Int(v) => ffi::sqlite3_bind_int64(stmt, index, v),
                    Value::Text(v) => ffi::sqlite3_bind_text(
                        stmt,
                        index,
                        v.as_ptr().cast(),
                        text_len,
                        ffi::SQLITE_STATIC(),
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                break;
            }
        }
        if rc == ffi::SQLITE_OK {
            // SAFETY: as above; every parameter is bound.
            rc = unsafe { ffi::sqlite3_step(stmt) };
            if rc == ffi::SQLITE_DONE {
                rc = ffi::SQLITE_OK;
            }
        }
        let error = (rc != ffi::SQLITE_OK).then(|| last_error(self.conn, rc));
        // SAFETY: `stmt` is live; after these no text pointer of `values` is bound.
        unsafe {
            ffi::sqlite3_reset(stmt);
            ffi::sqlite3_clear_bindings(stmt);
        }
        error.map_or(Ok(()), Err)
    }
}

impl Drop for StaticStatement<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and finalized once, here, while its
        // connection is still open (it is borrowed for 'c).
        unsafe {
            rusqlite::ffi::sqlite3_finalize(self.raw.as_ptr());
        }
    }
}

/// The connection's last error, as rusqlite reports one.
fn last_error(conn: &rusqlite::Connection, rc: std::ffi::c_int) -> rusqlite::Error {
    // SAFETY: the handle is `conn`'s and open; the message is copied at once.
    let message = unsafe {
        let text = rusqlite::ffi::sqlite3_errmsg(conn.handle());
        (!text.is_null()).then(|| {
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned()
        })
    };
    let code = if rc == rusqlite::ffi::SQLITE_OK {
        rusqlite::ffi::SQLITE_ERROR
    } else {
        rc
    };
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), message)
}

/// A plan being written. Dropping it without [`PlanWriter::commit`] closes its
/// connection, which rolls everything back.
pub struct PlanWriter {
    conn: rusqlite::Connection,
    /// Declared after `conn`, so dropped after it: the database is another's again
    /// only once this plan's connection (and its transaction) is gone.
    alone: Option<Alone>,
    /// `CREATE INDEX` statements of the indexes dropped for this plan, run at commit.
    deferred_indexes: Vec<String>,
    /// Items the run row counts, and the largest item id stored before this plan:
    /// what [`deferred_indexes`] decides by, at the first [`PlanWriter::add_items`].
    expected_items: i64,
    existing_items: i64,
    /// Set by [`PlanWriter::items_in_index_order`]: the indexes are kept as the items go.
    in_index_order: bool,
    /// Whether the first [`PlanWriter::add_items`] has decided on deferring.
    indexes_decided: bool,
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

const JOB_INSERT: &str = "INSERT INTO jobs (id, run_id, region, force_stop, instance_ids, key_ids, pair_count, created_at, kind, action, payload, account) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

impl PlanWriter {
    /// The new run's id.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Whether this plan writes through the WAL or a rollback journal.
    pub fn journal(&self) -> PlanJournal {
        if self.alone.is_some() {
            PlanJournal::Rollback
        } else {
            PlanJournal::Wal
        }
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
                job.account,
            ])?;
        self.next_job_id += 1;
        Ok(id)
    }

    /// Says that the items to come arrive in the order of the item indexes' entries
    /// (`items_job`: job ids never falling; `items_run`: run, status and bind flag
    /// alike), but for a few. Then a large plan keeps the indexes as it goes instead of
    /// building them again at commit: each entry lands after the last one, where
    /// SQLite's index cursor already is (no descent from the root while a statement's
    /// rows are inserted), which costs less than the sort of a rebuild. Call it before
    /// [`PlanWriter::add_items`].
    pub fn items_in_index_order(&mut self) {
        self.in_index_order = true;
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
        if !self.indexes_decided {
            self.indexes_decided = true;
            if !self.in_index_order {
                self.deferred_indexes =
                    deferred_indexes(&self.conn, self.expected_items, self.existing_items)?;
            }
        }
        let batch_rows = ITEMS_PER_INSERT;
        let batch =
            StaticStatement::prepare(&self.conn, &item_insert(self.run_id, batch_rows, false))
                .map_err(StoreError::from)?;
        let plain_batch =
            StaticStatement::prepare(&self.conn, &item_insert(self.run_id, batch_rows, true))
                .map_err(StoreError::from)?;
        let single = StaticStatement::prepare(&self.conn, &item_insert(self.run_id, 1, false))
            .map_err(StoreError::from)?;
        let mut sink = ItemSink {
            conn: &self.conn,
            batch,
            plain_batch,
            single,
            batch_rows,
            text: String::new(),
            buffered: Vec::with_capacity(batch_rows),
            run_id: self.run_id,
            next_id: &mut self.next_item_id,
        };
        fill(&mut sink)?;
        sink.flush()?;
        Ok(())
    }

    /// Commits: the plan becomes visible all at once, durable (`synchronous=FULL`).
    pub fn commit(self) -> Result<i64, StoreError> {
        if !self.deferred_indexes.is_empty() {
            // `CREATE INDEX` sorts in memory up to the page cache's size, then in
            // temporary files. The planner frees its in-memory plan before the
            // commit (`plan::write`), so a million items' sort fits in memory
            // without raising the peak RSS (152 MB either way), and the 25 MB of
            // temporary files are not written (docs/BENCHMARKS.md).
            self.conn
                .execute_batch(&format!("PRAGMA cache_size = -{INDEX_BUILD_CACHE_KIB}"))?;
        }
        for create in &self.deferred_indexes {
            self.conn.execute_batch(create)?;
        }
        self.conn.execute_batch("COMMIT")?;
        if self.alone.is_some() {
            restore_wal(&self.conn);
        }
        let PlanWriter {
            conn,
            alone,
            run_id,
            ..
        } = self;
        conn.close().map_err(|(_, err)| err)?;
        drop(alone);
        Ok(run_id)
    }
}

/// Leaves WAL mode for a rollback journal, if SQLite lets this connection: it refuses
/// (busy, at once) while any other connection has the database open. Outside any
/// transaction; whatever the WAL holds is checkpointed first.
fn leave_wal(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    match conn.query_row("PRAGMA journal_mode = DELETE", [], |row| {
        row.get::<_, String>(0)
    }) {
        Ok(mode) => Ok(mode.eq_ignore_ascii_case("delete")),
        Err(err) if is_busy(&err) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Puts the database back in WAL mode after a plan written through a rollback
/// journal. SQLite refuses the change at once, without its busy wait, while another
/// connection holds a lock (a process that opened the database before this plan took
/// it, now writing its own plan): asked again every 20 ms for up to [`BUSY_TIMEOUT`].
/// Best effort after that: the plan is committed either way, the database works in
/// rollback mode, and the next [`Store::open`] asks for WAL again.
fn restore_wal(conn: &rusqlite::Connection) {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let err = match conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
            row.get::<_, String>(0)
        }) {
            Ok(_) => return,
            Err(err) => err,
        };
        if !is_busy(&err) || std::time::Instant::now() >= deadline {
            tracing::warn!(%err, "the database stays in rollback-journal mode until its next open");
            return;
        }
        std::thread::sleep(WAL_RETRY);
    }
}

/// SQLite's refusal for a lock another connection holds (`SQLITE_BUSY`, `SQLITE_LOCKED`).
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Drops the [`DEFERRABLE_INDEXES`] inside the plan's transaction when building them
/// again over the whole table at commit costs less than inserting `expected_items`
/// entries one by one; returns their `CREATE INDEX` statements, as stored in the
/// schema (so whatever a migration made them, they come back the same).
///
/// Why: an item's index entry out of order is a descent from the root of each index
/// (in order, SQLite finds the cursor already in place: see
/// [`PlanWriter::items_in_index_order`], which skips this); `CREATE
/// INDEX` sorts the entries once and fills its pages left to right, full. Rebuilding
/// costs in proportion to every item in the table, so only a plan at least as large as
/// what the table already holds (`existing_items`, an upper bound: the largest id)
/// defers. The drop and the rebuild are in the plan's transaction: a plan that fails or
/// is killed part way leaves the indexes as they were, and other connections never see
/// the table without them (their reads are of the last commit).
fn deferred_indexes(
    conn: &rusqlite::Connection,
    expected_items: i64,
    existing_items: i64,
) -> Result<Vec<String>, StoreError> {
    if expected_items < DEFER_INDEXES_FROM_ITEMS || existing_items > expected_items {
        return Ok(Vec::new());
    }
    let mut creates = Vec::new();
    for name in DEFERRABLE_INDEXES {
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'items' AND name = ?",
                [name],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(sql) = sql {
            // The name comes from DEFERRABLE_INDEXES, not from input.
            conn.execute_batch(&format!("DROP INDEX {name}"))?;
            creates.push(sql);
        }
    }
    Ok(creates)
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

    /// Takes the database for one plan alone, if nothing else in this process or
    /// another keyfleet process can use it meanwhile (see [`Alone`]): takes
    /// `<db>-migrate.lock` without waiting, then closes this process's idle pool
    /// connections. `None` (the plan goes through the WAL) when another process holds
    /// the lock (it is opening the database, or planning alone itself) or a pool
    /// connection stays in use. The pool opens new connections when next used.
    ///
    /// The lock comes first: a process that does not get it keeps its connections
    /// open, and so keeps the file in WAL mode (SQLite lets no connection leave WAL
    /// while another has it open) for as long as the other process's plan lasts.
    pub async fn claim_for_plan(&self) -> Result<Option<Alone>, StoreError> {
        #[cfg(unix)]
        {
            let lock_path =
                std::path::PathBuf::from(format!("{}-migrate.lock", self.file().display()));
            let lock = super::guard::open_lock_file(&lock_path, self.path())?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(err)) => {
                    return Err(StoreError::Prepare {
                        path: self.path().to_path_buf(),
                        detail: format!("{}: {err}", lock_path.display()),
                    });
                }
            }
            // sqlx returns a connection to the pool from a task of its own, so one
            // just used may not be idle yet: wait for it, briefly.
            let deadline = std::time::Instant::now() + PARK_WAIT;
            loop {
                while let Some(idle) = self.pool.try_acquire() {
                    // A connection that fails to close cleanly is closed all the same.
                    let _ = idle.close().await;
                }
                if self.pool.size() == 0 {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    // The lock is let go as `lock` drops.
                    return Ok(None);
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            record_planner(&lock);
            Ok(Some(Alone { _lock: lock }))
        }
        #[cfg(not(unix))]
        Ok(None)
    }

    /// [`Store::begin_plan_alone`] without the database to itself: through the WAL.
    pub fn begin_plan(&self, run: &NewRun<'_>) -> Result<Begin, StoreError> {
        self.begin_plan_alone(run, None)
    }

    /// Opens the plan's own connection and transaction (`BEGIN IMMEDIATE`) and inserts
    /// the run row, unless a run with the same input and options exists.
    ///
    /// With `alone` (from [`Store::claim_for_plan`]) the plan leaves WAL mode for a
    /// rollback journal first, when SQLite lets it ([`PlanWriter::journal`] says);
    /// WAL is put back at commit, or by the next open after a failure or a kill.
    ///
    /// Blocking (SQLite calls on this thread): call it from `spawn_blocking`.
    pub fn begin_plan_alone(
        &self,
        run: &NewRun<'_>,
        alone: Option<Alone>,
    ) -> Result<Begin, StoreError> {
        let conn = open_plan_connection(self)?;
        let mut alone = alone;
        if alone.is_some() {
            // A run already planned is found without changing anything.
            let existing: Option<i64> = conn
                .query_row(
                    "SELECT id FROM runs WHERE input_sha256 = ? AND options = ?",
                    (run.input_sha256, run.options),
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(id) = existing {
                return Ok(Begin::Existing(id));
            }
            if !leave_wal(&conn)? {
                alone = None;
            }
        }
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
            if alone.is_some() {
                restore_wal(&conn);
            }
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
        let expected_items = as_i64(run.pairs)
            .saturating_add(as_i64(run.duplicates))
            .saturating_add(as_i64(run.rejected));
        Ok(Begin::New(PlanWriter {
            conn,
            alone,
            deferred_indexes: Vec::new(),
            expected_items,
            existing_items: next_item_id - 1,
            in_index_order: false,
            indexes_decided: false,
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

    /// WAL is put back after a plan alone even when another connection writes at that
    /// moment (SQLite refuses the change at once then): asked again until it is free.
    #[test]
    fn wal_comes_back_once_another_writer_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let plan = rusqlite::Connection::open(&path).unwrap();
        plan.busy_timeout(BUSY_TIMEOUT).unwrap();
        plan.execute_batch("CREATE TABLE t (x)").unwrap();
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let committer = std::thread::spawn(move || {
            let _ = wait.recv_timeout(std::time::Duration::from_millis(300));
            writer.execute_batch("COMMIT").unwrap();
        });
        restore_wal(&plan);
        let _ = done.send(());
        committer.join().unwrap();
        let mode: String = plan
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let rows: i64 = plan
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1);
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
            account: None,
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
                account: None,
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
                account: None,
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

    async fn item_indexes(store: &Store) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'items'
             AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap()
    }

    /// Writes `items` pending items of one job for run `sha`; commits or abandons.
    fn write_items(store: &Store, sha: &str, items: u64, commit: bool) -> Vec<i64> {
        let instance_ids = vec!["ins-00000001".to_string()];
        let key_ids = vec!["skey-00000001".to_string()];
        let Begin::New(mut writer) = store
            .begin_plan(&NewRun {
                pairs: items,
                ..run(sha)
            })
            .unwrap()
        else {
            panic!("a new input")
        };
        let job = writer
            .add_job(NewJob {
                kind: crate::states::JobKind::Unbind,
                region: "ap-guangzhou",
                account: None,
                force_stop: false,
                instance_ids: &instance_ids,
                key_ids: &key_ids,
                payload: None,
            })
            .unwrap();
        let mut ids = Vec::new();
        writer
            .add_items(|sink| -> Result<(), StoreError> {
                for n in 0..items {
                    let position = format!("line {}", n + 2);
                    let instance = format!("ins-{n:08x}");
                    ids.push(sink.add(NewItem {
                        position: &position,
                        action: crate::cvm::Action::DisassociateInstancesKeyPairs,
                        region: Some("ap-guangzhou"),
                        account: None,
                        instance_id: Some(&instance),
                        key_id: Some("skey-00000001"),
                        status: ItemStatus::Pending,
                        duplicate_of: None,
                        reason: None,
                        job_id: Some(job),
                        new_key_id: None,
                        held: false,
                    })?);
                }
                Ok(())
            })
            .unwrap();
        if commit {
            writer.commit().unwrap();
        }
        ids
    }

    #[tokio::test]
    async fn a_large_plan_rebuilds_the_indexes_it_deferred_and_an_abandoned_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).await.unwrap();
        let indexes = item_indexes(&store).await;
        assert!(indexes.iter().any(|(name, _)| name == "items_run"));
        let large = DEFER_INDEXES_FROM_ITEMS as u64 + 7;

        // Abandoned after its items (the indexes dropped inside its transaction).
        write_items(&store, "aa", large, false);
        assert_eq!(count(&store, "items").await, 0);
        assert_eq!(
            item_indexes(&store).await,
            indexes,
            "rolled back with the rest"
        );

        // Committed: the same indexes, defined as before, holding every item; the ids
        // handed out are the rows' (not a multiple of the batch: a partial last batch).
        let ids = write_items(&store, "bb", large, true);
        assert_eq!(item_indexes(&store).await, indexes);
        assert_eq!(ids.len() as u64, large);
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
        let (rows, first, last): (i64, i64, i64) =
            sqlx::query_as("SELECT COUNT(*), MIN(id), MAX(id) FROM items")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(
            (rows, first, last),
            (large as i64, ids[0], ids[ids.len() - 1])
        );
        let ok: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(ok, "ok", "every index entry matches its row");
        let by_index: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM items INDEXED BY items_run
             WHERE run_id = (SELECT id FROM runs WHERE input_sha256 = 'bb') AND status = 'pending'",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(by_index, large as i64);

        // Items said to come in index order: the indexes are kept as they go, whole.
        let Begin::New(mut writer) = store
            .begin_plan(&NewRun {
                pairs: large,
                ..run("cc")
            })
            .unwrap()
        else {
            panic!("a new input")
        };
        writer.items_in_index_order();
        writer
            .add_items(|sink| -> Result<(), StoreError> {
                for n in 0..large {
                    let position = format!("line {}", n + 2);
                    sink.add(NewItem {
                        position: &position,
                        action: crate::cvm::Action::DisassociateInstancesKeyPairs,
                        region: Some("ap-guangzhou"),
                        account: None,
                        instance_id: Some("ins-00000001"),
                        key_id: Some("skey-00000001"),
                        status: ItemStatus::Pending,
                        duplicate_of: None,
                        reason: None,
                        job_id: None,
                        new_key_id: None,
                        held: false,
                    })?;
                }
                Ok(())
            })
            .unwrap();
        assert!(writer.deferred_indexes.is_empty(), "nothing dropped");
        writer.commit().unwrap();
        assert_eq!(item_indexes(&store).await, indexes);
        let ok: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(ok, "ok");

        // A plan smaller than what is stored keeps the indexes as it goes.
        let conn = open_plan_connection(&store).unwrap();
        assert!(
            deferred_indexes(&conn, large as i64 - 1, large as i64)
                .unwrap()
                .is_empty()
        );
        assert!(
            deferred_indexes(&conn, DEFER_INDEXES_FROM_ITEMS - 1, 0)
                .unwrap()
                .is_empty()
        );
        drop(conn);
        store.close().await;
    }

    /// The header's file format bytes (18 and 19): 2 in WAL mode, 1 with a rollback
    /// journal. Read from the file, as every other process would find it.
    fn file_format(store: &Store) -> [u8; 2] {
        let bytes = std::fs::read(store.file()).unwrap();
        [bytes[18], bytes[19]]
    }

    fn companion(store: &Store, suffix: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("{}{suffix}", store.file().display()))
    }

    /// A new run with the database to itself: written through a rollback journal,
    /// which exists only while the plan is written; meanwhile another process's open
    /// waits on the migration lock, which names the plan; at commit WAL is back.
    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plan_alone_writes_each_page_once_and_puts_wal_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = Store::open(&path).await.unwrap();
        write_items(&store, "aa", 10, true);
        assert_eq!(file_format(&store), [2, 2], "WAL mode");

        let alone = store
            .claim_for_plan()
            .await
            .unwrap()
            .expect("nothing else has the database open");
        assert_eq!(store.pool.size(), 0, "the pool is parked");
        let Begin::New(mut writer) = store
            .begin_plan_alone(
                &NewRun {
                    pairs: 3,
                    ..run("bb")
                },
                Some(alone),
            )
            .unwrap()
        else {
            panic!("a new input")
        };
        assert_eq!(writer.journal(), PlanJournal::Rollback);
        assert_eq!(file_format(&store), [1, 1], "rollback mode while it writes");
        assert!(companion(&store, "-journal").exists());
        assert!(!companion(&store, "-wal").exists());
        let instance_ids = vec!["ins-00000001".to_string()];
        let key_ids = vec!["skey-00000001".to_string()];
        let job = writer
            .add_job(NewJob {
                kind: crate::states::JobKind::Unbind,
                region: "ap-guangzhou",
                account: None,
                force_stop: false,
                instance_ids: &instance_ids,
                key_ids: &key_ids,
                payload: None,
            })
            .unwrap();
        writer
            .add_items(|sink| -> Result<(), StoreError> {
                for n in 0..3 {
                    let position = format!("line {}", n + 2);
                    sink.add(NewItem {
                        position: &position,
                        action: crate::cvm::Action::DisassociateInstancesKeyPairs,
                        region: Some("ap-guangzhou"),
                        account: None,
                        instance_id: Some("ins-00000001"),
                        key_id: Some("skey-00000001"),
                        status: ItemStatus::Pending,
                        duplicate_of: None,
                        reason: None,
                        job_id: Some(job),
                        new_key_id: None,
                        held: false,
                    })?;
                }
                Ok(())
            })
            .unwrap();

        // Another process opening the database now waits for the lock, and is told who
        // holds it (here with a short wait, as the real one would after 120 s).
        let err = super::super::lock_for_migration(
            store.file(),
            &path,
            std::time::Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("writing a plan"), "{err}");

        writer.commit().unwrap();
        assert_eq!(file_format(&store), [2, 2], "WAL again");
        assert!(!companion(&store, "-journal").exists());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(count(&store, "items").await, 13);
        // The lock is free again: another process opens at once.
        let other = Store::open(&path).await.unwrap();
        assert_eq!(count(&other, "runs").await, 2);
        other.close().await;
        store.close().await;
    }

    /// Another connection open (another process's, here another Store's pool): SQLite
    /// refuses to leave WAL, and the plan goes through the WAL, whole.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_plan_goes_through_the_wal_while_another_connection_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = Store::open(&path).await.unwrap();
        let other = Store::open(&path).await.unwrap();
        let alone = store.claim_for_plan().await.unwrap();
        assert!(alone.is_some(), "this process's own pool is parked");
        let Begin::New(writer) = store.begin_plan_alone(&run("aa"), alone).unwrap() else {
            panic!("a new input")
        };
        assert_eq!(writer.journal(), PlanJournal::Wal);
        assert_eq!(file_format(&store), [2, 2]);
        writer.commit().unwrap();
        assert_eq!(
            count(&other, "runs").await,
            1,
            "the other connection reads it"
        );

        // A connection of this process's own pool in use: no claim at all.
        let held = store.pool.acquire().await.unwrap();
        assert!(store.claim_for_plan().await.unwrap().is_none());
        drop(held);
        other.close().await;
        store.close().await;
    }

    /// A plan alone abandoned part way (an error; a kill is tests/it/plan.rs): nothing
    /// of it remains, the lock is free, and the next open has WAL back.
    #[cfg(unix)]
    #[tokio::test]
    async fn an_abandoned_plan_alone_leaves_nothing_and_the_next_open_has_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = Store::open(&path).await.unwrap();
        write_items(&store, "aa", 5, true);
        let alone = store.claim_for_plan().await.unwrap().expect("alone");
        let Begin::New(writer) = store
            .begin_plan_alone(
                &NewRun {
                    pairs: 9,
                    ..run("bb")
                },
                Some(alone),
            )
            .unwrap()
        else {
            panic!("a new input")
        };
        assert_eq!(writer.journal(), PlanJournal::Rollback);
        drop(writer);
        // Found again without a write: the same input is not planned twice.
        let alone = store.claim_for_plan().await.unwrap().expect("alone");
        assert!(matches!(
            store.begin_plan_alone(&run("aa"), Some(alone)).unwrap(),
            Begin::Existing(1)
        ));
        store.close().await;
        let store = Store::open(&path).await.unwrap();
        assert_eq!(file_format(&store), [2, 2]);
        assert_eq!(count(&store, "runs").await, 1);
        assert_eq!(count(&store, "items").await, 5);
        let ok: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(ok, "ok");
        store.close().await;
    }
}
