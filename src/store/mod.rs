//! The durable queue: SQLite through sqlx, schema in `migrations/`.
//!
//! `mod.rs` opens the database and owns the connection settings; the planner's
//! writes and the report queries live beside it, and `queue` holds the
//! executor's claims, attempts, splits and the run lease. No transaction is ever
//! held across an HTTP request: every function here is a short local write.

pub mod plan;
pub mod report;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub mod queue;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// How long a writer waits for another connection's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite page size for new databases, in bytes.
pub const DB_PAGE_BYTES: u32 = 16 * 1024;
/// The database used when neither `--db` nor `KEYFLEET_DB` names one.
pub const DEFAULT_DB: &str = "keyfleet.db";

/// Store failures. A per-pair outcome is data, not an error: these are setup or I/O failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
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
    /// WAL with `synchronous=FULL`: a committed plan or outcome survives a power loss,
    /// not only a `kill -9`. Foreign keys on; a busy timeout so that a second process
    /// waits briefly instead of failing at once.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Takes effect only when the file is created. 16 KiB pages make writing a
            // million-item plan about 12% faster than 4 KiB ones (docs/BENCHMARKS.md).
            .page_size(DB_PAGE_BYTES)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        restrict_to_owner(path);
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// The connection pool, for the store's submodules and for inspection in tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// The database holds instance ids and request ids of a fleet: owner-only, like an SSH key.
fn restrict_to_owner(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                // Best effort: a file we cannot chmod (not ours) is still usable.
                let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_and_migrates_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = Store::open(&path).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        store.close().await;
        Store::open(&path).await.unwrap().close().await;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
