//! `keyfleet verify [RUN]`: ask the cloud itself whether each pair's key is gone.
//!
//! A RequestId proves only that the API accepted an operation; key-pair operations
//! are asynchronous. Verification queues DescribeInstances batches (100 instances,
//! per region) in the run's own queue and executes only those (never a key-pair
//! operation), so they are paced at DescribeInstances' own limit, retried, and
//! survive a crash: `keyfleet verify` again finishes an interrupted round.

use std::time::Duration;

use keyfleet::cvm::Action;
use keyfleet::executor::StopReason;
use keyfleet::store::verify::VerificationCounts;
use keyfleet::store::{Store, Verified};
use serde_json::json;

use super::flags::{self, QueueFlags, SendFlags};
use super::run::{ExecFlags, Executed, build_client, execute_quietly, open_store};
use crate::{GlobalArgs, exit};

/// `keyfleet verify [RUN]`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run; the newest when omitted.
    run: Option<i64>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Return every succeeded pair whose key is still bound (or whose operation failed
    /// or is still running) to pending, so that `keyfleet resume` sends it again.
    #[arg(long)]
    requeue: bool,
    /// How long to keep looking at instances whose operation is still OPERATING (a
    /// bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = flags::seconds)]
    wait: Duration,
    #[command(flatten)]
    send: SendFlags,
    #[command(flatten)]
    queue: QueueFlags,
}

/// How a verification ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every batch was read.
    Complete,
    /// The cloud will not answer DescribeInstances for these credentials (for
    /// example `UnauthorizedOperation`): the run stands, unverified.
    Unavailable { code: String, message: String },
    /// Stopped (Ctrl-C, a transient stop): `keyfleet verify` again finishes it.
    Interrupted(String),
}

/// What a verification found.
#[derive(Debug, Clone)]
pub struct Verification {
    pub run_id: i64,
    pub ended: Ended,
    pub counts: VerificationCounts,
    pub requests: u64,
}

impl Verification {
    /// The round ended with a verdict on every pair it looked at.
    pub fn complete(&self) -> bool {
        self.ended == Ended::Complete
    }

    /// Every succeeded pair verified gone, and the round complete.
    pub fn all_gone(&self) -> bool {
        self.ended == Ended::Complete
            && self.counts.succeeded_not_gone == 0
            && self.counts.binds_not_bound == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (state, code, message) = match &self.ended {
            Ended::Complete => ("complete", None, None),
            Ended::Unavailable { code, message } => ("unavailable", Some(code), Some(message)),
            Ended::Interrupted(reason) => ("interrupted", None, Some(reason)),
        };
        let by_value: serde_json::Map<String, serde_json::Value> = Verified::ALL
            .iter()
            .map(|v| (v.as_str().to_string(), json!(self.counts.get(*v))))
            .collect();
        json!({
            "run_id": self.run_id,
            "verification": state,
            "code": code,
            "message": message,
            "verified": by_value,
            "unverified": self.counts.unverified,
            "succeeded_not_gone": self.counts.succeeded_not_gone,
            "binds_not_bound": self.counts.binds_not_bound,
            "all_gone": self.all_gone(),
            "requests": self.requests,
        })
    }
}

/// Verifies run `run_id` (finishing an interrupted round, or starting a new one).
pub async fn verify_run(
    store: &Store,
    run_id: i64,
    client: std::sync::Arc<keyfleet::api::CvmClient>,
    wait: Duration,
    flags: &ExecFlags,
    global: &GlobalArgs,
) -> anyhow::Result<Result<Verification, u8>> {
    if store.open_verification(run_id).await? == 0 {
        store
            .begin_verification(run_id, wait.as_millis() as i64)
            .await?;
    }
    let mut config = flags.exec_config();
    config.only = Some(Action::DescribeInstances);
    let summary = match execute_quietly(store, run_id, client, config, flags, global).await? {
        Executed::Summary(summary) => summary,
        Executed::Exit(code) => return Ok(Err(code)),
    };
    let ended = match summary.stopped {
        None => Ended::Complete,
        Some(StopReason::Fatal { code, message, .. }) => {
            // Nothing a resume could change: end the round, so the run is complete
            // without it (and `resume` does not meet the same refusal again).
            store
                .cancel_open_jobs(
                    run_id,
                    Action::DescribeInstances,
                    &code,
                    &format!("verification unavailable: {message}"),
                )
                .await?;
            store.finish_if_done(run_id).await?;
            Ended::Unavailable { code, message }
        }
        Some(other) => Ended::Interrupted(other.to_string()),
    };
    Ok(Ok(Verification {
        run_id,
        ended,
        counts: store.verification_counts(run_id).await?,
        requests: summary.requests,
    }))
}

/// The verification in words, on stderr.
/// With `resending`, the caller sends FAILED operations again itself (`run`), so the
/// advice to requeue them is left out.
pub fn print_verification(v: &Verification, global: &GlobalArgs, resending: bool) {
    let c = &v.counts;
    let db = super::run::db_flag(global);
    match &v.ended {
        Ended::Complete => crate::note!(
            "  verified: {} gone, {} still bound, {} operating, {} operation failed, {} instance missing ({} DescribeInstances requests)",
            c.get(Verified::Gone),
            c.get(Verified::StillBound),
            c.get(Verified::Operating),
            c.get(Verified::OperationFailed),
            c.get(Verified::InstanceMissing),
            v.requests
        ),
        Ended::Unavailable { code, message } => crate::note!(
            "  UNVERIFIED: DescribeInstances was refused ({}: {}); the run stands, but nothing \
             proves the keys are gone. Grant DescribeInstances, then: keyfleet{db} verify {}",
            keyfleet::display::escape(code),
            keyfleet::display::escape(message),
            v.run_id
        ),
        Ended::Interrupted(reason) => crate::note!(
            "  verification stopped ({}); finish it with: keyfleet{db} verify {}",
            keyfleet::display::escape(reason),
            v.run_id
        ),
    }
    let (bound, not_bound) = (c.get(Verified::Bound), c.get(Verified::NotBound));
    if v.ended == Ended::Complete && bound + not_bound > 0 {
        crate::note!("  new keys: {bound} bound, {not_bound} not bound");
    }
    let failed_operations = if resending {
        c.get(Verified::OperationFailed)
    } else {
        0
    };
    let unresolved = c.succeeded_not_gone.saturating_sub(failed_operations);
    if v.ended == Ended::Complete && unresolved > 0 {
        crate::note!(
            "  {} succeeded pairs are not verified gone: keyfleet{db} verify {} --requeue, then keyfleet{db} resume {}",
            unresolved,
            v.run_id,
            v.run_id
        );
    }
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<u8> {
    let store = open_store(&global.db).await?;
    let run_id = store.resolve_run(args.run).await?;
    let client = build_client(&args.send, global)?;
    let exec = ExecFlags::without_verification(args.send, args.queue, args.wait);
    let verification = match verify_run(&store, run_id, client, args.wait, &exec, global).await? {
        Ok(v) => v,
        Err(code) => {
            super::verdict::print(&store, run_id, code, global, "verify").await;
            return Ok(code);
        }
    };
    crate::note!("run {run_id}:");
    print_verification(&verification, global, false);
    if args.json {
        println!("{}", verification.to_json());
    }
    if args.requeue && verification.ended == Ended::Complete {
        let mut requeue = store.begin_requeue_unverified(run_id).await?;
        for job in keyfleet::plan::chunk_requeued(requeue.pairs()) {
            requeue
                .add(&job.region, job.force_stop, job.instance_ids, job.key_ids)
                .await?;
        }
        let requeued = requeue.commit().await?;
        let db = super::run::db_flag(global);
        if requeued > 0 {
            crate::note!(
                "  {requeued} pairs are pending again; send them with: keyfleet{db} resume {run_id}"
            );
        } else {
            crate::note!("  nothing to requeue");
        }
    }
    let code = match &verification.ended {
        Ended::Interrupted(_) => exit::STOPPED,
        _ if verification.all_gone() => exit::OK,
        _ => exit::FAILED,
    };
    super::verdict::print(&store, run_id, code, global, "verify").await;
    // An interrupted verification keeps its old exit code (1): scripts read it.
    Ok(if code == exit::STOPPED {
        exit::FAILED
    } else {
        code
    })
}
