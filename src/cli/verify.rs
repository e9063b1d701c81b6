//! `keyfleet verify [RUN]`: ask the cloud itself whether each pair's key is gone.
//!
//! A RequestId proves only that the API accepted an operation; key-pair operations
//! are asynchronous. Verification queues DescribeInstances batches (100 instances,
//! per region) in the run's own queue and executes only those (never a key-pair
//! operation), so they are paced at DescribeInstances' own limit, retried, and
//! survive a crash: `keyfleet verify` again finishes an interrupted round.

use std::time::Duration;

use keyfleet::lifecycle::{self, Ended, Verification};
use keyfleet::store::Verified;

use super::flags::{self, QueueFlags, SendFlags};
use super::run::{ExecFlags, open_store, with_lifecycle};
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

/// The verification in words, on stderr.
/// With `resending`, the caller sends FAILED operations again itself (`run`), so the
/// advice to requeue them is left out.
pub(crate) fn print_verification(v: &Verification, global: &GlobalArgs, resending: bool) {
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

pub(crate) async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<u8> {
    let store = open_store(&global.db).await?;
    let run_id = store.resolve_run(args.run).await?;
    let client = super::run::build_estate(&store, run_id, &args.send, global).await?;
    let flags = ExecFlags::without_verification(args.send, args.queue, args.wait);
    let verification = match with_lifecycle(&store, run_id, client, &flags, global, async |l| {
        l.verify(run_id).await
    })
    .await?
    {
        Ok(v) => v,
        Err(code) => {
            super::verdict::print(&store, run_id, code, global, "verify").await;
            return Ok(code);
        }
    };
    crate::note!("run {run_id}:");
    print_verification(&verification, global, false);
    super::run::print_account_verdicts(&store, run_id).await?;
    if args.json {
        println!("{}", verification.to_json());
    }
    if args.requeue && verification.ended == Ended::Complete {
        let requeued = lifecycle::requeue_unverified(&store, run_id).await?.pairs;
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
