//! The account a run was planned for (`runs.options.account`, many accounts: issue 23).

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
}
