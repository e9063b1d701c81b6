//! The durable queue: SQLite through sqlx, schema in `migrations/`.
//!
//! `mod.rs` opens the database and owns the connection settings. Everything else
//! is a method on [`Store`], one file per concern: the planner's writes (`plan`),
//! the report queries (`report`), and `queue`, the executor's claims, attempts,
//! splits and the run lease. No transaction is ever
//! held across an HTTP request: every function here is a short local write.

mod accounts;
pub use accounts::AccountCounts;
mod claims;
mod follow;
#[cfg(unix)]
mod guard;
pub mod incident;
mod jobs;
mod outcome;
pub(crate) mod pacer;
pub mod plan;
pub mod power;
pub mod rates;
pub mod report;
mod requeue;
mod states;
pub mod templates;
pub mod verify;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod queue;

pub use requeue::{Requeue, Requeued};
pub use states::{ItemStatus, JobKind, JobState, RunState, Verified};

/// A heartbeat older than this means the owning process is gone or hung.
pub const LEASE_STALE_AFTER: Duration = Duration::from_secs(30);

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// How long an open waits for another process's `<db>-migrate.lock` (held while
/// that process opens the database and applies migrations) before it gives up and
/// names the holder.
pub const MIGRATE_LOCK_WAIT: Duration = Duration::from_secs(120);
/// How long a writer waits for another connection's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a change to WAL mode, which SQLite refuses at once while another
/// connection holds a lock, is asked again (up to [`BUSY_TIMEOUT`]): `use_wal` at an
/// open, `store::plan`'s `restore_wal` after a plan alone.
const WAL_RETRY: Duration = Duration::from_millis(20);
/// SQLite page size for new databases, in bytes.
pub const DB_PAGE_BYTES: u32 = 16 * 1024;
/// The database used when neither `--db` nor `KEYFLEET_DB` names one.
pub const DEFAULT_DB: &str = "keyfleet.db";

/// Store failures. A per-pair outcome is data, not an error: these are setup or I/O failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}", path = path.display())]
    Open { path: PathBuf, source: sqlx::Error },
    /// The database, its `-wal`/`-shm` or a directory above it is not safely the
    /// user's own (another owner, writable by others, a symlink, read-only): nothing
    /// was opened. `reason` says why, `fix` what to do.
    #[error("refusing database {path}: {reason}; {fix}", path = path.display())]
    Unsafe {
        path: PathBuf,
        reason: String,
        fix: String,
    },
    /// The database's files could not be created or inspected before opening.
    #[error("cannot open database {path}: {detail}", path = path.display())]
    Prepare { path: PathBuf, detail: String },
    /// Another process held `<db>-migrate.lock` (it opens or migrates the database)
    /// for longer than keyfleet waits. `holder` is what it recorded (pid and host).
    #[error(
        "database {path} is being opened or migrated by another process ({holder}), which has held \
         {lock} for over {waited_secs} s; wait for it to finish, or stop it, and try again",
        path = path.display(),
        lock = lock.display()
    )]
    MigrationLocked {
        path: PathBuf,
        lock: PathBuf,
        holder: String,
        waited_secs: u64,
    },
    #[error("cannot migrate database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// From the planner's and the report's own connections (`store::plan`, `store::report`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("run {0} does not exist in this database")]
    NoSuchRun(i64),
    #[error("this database has no runs yet")]
    NoRuns,
    #[error("{0}")]
    Corrupt(String),
}

/// An open keyfleet database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    file: PathBuf,
}

/// Current time in Unix milliseconds, the unit of every time column.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    ///
    /// `path` is a file name, never a URL: `%`, `?` and `:memory:` are part of the name.
    /// Before SQLite sees it, the database, its `-wal`/`-shm` and the directories above
    /// are checked to be the user's own, and missing files are created mode 0600
    /// (see `store/guard.rs`; refusals are [`StoreError::Unsafe`]).
    ///
    /// WAL with `synchronous=FULL`: a committed plan or outcome survives a power loss,
    /// not only a `kill -9`. Foreign keys on; a busy timeout so that a second process
    /// waits briefly instead of failing at once.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        let filename = guard::prepare(path)?;
        #[cfg(not(unix))]
        let filename = std::path::absolute(path).map_err(|err| StoreError::Prepare {
            path: path.to_path_buf(),
            detail: err.to_string(),
        })?;
        let options = SqliteConnectOptions::new()
            .filename(&filename)
            .create_if_missing(true)
            // Not `journal_mode`: every connection the pool opens would ask for WAL as
            // it connects, and SQLite refuses that at once, without the busy wait,
            // while another connection writes through a rollback journal (see
            // `use_wal`). WAL is a property of the file, set once below.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Takes effect only when the file is created. 16 KiB pages make writing a
            // million-item plan about 12% faster than 4 KiB ones (docs/BENCHMARKS.md).
            .page_size(DB_PAGE_BYTES)
            .busy_timeout(BUSY_TIMEOUT);
        // Two processes opening a new database at once would both try to create the
        // schema, and the second would fail half way; one at a time, the second finds
        // the migrations applied. The lock lives in its own file: closing any other
        // descriptor of the database itself would drop SQLite's own POSIX locks on it.
        let _migrating = lock_for_migration(&filename, path, MIGRATE_LOCK_WAIT).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A ping before every acquire is a round trip to the connection's thread
            // that a local file never needs: a broken SQLite connection fails its
            // next statement just as clearly.
            .test_before_acquire(false)
            // Connections stay open for the Store's life (sqlx closes idle ones after
            // 10 min and old ones after 30 by default): while this process has the
            // database open, another process's large plan cannot take it for itself
            // (`store::plan`'s rollback journal), and this one never has to reconnect
            // into a database that such a plan holds.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        use_wal(&pool).await.map_err(open_err)?;
        let migrator = sqlx::migrate!("./migrations");
        record_marked_migrations(&pool, &migrator).await?;
        migrator
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store {
            pool,
            path: path.to_path_buf(),
            file: filename.clone(),
        })
    }

    /// The connection pool, for tests and benchmarks that inspect the database (or
    /// set up a state no writer makes, such as an old schema's). keyfleet's own code
    /// never uses it: the store's files use the field, everything else a method.
    #[doc(hidden)]
    pub fn pool_for_tests(&self) -> &SqlitePool {
        &self.pool
    }

    /// Where the database lives, as it was named (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database file's absolute path, for other connections to the same file:
    /// a name such as `:memory:` or `file:x` opened again by a path SQLite would read
    /// specially must be the file it names.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// A migration that runs outside the migrator's transaction (it must turn foreign
/// keys off) marks its version in `schema_marks` inside its own transaction. If a kill
/// came after that commit and before the migrator recorded it, the migration is done
/// but unrecorded: record it, rather than run it again on a schema it already changed.
async fn record_marked_migrations(
    pool: &SqlitePool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let has_table = |name: &'static str| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .map(|n| n > 0)
    };
    if !has_table("schema_marks").await? || !has_table("_sqlx_migrations").await? {
        return Ok(());
    }
    let unrecorded: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM schema_marks WHERE version NOT IN (SELECT version FROM _sqlx_migrations)",
    )
    .fetch_all(pool)
    .await?;
    for version in unrecorded {
        let Some(migration) = migrator.iter().find(|m| m.version == version) else {
            continue;
        };
        tracing::warn!(
            version,
            "a migration that completed before a crash is recorded now"
        );
        sqlx::query(
            "INSERT OR IGNORE INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?, ?, TRUE, ?, -1)",
        )
        .bind(version)
        .bind(migration.description.as_ref())
        .bind(migration.checksum.as_ref())
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Puts the database in WAL mode, which the file keeps, when it opens (under the
/// migration lock, before the migrations): a new database starts in rollback mode.
///
/// A plan that had the database to itself (`store::plan`'s `Alone`) writes through a
/// rollback journal and puts WAL back at commit, best effort: if another process's
/// connection holds a lock at that moment, the database stays in rollback mode while
/// that process goes on using it. Asking for WAL then, while it writes, is refused at
/// once ("database is locked"; SQLite does not wait for a change of journal mode as
/// it waits for a lock). So the question is asked again, every 20 ms, for up to
/// [`BUSY_TIMEOUT`]; after that the database is used as it is (a rollback journal
/// keeps the data as safe; processes sharing it wait on each other more) and the next
/// open asks again.
async fn use_wal(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let refused = match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
            .fetch_one(pool)
            .await
        {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(err)) if is_busy(err.as_ref()) => err,
            Err(err) => return Err(err),
        };
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                err = %refused,
                "the database stays in rollback-journal mode: another connection kept writing"
            );
            return Ok(());
        }
        tokio::time::sleep(WAL_RETRY).await;
    }
}

/// SQLite's `SQLITE_BUSY` or `SQLITE_LOCKED`, with any extended code.
fn is_busy(err: &dyn sqlx::error::DatabaseError) -> bool {
    let primary = err
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .map(|code| code & 0xff);
    matches!(primary, Some(5 | 6))
}

/// Holds an exclusive lock on `<database>-migrate.lock` until dropped: the file is
/// created mode 0600 if missing, else checked like the database (`guard.rs`), and
/// records its holder (pid and host). Another process's lock is waited for up to
/// `wait`, then [`StoreError::MigrationLocked`] names that holder.
async fn lock_for_migration(
    filename: &Path,
    db: &Path,
    wait: Duration,
) -> Result<std::fs::File, StoreError> {
    let lock_path = PathBuf::from(format!("{}-migrate.lock", filename.display()));
    let prepare_err = {
        let lock_path = lock_path.clone();
        move |err: std::io::Error| StoreError::Prepare {
            path: lock_path.clone(),
            detail: err.to_string(),
        }
    };
    #[cfg(unix)]
    let file = guard::open_lock_file(&lock_path, db)?;
    #[cfg(not(unix))]
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(&prepare_err)?;
    let db = db.to_path_buf();
    // Waiting is blocking: off the async workers.
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    record_holder(&file);
                    return Ok(file);
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(err)) => return Err(prepare_err(err)),
            }
            let holder = read_holder(&file);
            if started.elapsed() >= wait {
                return Err(StoreError::MigrationLocked {
                    path: db,
                    lock: lock_path,
                    holder,
                    waited_secs: wait.as_secs(),
                });
            }
            if !told && started.elapsed() >= LOCK_QUIET {
                tracing::warn!(lock = %lock_path.display(), %holder, "waiting for another process to finish opening the database");
                told = true;
            }
            std::thread::sleep(LOCK_POLL);
        }
    })
    .await
    .map_err(|err| StoreError::Prepare {
        path: PathBuf::new(),
        detail: err.to_string(),
    })?
}

/// How often a held migration lock is tried again, and how long before the wait is told.
const LOCK_POLL: Duration = Duration::from_millis(50);
const LOCK_QUIET: Duration = Duration::from_secs(1);

/// Writes `pid N on HOST` into the lock file just locked, for whoever waits on it.
fn record_holder(mut file: &std::fs::File) {
    use std::io::{Seek, Write};
    let text = format!("pid {} on {}\n", std::process::id(), queue::hostname());
    // Best effort: a lock without its holder's name still locks.
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
        .and_then(|_| file.write_all(text.as_bytes()));
}

/// What the lock's holder recorded, made safe to show (printable ASCII, 100 bytes).
fn read_holder(mut file: &std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    let read = file
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| file.take(100).read_to_end(&mut bytes));
    let text: String = String::from_utf8_lossy(&bytes)
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    match read {
        Ok(_) if !text.is_empty() => text,
        _ => "holder not recorded".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_processes_opening_a_new_database_at_once_all_succeed() {
        // Each open has its own pool, as separate processes would; the tests in
        // tests/it/database.rs do the same with processes.
        for round in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("k{round}.db"));
            let opens: Vec<_> = (0..6)
                .map(|_| {
                    let path = path.clone();
                    tokio::spawn(async move { Store::open(&path).await })
                })
                .collect();
            for open in opens {
                let store = open.await.unwrap().expect("every open succeeds");
                let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
                assert_eq!(runs, 0);
                store.close().await;
            }
        }
    }

    async fn journal_mode(store: &Store) -> String {
        sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    /// A plan alone that could not put WAL back (`store::plan`'s `restore_wal`: another
    /// process's connection held a lock at that moment) leaves the database in
    /// rollback-journal mode while the other processes go on using it. A connection
    /// opened then, while one of them writes, used to ask for WAL as it connected,
    /// which SQLite refuses at once (no busy wait): "database is locked", and the run
    /// stopped. It waits for the writer now, and WAL comes back.
    #[tokio::test]
    async fn opens_while_another_connection_writes_through_a_rollback_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        Store::open(&path).await.unwrap().close().await;
        let writer = rusqlite::Connection::open(&path).unwrap();
        let mode: String = writer
            .query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        writer
            .execute_batch(
                "BEGIN IMMEDIATE;
                 INSERT INTO runs (created_at, input_path, input_sha256, options)
                 VALUES (1, 'a.csv', 'sha', '{}');",
            )
            .unwrap();
        // The writer commits a little later, on its own thread: the open must wait for
        // it, however long that takes within the busy timeout.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let committer = std::thread::spawn(move || {
            let _ = wait.recv_timeout(Duration::from_millis(300));
            writer.execute_batch("COMMIT").unwrap();
        });
        let opened = Store::open(&path).await;
        let _ = go.send(());
        committer.join().unwrap();
        let store = opened.expect("the open waits for the writer");
        assert_eq!(journal_mode(&store).await, "wal");
        let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(runs, 1);
        store.close().await;
    }

    #[tokio::test]
    async fn opens_and_migrates_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = Store::open(&path).await.unwrap();
        assert_eq!(journal_mode(&store).await, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        #[cfg(unix)]
        {
            // While open, in WAL mode: the database, -wal and -shm are all owner-only.
            use std::os::unix::fs::PermissionsExt;
            for suffix in ["", "-wal", "-shm"] {
                let file = PathBuf::from(format!("{}{suffix}", path.display()));
                let mode = std::fs::metadata(&file).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", file.display());
            }
        }
        store.close().await;
        Store::open(&path).await.unwrap().close().await;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// The audit's L4: a held `<db>-migrate.lock` made every open wait forever, with
    /// no word. Now the wait ends and the error names the holder it recorded.
    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_migration_lock_ends_the_wait_naming_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let filename = guard::prepare(&path).unwrap();
        // Another open file description of the lock, as another process would hold it.
        let held = lock_for_migration(&filename, &path, Duration::from_secs(5))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = lock_for_migration(&filename, &path, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = err.to_string();
        let holder = format!("pid {} on ", std::process::id());
        assert!(
            matches!(&err, StoreError::MigrationLocked { holder: h, .. } if h.starts_with(&holder)),
            "{text}"
        );
        assert!(
            text.contains("k.db-migrate.lock") && text.contains(&holder),
            "{text}"
        );
        drop(held);
        lock_for_migration(&filename, &path, Duration::from_millis(300))
            .await
            .expect("free once the holder lets go");
    }

    /// The lock file is checked like the database: one others may write is refused
    /// (its owner is checked the same way, `guard::check_existing`).
    #[cfg(unix)]
    #[tokio::test]
    async fn a_migration_lock_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let lock = dir.path().join("k.db-migrate.lock");
        std::fs::write(&lock, b"").unwrap();
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = Store::open(&path).await.unwrap_err();
        assert!(matches!(err, StoreError::Unsafe { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("k.db-migrate.lock is writable by group or others"),
            "{err}"
        );
        // A fresh lock file is created owner-only.
        std::fs::remove_file(&lock).unwrap();
        Store::open(&path).await.unwrap().close().await;
        let mode = std::fs::metadata(&lock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A kill after migration 2's own commit and before the migrator's record: the
    /// next open records it instead of running it again (which would fail).
    #[tokio::test]
    async fn a_migration_done_but_not_recorded_is_recorded_on_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = Store::open(&path).await.unwrap();
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 2")
            .execute(&store.pool)
            .await
            .unwrap();
        store.close().await;
        let store = Store::open(&path).await.unwrap();
        let recorded: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE version = 2")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(recorded, 1);
        store.close().await;
        // And the migrator agrees it is the same migration (checksum), on every open after.
        Store::open(&path).await.unwrap().close().await;
    }
}
