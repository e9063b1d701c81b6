//! What follows an outcome, inside the transaction that records it: this file reads
//! the rows a job kind's rules need ([`crate::rules`], pure), calls them, and applies
//! the [`Effect`]s they return. A crash never separates an outcome from what it causes,
//! and no policy lives here: only reads and writes.

use std::collections::BTreeMap;

use sqlx::{Row, Sqlite, Transaction};

use super::StoreError;
use super::jobs::{add_job, fail_items, held_items, ids_json_i64};
use super::states::{ItemStatus, JobKind, JobState, PowerState, Verified};
use crate::rules::keep_one_key;
use crate::rules::power;
use crate::rules::rotation::{self, Confirmed, OtherBind};
use crate::rules::template::{self, Change};
use crate::rules::{Effect, ErrorInfo, FollowUp, JobFacts, Pair, ReadItem};

type Tx<'a> = Transaction<'a, Sqlite>;

/// What a read (`confirm`, `look`, `verify`) saw, as the executor recorded it.
pub(super) struct Read<'a> {
    /// The verdict on each item, by id.
    pub verified: &'a [(i64, Verified)],
    /// The keys each instance the reply showed holds, by instance id.
    pub keys: &'a [(String, Vec<String>)],
    /// What a template change's look read.
    pub listed: Option<&'a template::Listed>,
    /// A look: each instance as seen (its latest operation).
    pub seen: &'a [power::Seen],
}

/// A job's rows as the rules see them, and its run.
async fn job_facts(tx: &mut Tx<'_>, job_id: i64) -> Result<(i64, JobFacts), StoreError> {
    let row = sqlx::query(
        "SELECT run_id, kind, region, account, force_stop, instance_ids, key_ids FROM jobs WHERE id = ?",
    )
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    let ids = |column: &str| -> Result<Vec<String>, StoreError> {
        serde_json::from_str(row.get::<&str, _>(column))
            .map_err(|e| StoreError::Corrupt(format!("job {job_id} has unreadable ids: {e}")))
    };
    let facts = JobFacts {
        id: job_id,
        kind: row
            .get::<&str, _>("kind")
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("job {job_id}: {e}")))?,
        region: row.get("region"),
        account: row.get("account"),
        force_stop: row.get::<i64, _>("force_stop") != 0,
        instance_ids: ids("instance_ids")?,
        key_ids: ids("key_ids")?,
    };
    Ok((row.get("run_id"), facts))
}

/// A job of `kind` succeeded (the API accepted it, `request_id`).
pub(super) async fn after_success(
    tx: &mut Tx<'_>,
    job_id: i64,
    kind: JobKind,
    request_id: &str,
    now: i64,
    follow_up: &FollowUp,
) -> Result<(), StoreError> {
    match kind {
        JobKind::Stop | JobKind::Start => {
            let (run_id, job) = job_facts(tx, job_id).await?;
            let effects = if kind == JobKind::Stop {
                power::stop_accepted(&job, request_id, now)
            } else {
                power::start_accepted(&job, request_id, now)
            };
            return apply(tx, run_id, effects, job.account.as_deref(), now).await;
        }
        JobKind::Unbind => return keys_maybe_done(tx, job_id, now).await,
        JobKind::Bind => {}
        JobKind::Template | JobKind::TemplateDefault | JobKind::LaunchConfig => {
            let (run_id, job) = job_facts(tx, job_id).await?;
            let change = change_of(tx, job_id).await?;
            let effects = template::accepted(&job, &change, request_id, now);
            return apply(tx, run_id, effects, job.account.as_deref(), now).await;
        }
        _ => return Ok(()),
    }
    let (run_id, job) = job_facts(tx, job_id).await?;
    let rows = sqlx::query(
        "SELECT id, instance_id, key_id, request_id FROM items WHERE job_id = ? AND status = ? \
         ORDER BY instance_id, key_id",
    )
    .bind(job_id)
    .bind(ItemStatus::Succeeded.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let accepted = rows
        .iter()
        .map(|row| ReadItem {
            item_id: row.get("id"),
            instance_id: row.get("instance_id"),
            key_id: row.get("key_id"),
            request_id: row.get("request_id"),
            bind: true,
        })
        .collect();
    let effects = rotation::bind_accepted(&job, accepted, now, follow_up);
    apply(tx, run_id, effects, job.account.as_deref(), now).await?;
    keys_maybe_done(tx, job_id, now).await
}

/// What a read (`survey`, `settle`) saw of a live run's instances, recorded.
pub(super) async fn after_seen(
    tx: &mut Tx<'_>,
    job_id: i64,
    kind: JobKind,
    seen: &[power::Seen],
    now: i64,
    follow_up: &FollowUp,
) -> Result<(), StoreError> {
    let (run_id, job) = job_facts(tx, job_id).await?;
    let Some(live) = super::power::live_of(tx, run_id).await? else {
        return Ok(());
    };
    let effects = match kind {
        JobKind::Survey => {
            let columns = match &live.per {
                Some(power::Per::Column(_)) => {
                    super::power::column_groups(tx, run_id, &job.instance_ids).await?
                }
                _ => BTreeMap::new(),
            };
            let held = super::claims::held_by_others(
                tx,
                run_id,
                &job.region,
                &job.instance_ids,
                Some(crate::rules::ClaimReason::Down),
            )
            .await?
            .into_iter()
            .filter(|(_, claim)| claim.blocks())
            .map(|(instance, _)| instance)
            .collect();
            power::surveyed(&live, &job, seen, &columns, &held)
        }
        JobKind::Settle => {
            let payload: power::SettlePayload =
                sqlx::query_scalar::<_, Option<String>>("SELECT payload FROM jobs WHERE id = ?")
                    .bind(job_id)
                    .fetch_one(&mut **tx)
                    .await?
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("settle job {job_id} has no target"))
                    })?;
            let rows =
                super::power::rows(tx, run_id, Some((&job.region, &job.instance_ids))).await?;
            let failed = if payload.target == power::Target::Idle {
                super::power::failed_key_operations(
                    tx,
                    run_id,
                    &job.region,
                    seen,
                    follow_up.max_attempts,
                )
                .await?
            } else {
                Default::default()
            };
            power::settled(
                &live,
                &job,
                payload.target,
                seen,
                &rows,
                &failed,
                follow_up.max_attempts,
                now,
            )
        }
        _ => Vec::new(),
    };
    apply(tx, run_id, effects, job.account.as_deref(), now).await?;
    admit(tx, run_id, now).await
}

/// After a key step of a live run: the instances of job `job_id` that are down by the
/// run and have no pair left to do are brought back (their keys are done).
async fn keys_maybe_done(tx: &mut Tx<'_>, job_id: i64, now: i64) -> Result<(), StoreError> {
    let (run_id, job) = job_facts(tx, job_id).await?;
    let Some(live) = super::power::live_of(tx, run_id).await? else {
        return Ok(());
    };
    let down_state = match live.running {
        power::Running::StopStart => PowerState::Stopped,
        power::Running::ForceStop => PowerState::Stopping,
    };
    let done: Vec<String> = sqlx::query_scalar(
        "SELECT p.instance_id FROM power p WHERE p.run_id = ? AND p.region = ? AND p.state = ? \
         AND p.instance_id IN (SELECT value FROM json_each(?)) \
         AND NOT EXISTS (SELECT 1 FROM items i WHERE i.run_id = p.run_id AND i.region = p.region \
                         AND i.instance_id = p.instance_id AND i.status = ?) ORDER BY p.instance_id",
    )
    .bind(run_id)
    .bind(&job.region)
    .bind(down_state.as_str())
    .bind(super::jobs::ids_json(&job.instance_ids))
    .bind(ItemStatus::Pending.as_str())
    .fetch_all(&mut **tx)
    .await?;
    if done.is_empty() {
        return Ok(());
    }
    let effects = power::keys_done(&live, &job.region, done, now);
    apply(tx, run_id, effects, job.account.as_deref(), now).await
}

/// A read of `kind` ended (no recheck left): its verdicts are stored already.
pub(super) async fn after_read(
    tx: &mut Tx<'_>,
    job_id: i64,
    kind: JobKind,
    read: Read<'_>,
    now: i64,
    follow_up: &FollowUp,
) -> Result<(), StoreError> {
    let effects = match kind {
        JobKind::Confirm => {
            let (run_id, job) = job_facts(tx, job_id).await?;
            let effects = confirmed(tx, run_id, &job, read.verified, now, follow_up).await?;
            apply(tx, run_id, effects, job.account.as_deref(), now).await?;
            return keys_maybe_done(tx, job_id, now).await;
        }
        JobKind::TemplateLook | JobKind::LaunchConfigLook => {
            let (run_id, job) = job_facts(tx, job_id).await?;
            let change = change_of(tx, job_id).await?;
            let listed = read.listed.ok_or_else(|| {
                StoreError::Corrupt(format!("template look {job_id} recorded nothing read"))
            })?;
            (
                run_id,
                job.account.clone(),
                template::looked(&job, &change, listed, now),
            )
        }
        JobKind::Look => {
            let (run_id, job) = job_facts(tx, job_id).await?;
            let seen: BTreeMap<String, Vec<String>> = read.keys.iter().cloned().collect();
            let held = held_items(tx, run_id, &job.region, &job.instance_ids, false).await?;
            let recheck_until =
                sqlx::query_scalar::<_, Option<String>>("SELECT payload FROM jobs WHERE id = ?")
                    .bind(job_id)
                    .fetch_one(&mut **tx)
                    .await?
                    .and_then(|text| serde_json::from_str::<crate::rules::ReadPayload>(&text).ok())
                    .map_or(0, |payload| payload.recheck_until);
            // A planned look carries no deadline: the first answer sets it.
            let recheck_until = if recheck_until > 0 {
                recheck_until
            } else {
                now + follow_up.confirm_wait_ms
            };
            let claims =
                super::claims::held_by_others(tx, run_id, &job.region, &job.instance_ids, None)
                    .await?;
            let view = keep_one_key::LookView {
                now,
                recheck_until,
                operating: read
                    .seen
                    .iter()
                    .filter(|s| s.latest_state.as_deref() == Some("OPERATING"))
                    .map(|s| s.instance_id.clone())
                    .collect(),
                removing: super::claims::removing_keys(tx, &job.region, &claims).await?,
                claims,
            };
            (
                run_id,
                job.account.clone(),
                keep_one_key::looked(&job, &seen, &held, &view),
            )
        }
        _ => return Ok(()),
    };
    apply(tx, effects.0, effects.2, effects.1.as_deref(), now).await
}

/// The template change a job of it carries in its payload.
async fn change_of(tx: &mut Tx<'_>, job_id: i64) -> Result<Change, StoreError> {
    let payload: Option<String> = sqlx::query_scalar("SELECT payload FROM jobs WHERE id = ?")
        .bind(job_id)
        .fetch_one(&mut **tx)
        .await?;
    Change::decode(payload.as_deref().unwrap_or(""))
        .map_err(|e| StoreError::Corrupt(format!("job {job_id}: {e}")))
}

/// A write whose outcome is unknown (no reply; an attempt a kill left open): the job
/// is replaced (`split`) by what its kind's rules say, a look that finds what it did.
pub(super) async fn after_doubt(
    tx: &mut Tx<'_>,
    job_id: i64,
    kind: JobKind,
    error: &ErrorInfo,
    now: i64,
) -> Result<(), StoreError> {
    let (run_id, job) = job_facts(tx, job_id).await?;
    let change = change_of(tx, job_id).await?;
    sqlx::query(
        "UPDATE jobs SET state = ?, finished_at = ?, last_error_code = ?, last_error_message = ?          WHERE id = ?",
    )
    .bind(JobState::Split.as_str())
    .bind(now)
    .bind(&error.code)
    .bind(&error.message)
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    debug_assert!(kind.rereads_when_in_doubt());
    let effects = template::in_doubt(&job, &change, now);
    for effect in effects {
        if let Effect::AddJob(new) = effect {
            let id = add_job(tx, run_id, new, now).await?;
            sqlx::query("UPDATE jobs SET parent_job_id = ? WHERE id = ?")
                .bind(job_id)
                .bind(id)
                .execute(&mut **tx)
                .await?;
        } else {
            apply(tx, run_id, vec![effect], job.account.as_deref(), now).await?;
        }
    }
    Ok(())
}

/// The rows a confirmation's rule needs: its pairs with their verdicts and operation
/// failures, and how many bind pairs each bound instance still waits for.
async fn confirmed(
    tx: &mut Tx<'_>,
    run_id: i64,
    job: &JobFacts,
    verified: &[(i64, Verified)],
    now: i64,
    follow_up: &FollowUp,
) -> Result<Vec<Effect>, StoreError> {
    let verdict: BTreeMap<i64, Verified> = verified.iter().copied().collect();
    let rows = sqlx::query(
        "SELECT id, instance_id, key_id, op_failures FROM items \
         WHERE id IN (SELECT value FROM json_each(?)) ORDER BY instance_id, key_id",
    )
    .bind(ids_json_i64(&verdict.keys().copied().collect::<Vec<_>>()))
    .fetch_all(&mut **tx)
    .await?;
    let mut pairs = Vec::with_capacity(rows.len());
    let mut unconfirmed = BTreeMap::new();
    for row in &rows {
        let id: i64 = row.get("id");
        let Some(verdict) = verdict.get(&id).copied() else {
            continue;
        };
        let instance: String = row.get("instance_id");
        if verdict == Verified::Bound && !unconfirmed.contains_key(&instance) {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM items WHERE run_id = ? AND region = ? AND instance_id = ? \
                 AND bind = 1 AND (status != ? OR verified IS NOT ?)",
            )
            .bind(run_id)
            .bind(&job.region)
            .bind(&instance)
            .bind(ItemStatus::Succeeded.as_str())
            .bind(Verified::Bound.as_str())
            .fetch_one(&mut **tx)
            .await?;
            unconfirmed.insert(instance.clone(), waiting);
        }
        pairs.push(Confirmed {
            pair: Pair::new(id, &instance, row.get("key_id")),
            verdict,
            op_failures: row.get("op_failures"),
        });
    }
    Ok(rotation::confirmed(
        job,
        &pairs,
        &unconfirmed,
        now,
        follow_up,
    ))
}

/// A job of `kind` failed for good.
pub(super) async fn after_failure(
    tx: &mut Tx<'_>,
    job_id: i64,
    kind: JobKind,
    error: &ErrorInfo,
    now: i64,
) -> Result<(), StoreError> {
    let (run_id, job) = job_facts(tx, job_id).await?;
    match kind {
        JobKind::Verify => Ok(()),
        JobKind::Unbind => keys_maybe_done(tx, job_id, now).await,
        JobKind::Bind | JobKind::Confirm | JobKind::Look => {
            let effects = match kind {
                JobKind::Bind => {
                    let others = match rotation::stopped_key(&job, error) {
                        Some(key) => queued_binds_of(tx, run_id, key).await?,
                        None => Vec::new(),
                    };
                    rotation::bind_failed(&job, error, &others)
                }
                JobKind::Confirm => rotation::confirm_failed(&job, error),
                _ => keep_one_key::look_failed(&job, error),
            };
            apply(tx, run_id, effects, job.account.as_deref(), now).await?;
            keys_maybe_done(tx, job_id, now).await
        }
        JobKind::TemplateLook
        | JobKind::Template
        | JobKind::TemplateDefault
        | JobKind::LaunchConfigLook
        | JobKind::LaunchConfig => {
            let change = change_of(tx, job_id).await?;
            apply(
                tx,
                run_id,
                template::failed(&job, &change, error),
                job.account.as_deref(),
                now,
            )
            .await
        }
        JobKind::Stop | JobKind::Start | JobKind::Survey | JobKind::Settle => {
            let Some(live) = super::power::live_of(tx, run_id).await? else {
                return Ok(());
            };
            let effects = match kind {
                JobKind::Stop => power::stop_failed(&live, &job, error),
                JobKind::Start => power::start_failed(&job, error),
                JobKind::Survey => power::survey_failed(&job, error),
                _ => power::settle_failed(&job, error),
            };
            apply(tx, run_id, effects, job.account.as_deref(), now).await?;
            admit(tx, run_id, now).await
        }
    }
}

/// The queued `bind` jobs of the run that bind `key`.
async fn queued_binds_of(
    tx: &mut Tx<'_>,
    run_id: i64,
    key: &str,
) -> Result<Vec<OtherBind>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, region, instance_ids FROM jobs WHERE run_id = ? AND kind = ? AND state = ? \
         AND EXISTS (SELECT 1 FROM json_each(jobs.key_ids) WHERE value = ?)",
    )
    .bind(run_id)
    .bind(JobKind::Bind.as_str())
    .bind(JobState::Queued.as_str())
    .bind(key)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| {
            let job_id: i64 = row.get("id");
            Ok(OtherBind {
                job_id,
                region: row.get("region"),
                instance_ids: serde_json::from_str(row.get::<&str, _>("instance_ids")).map_err(
                    |e| StoreError::Corrupt(format!("job {job_id} has unreadable ids: {e}")),
                )?,
            })
        })
        .collect()
}

/// Applies effects, in order, in the outcome's transaction. `followed`: the account
/// of the job whose outcome they follow, which the jobs they add inherit unless they
/// name one (`None` for effects that follow no job: admission).
pub(super) async fn apply(
    tx: &mut Tx<'_>,
    run_id: i64,
    effects: Vec<Effect>,
    followed: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let mut left_stopped = Vec::new();
    let inherit = |account: Option<String>| account.or_else(|| followed.map(str::to_string));
    for effect in effects {
        match effect {
            Effect::AddJob(mut job) => {
                job.account = inherit(job.account.take());
                add_job(tx, run_id, job, now).await?;
            }
            Effect::Release {
                region,
                force_stop,
                instances,
            } => {
                let held = held_items(tx, run_id, &region, &instances, false).await?;
                let jobs =
                    crate::rules::jobs_for_pairs(JobKind::Unbind, &region, force_stop, &held, now);
                for mut job in jobs {
                    job.account = inherit(None);
                    add_job(tx, run_id, job, now).await?;
                }
            }
            Effect::SkipHeld {
                region,
                instances,
                reason,
            } => skip_held(tx, run_id, &region, &instances, &reason).await?,
            Effect::FailJob { job_id, reason } => {
                sqlx::query(
                    "UPDATE jobs SET state = ?, finished_at = ?, last_error_code = ?, \
                     last_error_message = ? WHERE id = ? AND state = ?",
                )
                .bind(JobState::Failed.as_str())
                .bind(now)
                .bind(&reason.code)
                .bind(&reason.message)
                .bind(job_id)
                .bind(JobState::Queued.as_str())
                .execute(&mut **tx)
                .await?;
                fail_items(tx, job_id, &reason).await?;
            }
            Effect::Power(change) => {
                super::power::change(tx, run_id, &change, followed, now).await?;
                if matches!(change.state, PowerState::Up | PowerState::NotStopped) {
                    super::claims::release(tx, run_id, &change.region, &change.instance_id).await?;
                }
                if change.state == PowerState::LeftStopped {
                    left_stopped.push(change);
                }
            }
            Effect::ReleaseKeys {
                region,
                account,
                instances,
                force_stop,
            } => {
                let account = inherit(account);
                super::power::release_keys(
                    tx,
                    run_id,
                    (&region, account.as_deref()),
                    &instances,
                    force_stop,
                    now,
                )
                .await?
            }
            Effect::FailHeld {
                region,
                instances,
                reason,
            } => {
                super::power::fail_held(
                    tx,
                    run_id,
                    &region,
                    &instances,
                    &reason,
                    ItemStatus::Failed,
                )
                .await?
            }
            Effect::CountStartFailure {
                region,
                instance_id,
            } => {
                sqlx::query(
                    "UPDATE power SET start_failures = start_failures + 1 \
                     WHERE run_id = ? AND region = ? AND instance_id = ?",
                )
                .bind(run_id)
                .bind(region)
                .bind(instance_id)
                .execute(&mut **tx)
                .await?;
            }
            Effect::Halt { reason } => super::power::halt(tx, run_id, &reason).await?,
            Effect::Template(update) => {
                super::templates::apply_update(tx, run_id, &update, now).await?
            }
            Effect::Claim {
                region,
                instances,
                reason,
            } => super::claims::take(tx, run_id, &region, &instances, reason, now).await?,
            Effect::CountOperationFailure { item_ids } => {
                for chunk in item_ids.chunks(500) {
                    sqlx::query(
                        "UPDATE items SET op_failures = op_failures + 1 \
                         WHERE id IN (SELECT value FROM json_each(?))",
                    )
                    .bind(ids_json_i64(chunk))
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
    }
    if let Some(reason) = power::halts(&left_stopped) {
        super::power::halt(tx, run_id, &reason).await?;
    }
    Ok(())
}

/// Ends the held unbinds of `instances` as skipped, with the reason.
async fn skip_held(
    tx: &mut Tx<'_>,
    run_id: i64,
    region: &str,
    instances: &[String],
    reason: &ErrorInfo,
) -> Result<(), StoreError> {
    for chunk in instances.chunks(500) {
        sqlx::query(
            "UPDATE items SET status = ?, held = 0, error_code = ?, error_message = ? \
             WHERE run_id = ? AND region = ? AND held = 1 AND status = ? AND bind = 0 \
             AND instance_id IN (SELECT value FROM json_each(?))",
        )
        .bind(ItemStatus::Skipped.as_str())
        .bind(&reason.code)
        .bind(&reason.message)
        .bind(run_id)
        .bind(region)
        .bind(ItemStatus::Pending.as_str())
        .bind(serde_json::to_string(chunk).unwrap_or_else(|_| "[]".into()))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Admits waiting instances into the budget, unless a survey is still open (the
/// budget's base is not known yet) or the run takes none (halted, draining).
pub(super) async fn admit(tx: &mut Tx<'_>, run_id: i64, now: i64) -> Result<(), StoreError> {
    let Some(live) = super::power::live_of(tx, run_id).await? else {
        return Ok(());
    };
    let surveying: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND kind = ? AND state IN (?, ?)",
    )
    .bind(run_id)
    .bind(JobKind::Survey.as_str())
    .bind(JobState::Queued.as_str())
    .bind(JobState::InFlight.as_str())
    .fetch_one(&mut **tx)
    .await?;
    if surveying > 0 {
        return Ok(());
    }
    let admissions: Option<String> = sqlx::query_scalar("SELECT admissions FROM runs WHERE id = ?")
        .bind(run_id)
        .fetch_one(&mut **tx)
        .await?;
    let all = super::power::rows(tx, run_id, None).await?;
    let claims = super::claims::waiting_held_by_others(tx, run_id).await?;
    let effects = power::admit(&live, &all, admissions.is_some(), now, &claims);
    apply(tx, run_id, effects, None, now).await
}

impl super::Store {
    /// Before a live run goes on (resume): an interrupt's drain is over, and waiting
    /// instances are admitted into whatever room the budget has.
    pub async fn resume_admissions(&self, run_id: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE runs SET admissions = NULL WHERE id = ? AND admissions = ?")
            .bind(run_id)
            .bind(super::power::DRAINING)
            .execute(&mut *tx)
            .await?;
        admit(&mut tx, run_id, super::now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }
}
