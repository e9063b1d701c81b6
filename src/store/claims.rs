//! Claims (migration 0013): which run of the database may unbind an instance's keys
//! under `--keep-one-key`, or take it down under a downtime budget (issue 26, M2).
//!
//! A claim is read, taken and released in the transaction of the outcome that
//! decides (a look releasing an instance's unbinds, an admission stopping it), so two
//! runs on one database never both decide on one instance: SQLite has one writer.
//!
//! What another run's claim means ([`Claim`]):
//! - its run is running (state `running`, its lease fresher than
//!   [`super::LEASE_STALE_AFTER`]): **busy**, wait;
//! - its run is not running any more (ended, interrupted, or killed: the lease went
//!   stale) but still has pairs pending on the instance or has it down: **stuck**,
//!   only that run's resume can finish what it started there, so nothing else touches
//!   the instance;
//! - its run is not running and has nothing left on it: **stale**, taken over; the
//!   keys it had accepted for unbinding and not yet verified count as gone.
//!
//! Released: a `down` claim when the instance is back up (or never stopped); every
//! claim when its run finishes, except on instances where the run's unbinds are
//! accepted and not yet verified (those stay, stale, until another run takes them
//! over). Two databases share nothing: they are only as safe as the cloud's own state
//! (the look still waits out operations in progress).

use std::collections::BTreeMap;

use sqlx::{Row, Sqlite, Transaction};

use super::jobs::ids_json;
use super::{StoreError, now_ms};
use crate::rules::{Claim, ClaimReason};

type Tx<'a> = Transaction<'a, Sqlite>;

/// The classification of a claim row `c` of run `r`, as SQL: `busy`, `stuck` or
/// `stale` (`?1`: the oldest heartbeat of a run still running).
macro_rules! classify {
    () => {
        "CASE \
    WHEN r.state = 'running' AND r.owner_token IS NOT NULL AND r.heartbeat_at >= ?1 THEN 'busy' \
    WHEN EXISTS (SELECT 1 FROM items i WHERE i.run_id = c.run_id AND i.status = 'pending' \
                 AND i.region = c.region AND i.instance_id = c.instance_id) \
      OR EXISTS (SELECT 1 FROM power p WHERE p.run_id = c.run_id AND p.region = c.region \
                 AND p.instance_id = c.instance_id \
                 AND p.state IN ('stopping', 'stopped', 'starting', 'warming', 'left_stopped')) \
      THEN 'stuck' \
    ELSE 'stale' END"
    };
}

fn claim_of(class: &str, run_id: i64) -> Claim {
    match class {
        "busy" => Claim::Busy { run_id },
        "stuck" => Claim::Stuck { run_id },
        _ => Claim::Stale { run_id },
    }
}

fn fresh_since() -> i64 {
    now_ms() - super::LEASE_STALE_AFTER.as_millis() as i64
}

/// The instances of `instances` (in `region`) that another run holds (only for
/// `reason`, when given).
pub(super) async fn held_by_others(
    tx: &mut Tx<'_>,
    run_id: i64,
    region: &str,
    instances: &[String],
    reason: Option<ClaimReason>,
) -> Result<BTreeMap<String, Claim>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT c.instance_id, c.run_id, ",
        classify!(),
        " AS class FROM claims c JOIN runs r ON r.id = c.run_id \
         WHERE c.region = ?2 AND c.instance_id IN (SELECT value FROM json_each(?3)) AND c.run_id != ?4 \
         AND (?5 IS NULL OR c.reason = ?5)"
    ))
    .bind(fresh_since())
    .bind(region)
    .bind(ids_json(instances))
    .bind(run_id)
    .bind(reason.map(ClaimReason::as_str))
    .fetch_all(&mut **tx)
    .await?;
    Ok(claims_by_instance(&rows))
}

/// The claims of `rows` (`instance_id`, `run_id`, `class`), by instance.
fn claims_by_instance(rows: &[sqlx::sqlite::SqliteRow]) -> BTreeMap<String, Claim> {
    rows.iter()
        .map(|row| {
            (
                row.get("instance_id"),
                claim_of(row.get("class"), row.get("run_id")),
            )
        })
        .collect()
}

/// A live run's waiting instances that another run holds (read before each admission:
/// the claims table is small, so this costs little while no other run claims).
pub(super) async fn waiting_held_by_others(
    tx: &mut Tx<'_>,
    run_id: i64,
) -> Result<BTreeMap<String, Claim>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT c.instance_id, c.run_id, ",
        classify!(),
        " AS class FROM claims c JOIN runs r ON r.id = c.run_id \
         JOIN power w ON w.run_id = ?2 AND w.region = c.region AND w.instance_id = c.instance_id \
         WHERE w.state = 'waiting' AND c.run_id != ?2"
    ))
    .bind(fresh_since())
    .bind(run_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(claims_by_instance(&rows))
}

/// Per instance, the keys its claim's run had accepted for unbinding and not yet
/// verified: gone, for a look that takes the claim over.
pub(super) async fn removing_keys(
    tx: &mut Tx<'_>,
    region: &str,
    claims: &BTreeMap<String, Claim>,
) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
    let mut removing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (instance, claim) in claims {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT key_id FROM items WHERE run_id = ? AND status = 'succeeded' AND bind = 0 \
             AND region = ? AND instance_id = ? AND (verified IS NULL OR verified = 'operating') \
             ORDER BY key_id",
        )
        .bind(claim.run_id())
        .bind(region)
        .bind(instance)
        .fetch_all(&mut **tx)
        .await?;
        if !keys.is_empty() {
            removing.insert(instance.clone(), keys);
        }
    }
    Ok(removing)
}

/// The run claims these instances, taking over any claim it was allowed to.
pub(super) async fn take(
    tx: &mut Tx<'_>,
    run_id: i64,
    region: &str,
    instances: &[String],
    reason: ClaimReason,
    now: i64,
) -> Result<(), StoreError> {
    for chunk in instances.chunks(500) {
        sqlx::query(
            "INSERT INTO claims (region, instance_id, run_id, reason, taken_at) \
             SELECT ?, value, ?, ?, ? FROM json_each(?) WHERE true \
             ON CONFLICT (region, instance_id) DO UPDATE SET run_id = excluded.run_id, \
             reason = excluded.reason, taken_at = excluded.taken_at",
        )
        .bind(region)
        .bind(run_id)
        .bind(reason.as_str())
        .bind(now)
        .bind(ids_json(chunk))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The run lets one instance go (it is back up, or was never stopped).
pub(super) async fn release(
    tx: &mut Tx<'_>,
    run_id: i64,
    region: &str,
    instance: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM claims WHERE run_id = ? AND region = ? AND instance_id = ?")
        .bind(run_id)
        .bind(region)
        .bind(instance)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A run finished: its claims go, except on instances where its unbinds are accepted
/// and not yet verified (they stay, stale, so a run taking them over counts those
/// keys as gone).
pub(super) async fn release_finished<'e, E>(executor: E, run_id: i64) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query(
        // The subquery is evaluated once (an ephemeral index), not once per claim.
        "DELETE FROM claims WHERE run_id = ?1 AND (region, instance_id) NOT IN \
         (SELECT region, instance_id FROM items WHERE run_id = ?1 AND status = 'succeeded' \
          AND bind = 0 AND (verified IS NULL OR verified = 'operating'))",
    )
    .bind(run_id)
    .execute(executor)
    .await?;
    Ok(())
}

impl super::Store {
    /// A live run's waiting instances that a running run of the database holds: the
    /// run waits for them (they come free when that run has them back up).
    pub async fn waiting_on_claims(&self, run_id: i64) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let busy = waiting_held_by_others(&mut tx, run_id)
            .await?
            .values()
            .filter(|c| matches!(c, Claim::Busy { .. }))
            .count();
        tx.commit().await?;
        Ok(busy as i64)
    }
}
