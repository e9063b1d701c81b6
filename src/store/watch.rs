//! What `status --watch` needs beyond `status`: a read-only opening of the database
//! and the latest errors of a run.

use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use super::{BUSY_TIMEOUT, Store, StoreError};

/// One error reply (or transport failure) of a run, newest first in [`Store::recent_errors`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct RecentError {
    /// When the attempt ended (Unix ms).
    pub at: i64,
    pub action: String,
    pub region: String,
    pub code: String,
    pub message: Option<String>,
    pub job_id: i64,
}

impl Store {
    /// Opens an existing database for reading only (`status --watch`): nothing is
    /// created, migrated or written, so a watcher never disturbs the run it watches
    /// (WAL lets it read while the run commits). A database whose schema is older than
    /// this keyfleet's is refused: any other command upgrades it.
    pub async fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let prepare_err = |detail: String| StoreError::Prepare {
            path: path.to_path_buf(),
            detail,
        };
        let filename = std::path::absolute(path).map_err(|err| prepare_err(err.to_string()))?;
        if !filename.is_file() {
            return Err(prepare_err("no such database file".into()));
        }
        let options = SqliteConnectOptions::new()
            .filename(&filename)
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            // Connections kept for the watch's life: while one is open, another
            // process's plan cannot take the database for itself (`store::plan`).
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let latest = sqlx::migrate!("./migrations")
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&pool)
                .await
                .map_err(|source| StoreError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
        if applied.unwrap_or(0) < latest {
            pool.close().await;
            return Err(StoreError::Corrupt(format!(
                "database {} has an older schema ({} < {latest}); any other keyfleet command \
                 (`keyfleet status`, say) upgrades it",
                path.display(),
                applied.unwrap_or(0)
            )));
        }
        Ok(Store {
            pool,
            path: path.to_path_buf(),
            file: filename,
        })
    }

    /// The run's `limit` latest attempts that ended with an error code, newest first.
    pub async fn recent_errors(
        &self,
        run_id: i64,
        limit: i64,
    ) -> Result<Vec<RecentError>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT COALESCE(a.finished_at, a.started_at) AS at, j.action, j.region,
                    a.error_code AS code, a.error_message AS message, j.id AS job_id
             FROM attempts a JOIN jobs j ON j.id = a.job_id
             WHERE j.run_id = ? AND a.error_code IS NOT NULL
             ORDER BY a.id DESC LIMIT ?",
        )
        .bind(run_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
