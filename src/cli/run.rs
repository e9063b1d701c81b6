//! `keyfleet run`, `resume` and `retry`: execute a run's queue with progress,
//! Ctrl-C handling and a closing summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keyfleet::api::CvmClient;
use keyfleet::credentials;
use keyfleet::display::escape;
use keyfleet::executor::{self, Counters, ExecConfig, StopSignal, Summary};
use keyfleet::plan::{self, InputCheck};
use keyfleet::store::Store;

pub use super::common::open_store;
pub use super::flags::ExecFlags;
use super::flags::{PlanFlags, SendFlags};
use super::progress::Display;
use crate::{GlobalArgs, exit};

/// `keyfleet run INPUT`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// CSV, JSON or JSON Lines file of (instance, key, region) rows; `-` reads stdin.
    input: PathBuf,
    #[command(flatten)]
    plan: PlanFlags,
    #[command(flatten)]
    exec: ExecFlags,
}

/// The region for rows that name none: `--region`, else `TENCENTCLOUD_REGION`, else
/// the tccli profile's region; none at all leaves such rows rejected, with a reason.
pub fn default_region(global: &GlobalArgs) -> anyhow::Result<Option<String>> {
    match credentials::resolve_region(global.region.as_deref(), global.profile.as_deref()) {
        Ok(region) => Ok(Some(region.name)),
        Err(credentials::CredentialsError::NoRegion { .. }) => Ok(None),
        Err(other) => Err(other.into()),
    }
}

/// Plans the input (or finds the run that already planned it) and executes it.
pub async fn run(args: RunArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
    let store = open_store(&global.db).await?;
    let options = args.plan.options(default_region(global)?);
    let outcome = plan::plan_input(&store, &args.input, &options).await?;
    let s = &outcome.summary;
    if outcome.existing {
        crate::note!(
            "run {} already holds this input with these options: continuing it",
            s.run_id
        );
    } else {
        crate::note!(
            "planned run {}: {} rows, {} pairs in {} requests (at least {}), {} duplicates, {} rejected",
            s.run_id,
            s.rows,
            s.pairs,
            s.jobs,
            outcome.lower_bound,
            s.duplicates,
            s.rejected
        );
        if let Some(n) = outcome.keyless_after.filter(|n| *n > 0) {
            crate::note!(
                "  {n} instances keep no key after this unbind (keys_after 0){}",
                if args.plan.keep_one_key {
                    ": --keep-one-key looks and skips them"
                } else {
                    "; --keep-one-key would skip them"
                }
            );
        }
        if s.binds > 0 || s.held > 0 {
            crate::note!(
                "  rotation: {} new keys to bind and confirm first; {} pairs held until their \
                 instance's new keys are confirmed (or checked, --keep-one-key)",
                s.binds,
                s.held
            );
        }
        for r in &s.rejections {
            crate::note!("  rejected {}: {}", escape(&r.position), escape(&r.reason));
        }
    }
    let code = execute_with_client(&store, s.run_id, &args.exec, global).await?;
    super::verdict::print(&store, s.run_id, code, global, "resume").await;
    Ok(code)
}

/// `keyfleet retry [RUN] [--code CODE ...]`.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The run; the newest when omitted.
    run: Option<i64>,
    /// Only pairs that failed with this code (repeatable); every failed pair when omitted.
    #[arg(long = "code", value_name = "CODE")]
    codes: Vec<String>,
    #[command(flatten)]
    exec: ExecFlags,
}

/// Requeues failed pairs as fresh jobs and executes them.
pub async fn retry(args: RetryArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
    let store = open_store(&global.db).await?;
    let run_id = store.resolve_run(args.run).await?;
    let mut requeue = store.begin_requeue(run_id, &args.codes).await?;
    for job in plan::chunk_requeued(requeue.pairs()) {
        requeue
            .add(&job.region, job.force_stop, job.instance_ids, job.key_ids)
            .await?;
    }
    let requeued = requeue.commit().await?;
    let (binds, held) = store.requeue_rotation(run_id, &args.codes).await?;
    if binds > 0 || held > 0 {
        crate::note!(
            "run {run_id}: {binds} new keys to bind again, {held} unbinds held until they are confirmed"
        );
    }
    let requeued = requeued + binds as i64 + held as i64;
    if requeued == 0 {
        crate::note!(
            "run {run_id} has no failed pairs{} to retry",
            if args.codes.is_empty() {
                ""
            } else {
                " with those codes"
            }
        );
        super::verdict::print(&store, run_id, exit::OK, global, "resume").await;
        return Ok(exit::OK);
    }
    crate::note!("run {run_id}: {requeued} failed pairs requeued");
    let code = execute_with_client(&store, run_id, &args.exec, global).await?;
    super::verdict::print(&store, run_id, code, global, "resume").await;
    Ok(code)
}

/// `keyfleet resume [RUN]`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The run to resume; the newest when omitted.
    run: Option<i64>,
    #[command(flatten)]
    exec: ExecFlags,
}

pub async fn resume(args: ResumeArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
    let store = open_store(&global.db).await?;
    let run_id = store.resolve_run(args.run).await?;
    let info = store.run_info(run_id).await?;
    if info.state == keyfleet::store::RunState::Finished {
        crate::note!(
            "run {run_id} has already finished; `keyfleet retry {run_id}` sends its failed pairs again"
        );
    }
    match plan::check_input(&store, run_id).await? {
        InputCheck::Unchanged | InputCheck::Stdin => {}
        InputCheck::Changed { path, .. } => eprintln!(
            "warning: {} has changed since run {run_id} was planned; resuming the stored plan only \
             (the new file, planned with `keyfleet run` or `keyfleet plan`, becomes a new run)",
            path.display()
        ),
        InputCheck::Missing { path, .. } => {
            crate::note!("note: {} is gone; resuming the stored plan", path.display())
        }
    }
    let code = execute_with_client(&store, run_id, &args.exec, global).await?;
    super::verdict::print(&store, run_id, code, global, "resume").await;
    Ok(code)
}

/// The real API client, from the global flags and the execution's timeouts.
pub fn build_client(flags: &SendFlags, global: &GlobalArgs) -> anyhow::Result<Arc<CvmClient>> {
    super::common::client(global, flags.connect_timeout, flags.timeout).map(Arc::new)
}

/// Builds the real API client from the global flags, executes the run, and (unless
/// `--no-verify`) verifies it.
pub async fn execute_with_client(
    store: &Store,
    run_id: i64,
    flags: &ExecFlags,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let client = build_client(&flags.send, global)?;
    execute(store, run_id, client, flags, global).await
}

/// What [`execute_quietly`] ended with.
pub enum Executed {
    /// The execution ended (finished or stopped); nothing printed yet.
    Summary(Box<Summary>),
    /// It could not go on (storage): the message is printed; exit with this code.
    Exit(u8),
}

/// Executes with progress and Ctrl-C handling, printing nothing but errors.
pub async fn execute_quietly(
    store: &Store,
    run_id: i64,
    api: Arc<CvmClient>,
    config: ExecConfig,
    flags: &ExecFlags,
    global: &GlobalArgs,
) -> anyhow::Result<Executed> {
    let counters = Arc::new(Counters::default());
    let stop = StopSignal::default();
    let interrupts = tokio::spawn(handle_interrupts(stop.clone(), flags.send.timeout));
    let display = Display::start(flags.queue.progress, counters.clone());
    let result = executor::execute(store, run_id, api, &config, counters, stop).await;
    display.finish().await;
    interrupts.abort();
    match result {
        Ok(summary) => Ok(Executed::Summary(Box::new(summary))),
        // Another live process owns the run: nothing was done here.
        Err(error @ executor::ExecError::Lease(_)) => Err(error.into()),
        Err(error) => {
            eprintln!(
                "error: run {run_id} stopped: {}",
                escape(&error.to_string())
            );
            eprintln!(
                "  the database holds every recorded outcome; fix the cause, then: keyfleet{} resume {run_id}",
                db_flag(global)
            );
            Ok(Executed::Exit(exit::STOPPED))
        }
    }
}

/// Executes with the given API, showing progress, prints the summary, and verifies
/// a finished run unless `--no-verify`. Pairs whose accepted operation the cloud
/// reported FAILED are a transient outcome: they are sent again (up to
/// `--max-attempts` operations each) and verified again.
pub async fn execute(
    store: &Store,
    run_id: i64,
    api: Arc<CvmClient>,
    flags: &ExecFlags,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    loop {
        let summary = match execute_quietly(
            store,
            run_id,
            api.clone(),
            flags.exec_config(),
            flags,
            global,
        )
        .await?
        {
            Executed::Summary(summary) => summary,
            Executed::Exit(code) => return Ok(code),
        };
        print_summary(&summary, global);
        super::rates::print_for_execution(store, &summary).await;
        let code = exit_code(&summary);
        // Verify what this execution did; a run with nothing left to send (a resume of a
        // finished run) is verified only on request (`keyfleet verify`).
        if summary.stopped.is_some() || flags.verify.no_verify || summary.requests == 0 {
            return Ok(code);
        }
        let verification = match super::verify::verify_run(
            store,
            run_id,
            api.clone(),
            flags.verify.verify_wait,
            flags,
            global,
        )
        .await?
        {
            Ok(v) => v,
            Err(code) => return Ok(code),
        };
        super::verify::print_verification(&verification, global, true);
        if verification.complete() {
            let mut resend = store
                .begin_resend_failed_operations(run_id, i64::from(flags.send.max_attempts))
                .await?;
            for job in plan::chunk_requeued(resend.pairs()) {
                resend
                    .add(&job.region, job.force_stop, job.instance_ids, job.key_ids)
                    .await?;
            }
            let resent = resend.commit().await?;
            if resent > 0 {
                crate::note!(
                    "\n{resent} pairs whose operation the cloud reported FAILED are sent again"
                );
                continue;
            }
        }
        return Ok(if code == exit::OK && !verification.all_gone() {
            exit::FAILED
        } else {
            code
        });
    }
}

/// First Ctrl-C, SIGTERM or SIGHUP: stop dispatching and let requests in flight finish.
/// A second: exit at once (the store stays consistent; open attempts are resent on resume).
async fn handle_interrupts(stop: StopSignal, timeout: Duration) {
    let mut stops = super::signals::Stops::listen();
    let Some(signal) = stops.next().await else {
        return;
    };
    stop.stop();
    crate::note!(
        "\ninterrupt ({signal}): no new requests; waiting up to {} s for those in flight (Ctrl-C again to exit at once)",
        timeout.as_secs()
    );
    if stops.next().await.is_some() {
        crate::note!(
            "second interrupt: exiting now; `keyfleet resume` sends the unfinished requests again"
        );
        std::process::exit(exit::INTERRUPTED.into());
    }
}

/// 0: every valid pair succeeded, none rejected; 1: finished with failed or rejected
/// pairs; 4: stopped early, resumable.
pub fn exit_code(summary: &Summary) -> u8 {
    if summary.stopped.is_some() {
        exit::STOPPED
    } else if summary.pairs.failed > 0
        || summary.pairs.rejected > 0
        || summary.pairs.pending > 0
        || summary.pairs.skipped > 0
        || summary.binds.failed > 0
    {
        exit::FAILED
    } else {
        exit::OK
    }
}

pub fn db_flag(global: &GlobalArgs) -> String {
    if global.db == Path::new(keyfleet::store::DEFAULT_DB) {
        String::new()
    } else {
        format!(" --db {}", global.db.display())
    }
}

pub fn print_summary(summary: &Summary, global: &GlobalArgs) {
    let run = summary.run_id;
    let p = &summary.pairs;
    let elapsed = summary.elapsed.as_secs_f64();
    match &summary.stopped {
        None => crate::note!("\nrun {run} finished in {elapsed:.1} s"),
        Some(reason) => crate::note!(
            "\nrun {run} stopped after {elapsed:.1} s: {}",
            escape(&reason.to_string())
        ),
    }
    crate::note!(
        "  pairs:    {} succeeded, {} failed, {} skipped, {} rejected, {} duplicate, {} pending",
        p.succeeded,
        p.failed,
        p.skipped,
        p.rejected,
        p.duplicate,
        p.pending
    );
    let b = &summary.binds;
    if b.valid() > 0 {
        crate::note!(
            "  new keys: {} bound (accepted), {} failed, {} pending (rotation: each instance's old keys \
             are unbound only once its new keys are confirmed)",
            b.succeeded,
            b.failed,
            b.pending
        );
    }
    if !summary.failures_by_code.is_empty() {
        let codes: Vec<String> = summary
            .failures_by_code
            .iter()
            .map(|(code, n)| format!("{} {n}", escape(code)))
            .collect();
        crate::note!("  failures: {}", codes.join(", "));
    }
    crate::note!(
        "  requests: {} ({:.2}/s), retries {}, throttled {}, isolation splits {}",
        summary.requests,
        summary.achieved_rate(),
        summary.retries,
        summary.throttled,
        summary.splits
    );
    let db = db_flag(global);
    if summary.stopped.is_some() {
        crate::note!(
            "  nothing was marked failed by the stop; fix the cause, then: keyfleet{db} resume {run}"
        );
    }
    crate::note!("  details:  keyfleet{db} report {run} --format csv --output report-{run}.csv");
}
