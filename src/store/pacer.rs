//! The shared pacer's table (`migrations/0004_pacer.sql`): one row per limiter key
//! holding the next free send slot and the adaptive rate's state, so that every
//! keyfleet process on one database draws its send slots from one sequence.
//!
//! The statements run on their own small pool with `synchronous=NORMAL`: a slot is
//! taken for every request, and an fsync per slot would slow the queue's own
//! `synchronous=FULL` commits. What a power failure can lose here is the last few
//! slots and throttles, which only matter for the next second; a database whose row
//! is missing is seeded from `attempts.sent_at` instead (see [`PacerDb::reserve`]).

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{Store, StoreError};

/// A slot further ahead than this is taken to come from a wall clock that went
/// backwards (or a broken row), and the sequence restarts at now. Legitimate
/// reservations are at most one spacing per waiting process ahead.
pub(crate) const MAX_SLOT_AHEAD_MS: f64 = 60_000.0;

/// Where a key's row is: the action, the access endpoint and the account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PacerKey {
    pub action: String,
    pub endpoint: String,
    /// [`account_digest`] of the SecretId.
    pub account: String,
}

/// The SecretId as stored: SHA-256, first 16 hex digits. It scopes the limit without
/// putting the access key's id in the database.
pub(crate) fn account_digest(secret_id: &str) -> String {
    let digest = Sha256::digest(secret_id.as_bytes());
    hex::encode(&digest[..8])
}

/// A slot handed out, and the shared adaptive state as the row holds it after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Slot {
    /// Unix ms (fractional) the request may leave at.
    pub at_ms: f64,
    /// The rate left at the last throttle (requests per second), if any.
    pub ceiling: Option<f64>,
    /// When that throttle lowered the rate (Unix ms).
    pub throttled_at: Option<i64>,
    /// How many slots of the key were handed out, this one included (any process).
    pub number: i64,
}

/// The adaptive state of a key as the row holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shared {
    pub ceiling: Option<f64>,
    pub throttled_at: Option<i64>,
}

/// The pacer's connection to a keyfleet database.
#[derive(Debug, Clone)]
pub(crate) struct PacerDb {
    pool: SqlitePool,
}

impl PacerDb {
    /// A second, small pool on the store's file (already migrated by
    /// [`Store::open`]), with `synchronous=NORMAL`.
    pub(crate) async fn open(store: &Store) -> Result<PacerDb, StoreError> {
        let options = (*store.pool.connect_options())
            .clone()
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(PacerDb { pool })
    }

    /// Takes the next send slot of `key` in one statement: the later of the row's
    /// `next_at` (minus `pull_ms`: a probe leaves early) and `now_ms`, and moves
    /// `next_at` to that plus `spacing_ms`; records `rate` as the rate in force. A
    /// missing row is created, its first slot after `seed_ms` (see [`PacerDb::last_sent`]).
    pub(crate) async fn reserve(
        &self,
        key: &PacerKey,
        now_ms: f64,
        spacing_ms: f64,
        pull_ms: f64,
        rate: f64,
        seed_ms: Option<f64>,
    ) -> Result<Slot, StoreError> {
        let first = seed_ms.map_or(now_ms, |seed| seed.max(now_ms));
        let row = sqlx::query(
            "INSERT INTO pacer (action, endpoint, account, slot_at, next_at, rate) \
             VALUES (?1, ?2, ?3, ?4, ?4 + ?5, ?6) \
             ON CONFLICT (action, endpoint, account) DO UPDATE SET \
                 slot_at = CASE WHEN next_at > ?7 + ?8 THEN ?7 ELSE MAX(next_at - ?9, ?7) END, \
                 next_at = CASE WHEN next_at > ?7 + ?8 THEN ?7 ELSE MAX(next_at - ?9, ?7) END + ?5, \
                 rate = ?6, slots = slots + 1 \
             RETURNING slot_at, ceiling, throttled_at, slots",
        )
        .bind(&key.action)
        .bind(&key.endpoint)
        .bind(&key.account)
        .bind(first)
        .bind(spacing_ms)
        .bind(rate)
        .bind(now_ms)
        .bind(MAX_SLOT_AHEAD_MS)
        .bind(pull_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(Slot {
            at_ms: row.try_get(0)?,
            ceiling: row.try_get(1)?,
            throttled_at: row.try_get(2)?,
            number: row.try_get(3)?,
        })
    }

    /// A request left later than its slot: the next slot is spaced from when it
    /// really left (`sent_ms + spacing_ms`), unless a later one is already due.
    pub(crate) async fn sent_late(
        &self,
        key: &PacerKey,
        sent_ms: f64,
        spacing_ms: f64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pacer SET next_at = MAX(next_at, ?4 + ?5) \
             WHERE action = ?1 AND endpoint = ?2 AND account = ?3",
        )
        .bind(&key.action)
        .bind(&key.endpoint)
        .bind(&key.account)
        .bind(sent_ms)
        .bind(spacing_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Does the row of `key` exist?
    pub(crate) async fn exists(&self, key: &PacerKey) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM pacer WHERE action = ?1 AND endpoint = ?2 AND account = ?3",
        )
        .bind(&key.action)
        .bind(&key.endpoint)
        .bind(&key.account)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// When the last attempt of `action` left, if one left within `window_ms` before
    /// `now_ms` (`attempts.sent_at`, written by every finished attempt): a process
    /// starting on a database without a pacer row (the first since the upgrade, or
    /// after the row was lost) spaces its first request from it.
    pub(crate) async fn last_sent(
        &self,
        action: &str,
        now_ms: i64,
        window_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(a.sent_at) FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE a.sent_at > ?1 AND j.action = ?2",
        )
        .bind(now_ms - window_ms)
        .bind(action)
        .fetch_one(&self.pool)
        .await?;
        Ok(last)
    }

    /// A throttle of `key` lowered its rate to start again from `ceiling`: recorded
    /// unless another throttle already did so less than `hold_ms` ago (processes
    /// throttled by one burst lower the shared rate once). Returns the row's state after.
    pub(crate) async fn throttled(
        &self,
        key: &PacerKey,
        ceiling: f64,
        now_ms: i64,
        hold_ms: i64,
    ) -> Result<Shared, StoreError> {
        sqlx::query(
            "UPDATE pacer SET ceiling = ?4, throttled_at = ?5 \
             WHERE action = ?1 AND endpoint = ?2 AND account = ?3 \
               AND (throttled_at IS NULL OR throttled_at <= ?5 - ?6)",
        )
        .bind(&key.action)
        .bind(&key.endpoint)
        .bind(&key.account)
        .bind(ceiling)
        .bind(now_ms)
        .bind(hold_ms)
        .execute(&self.pool)
        .await?;
        Ok(self.shared(key).await?.unwrap_or(Shared {
            ceiling: None,
            throttled_at: None,
        }))
    }

    /// An account-wide throttle: every key of `account` starts again from `fraction`
    /// of the rate it had in force (same hold as [`PacerDb::throttled`]).
    pub(crate) async fn throttled_account(
        &self,
        account: &str,
        fraction: f64,
        now_ms: i64,
        hold_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pacer SET ceiling = rate * ?2, throttled_at = ?3 \
             WHERE account = ?1 AND (throttled_at IS NULL OR throttled_at <= ?3 - ?4)",
        )
        .bind(account)
        .bind(fraction)
        .bind(now_ms)
        .bind(hold_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The shared state of `key`, if its row exists.
    pub(crate) async fn shared(&self, key: &PacerKey) -> Result<Option<Shared>, StoreError> {
        let row = sqlx::query(
            "SELECT ceiling, throttled_at FROM pacer \
             WHERE action = ?1 AND endpoint = ?2 AND account = ?3",
        )
        .bind(&key.action)
        .bind(&key.endpoint)
        .bind(&key.account)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Shared {
                ceiling: row.try_get(0)?,
                throttled_at: row.try_get(1)?,
            })
        })
        .transpose()
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PacerKey {
        PacerKey {
            action: "DisassociateInstancesKeyPairs".into(),
            endpoint: "https://cvm.tencentcloudapi.com".into(),
            account: account_digest("AKIDexample"),
        }
    }

    #[tokio::test]
    async fn slots_follow_each_other_and_a_throttle_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).await.unwrap();
        let db = PacerDb::open(&store).await.unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(sync, 1, "synchronous=NORMAL");
        let k = key();
        assert!(!db.exists(&k).await.unwrap());
        let t = 1_000_000.0;
        let first = db
            .reserve(&k, t, 100.0, 0.0, 10.0, Some(t + 40.0))
            .await
            .unwrap();
        assert_eq!(first.at_ms, t + 40.0, "seeded: after the recorded send");
        assert_eq!(first.ceiling, None);
        // Asked at the same moment: the next slot is a spacing later, not now.
        let second = db.reserve(&k, t, 100.0, 0.0, 10.0, None).await.unwrap();
        assert_eq!(second.at_ms, t + 140.0);
        assert_eq!((first.number, second.number), (1, 2));
        // Asked after the slot was free: now.
        let third = db
            .reserve(&k, t + 500.0, 50.0, 0.0, 10.0, None)
            .await
            .unwrap();
        assert_eq!(third.at_ms, t + 500.0);
        // A send 30 ms late pushes the next slot.
        db.sent_late(&k, t + 530.0, 50.0).await.unwrap();
        let fourth = db
            .reserve(&k, t + 500.0, 50.0, 0.0, 10.0, None)
            .await
            .unwrap();
        assert_eq!(fourth.at_ms, t + 580.0);
        // A slot a clock jump ahead is not waited for.
        sqlx::query("UPDATE pacer SET next_at = next_at + 3600000")
            .execute(&db.pool)
            .await
            .unwrap();
        let after_jump = db
            .reserve(&k, t + 600.0, 50.0, 0.0, 10.0, None)
            .await
            .unwrap();
        assert_eq!(after_jump.at_ms, t + 600.0);

        let now = 2_000_000;
        let shared = db.throttled(&k, 5.0, now, 1000).await.unwrap();
        assert_eq!(shared.ceiling, Some(5.0));
        assert_eq!(shared.throttled_at, Some(now));
        // A second process throttled by the same burst does not lower it again.
        let again = db.throttled(&k, 2.5, now + 300, 1000).await.unwrap();
        assert_eq!(again, shared);
        let later = db.throttled(&k, 4.0, now + 1500, 1000).await.unwrap();
        assert_eq!(later.ceiling, Some(4.0));
        db.throttled_account(&k.account, 0.5, now + 3000, 1000)
            .await
            .unwrap();
        let slot = db
            .reserve(&k, t + 700.0, 50.0, 0.0, 10.0, None)
            .await
            .unwrap();
        assert_eq!(slot.ceiling, Some(5.0), "half the rate in force (10)");
        assert_eq!(slot.throttled_at, Some(now + 3000));
        db.close().await;
        store.close().await;
    }
}
