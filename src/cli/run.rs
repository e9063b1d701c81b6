//! `keyfleet run`, `resume` and `retry`: execute a run's queue with progress,
//! Ctrl-C handling and a closing summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keyfleet::accounts::estate::Estate;
use keyfleet::api::CvmClient;
use keyfleet::credentials;
use keyfleet::display::escape;
use keyfleet::executor::{self, Counters, StopReason, StopSignal, Summary};
use keyfleet::lifecycle::{self, Lifecycle, LifecycleError, Observer, Phase};
use keyfleet::plan::{self, InputCheck};
use keyfleet::store::Store;

pub(crate) use super::common::open_store;
pub(crate) use super::flags::ExecFlags;
use super::flags::{PlanFlags, SendFlags};
use super::progress::{self, Display};
use crate::{GlobalArgs, exit};

/// `keyfleet run INPUT`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// CSV, JSON or JSON Lines file of (instance, key, region) rows; `-` reads stdin.
    input: PathBuf,
    #[command(flatten)]
    plan: PlanFlags,
    #[command(flatten)]
    live: super::live::LiveFlags,
    /// After a verification that found every pair gone, retire the run's keys (the
    /// same checks and deletion as `keyfleet retire`; its refusals are reported and
    /// make the exit 1).
    #[arg(long)]
    retire: bool,
    #[command(flatten)]
    exec: ExecFlags,
}

/// The region for rows that name none: `--region`, else `TENCENTCLOUD_REGION`, else
/// the tccli profile's region; none at all leaves such rows rejected, with a reason.
pub(crate) fn default_region(global: &GlobalArgs) -> anyhow::Result<Option<String>> {
    match credentials::resolve_region(global.region.as_deref(), global.profile.as_deref()) {
        Ok(region) => Ok(Some(region.name)),
        Err(credentials::CredentialsError::NoRegion { .. }) => Ok(None),
        Err(other) => Err(other.into()),
    }
}

/// Plans the input (or finds the run that already planned it) and executes it.
pub(crate) async fn run(args: RunArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
    let store = open_store(&global.db).await?;
    let mut options = args
        .plan
        .options(default_region(global)?, args.live.live()?);
    options.account = global.account.clone();
    if options.live.is_some() && options.keep_one_key {
        anyhow::bail!(
            "--keep-one-key and --running stop-start|force-stop cannot be combined yet: run the \
             --keep-one-key unbinds first"
        );
    }
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
        if let Some(line) = super::live::running_line(outcome.running, options.live.as_ref()) {
            crate::note!("  running: {line}");
        }
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
    if let Some(path) = &args.plan.templates {
        super::incident::plan_templates(&store, s.run_id, path).await?;
    }
    if args.retire && args.exec.verify.no_verify {
        anyhow::bail!("--retire needs the run's verification: drop --no-verify");
    }
    let mut code = execute_with_client(&store, s.run_id, &args.exec, global).await?;
    if args.retire && code != exit::STOPPED && code != exit::INTERRUPTED {
        let retired = super::retire::after_run(&store, s.run_id, &args.exec.send, global).await?;
        if code == exit::OK {
            code = retired;
        }
    }
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
pub(crate) async fn retry(args: RetryArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
    let store = open_store(&global.db).await?;
    let run_id = store.resolve_run(args.run).await?;
    let again = lifecycle::retry(&store, run_id, &args.codes).await?;
    if again.binds > 0 || again.held > 0 {
        crate::note!(
            "run {run_id}: {} new keys to bind again, {} unbinds held until they are confirmed",
            again.binds,
            again.held
        );
    }
    let requeued = again.total();
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

pub(crate) async fn resume(args: ResumeArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
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
pub(crate) fn build_client(
    flags: &SendFlags,
    global: &GlobalArgs,
) -> anyhow::Result<Arc<CvmClient>> {
    super::common::client(global, flags.connect_timeout, flags.timeout).map(Arc::new)
}

/// The clients run `run_id` sends through: its own account's and one per account its
/// rows name (`--accounts`/`--organization`), checked before anything is sent.
pub(crate) async fn build_estate(
    store: &Store,
    run_id: i64,
    flags: &SendFlags,
    global: &GlobalArgs,
) -> anyhow::Result<Arc<Estate>> {
    let named = store.run_accounts(run_id).await?;
    super::common::estate(global, run_id, &named, flags.connect_timeout, flags.timeout)
        .map(Arc::new)
}

/// Builds the real API clients from the global flags, executes the run, and (unless
/// `--no-verify`) verifies it.
pub(crate) async fn execute_with_client(
    store: &Store,
    run_id: i64,
    flags: &ExecFlags,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let estate = build_estate(store, run_id, &flags.send, global).await?;
    execute(store, run_id, estate, flags, global).await
}

/// Draws an execution's progress on stderr and says when FAILED operations are sent
/// again: the lifecycle's [`Observer`].
pub(crate) struct Progress {
    mode: progress::Mode,
    display: tokio::sync::Mutex<Option<Display>>,
}

impl Progress {
    pub(crate) fn new(mode: progress::Mode) -> Progress {
        Progress {
            mode,
            display: tokio::sync::Mutex::new(None),
        }
    }
}

impl Observer for Progress {
    async fn started(&self, _: Phase, counters: Arc<Counters>) {
        *self.display.lock().await = Some(Display::start(self.mode, counters));
    }

    async fn finished(&self, _: Phase) {
        if let Some(display) = self.display.lock().await.take() {
            display.finish().await;
        }
    }

    fn resending(&self, pairs: u64) {
        crate::note!("\n{pairs} pairs whose operation the cloud reported FAILED are sent again");
    }
}

/// Runs `work` on the lifecycle of run `run_id` with progress and Ctrl-C handling.
/// A storage failure is printed here (the run stays resumable) and becomes
/// `Err(exit::STOPPED)`; another live process owning the run is an error.
pub(crate) async fn with_lifecycle<A, T, F>(
    store: &Store,
    run_id: i64,
    api: Arc<A>,
    flags: &ExecFlags,
    global: &GlobalArgs,
    work: F,
) -> anyhow::Result<Result<T, u8>>
where
    A: keyfleet::executor::Api,
    F: AsyncFnOnce(&Lifecycle<'_, A, Progress>) -> Result<T, LifecycleError>,
{
    super::common::check_run_account(store, run_id, global).await?;
    let progress = Progress::new(flags.queue.progress);
    let stop = StopSignal::default();
    let interrupts = tokio::spawn(handle_interrupts(stop.clone(), flags.send.timeout));
    let mut config = flags.exec_config();
    // A run over several accounts: one account's refused credentials stop only it.
    config.isolate_accounts = !store.run_accounts(run_id).await?.is_empty();
    let lifecycle = Lifecycle {
        store,
        api,
        config,
        verify_wait: flags.verify.verify_wait,
        stop,
        observer: &progress,
    };
    let result = work(&lifecycle).await;
    interrupts.abort();
    match result {
        Ok(value) => Ok(Ok(value)),
        // Another live process owns the run: nothing was done here.
        Err(LifecycleError::Exec(error @ executor::ExecError::Lease(_))) => Err(error.into()),
        Err(error) => {
            eprintln!(
                "error: run {run_id} stopped: {}",
                escape(&error.to_string())
            );
            eprintln!(
                "  the database holds every recorded outcome; fix the cause, then: keyfleet{} resume {run_id}",
                db_flag(global)
            );
            Ok(Err(exit::STOPPED))
        }
    }
}

/// Executes with the given API, showing progress, and verifies a finished run unless
/// `--no-verify` (sending again what the cloud reported FAILED); prints one closing
/// summary and returns the exit code.
pub(crate) async fn execute<A: keyfleet::executor::Api>(
    store: &Store,
    run_id: i64,
    api: Arc<A>,
    flags: &ExecFlags,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let verify = !flags.verify.no_verify;
    let outcome = match with_lifecycle(store, run_id, api, flags, global, async |lifecycle| {
        lifecycle.run_to_verified(run_id, verify).await
    })
    .await?
    {
        Ok(outcome) => outcome,
        Err(code) => return Ok(code),
    };
    let power = store.power_counts(run_id).await?;
    if let Some(power) = &power {
        print_left_stopped(power, run_id, global);
    }
    print_summary(&outcome.summary, global);
    print_accounts(store, run_id).await?;
    if let Some(power) = &power {
        print_power(power);
    }
    let templates = store.template_changes(run_id).await?;
    super::incident::print_template_changes(&templates);
    super::rates::print_for_execution(store, &outcome.summary).await;
    let code = match &power {
        Some(power) if !power.left_stopped.is_empty() => exit::LEFT_STOPPED,
        _ => exit_code(&outcome.summary),
    };
    // A template change that failed (or could not finish) leaves the key handed out.
    let code = if code == exit::OK
        && templates.iter().any(|t| {
            matches!(
                t.state,
                keyfleet::states::TemplateState::Failed | keyfleet::states::TemplateState::Pending
            )
        }) {
        exit::FAILED
    } else {
        code
    };
    let Some(verification) = &outcome.verification else {
        return Ok(code);
    };
    super::verify::print_verification(verification, global, true);
    print_account_verdicts(store, run_id).await?;
    Ok(if code == exit::OK && !verification.all_gone() {
        exit::FAILED
    } else {
        code
    })
}

/// A run over several accounts: each account's pairs, one line each.
pub(crate) async fn print_accounts(store: &Store, run_id: i64) -> anyhow::Result<()> {
    if store.run_accounts(run_id).await?.is_empty() {
        return Ok(());
    }
    crate::note!("  by account:");
    for counts in store.account_counts(run_id).await? {
        crate::note!("    {}", super::status::account_line(&counts));
    }
    Ok(())
}

/// A run over several accounts: what verification found in each account.
pub(crate) async fn print_account_verdicts(store: &Store, run_id: i64) -> anyhow::Result<()> {
    if store.run_accounts(run_id).await?.is_empty() {
        return Ok(());
    }
    for (account, verdicts) in store.account_verdicts(run_id).await? {
        let verdicts: Vec<String> = verdicts
            .iter()
            .map(|(verdict, n)| format!("{n} {}", verdict.replace('_', " ")))
            .collect();
        crate::note!(
            "    account {:<20} {}",
            escape(keyfleet::ids::account_shown(account.as_deref())),
            verdicts.join(", ")
        );
    }
    Ok(())
}

/// First Ctrl-C, SIGTERM or SIGHUP: stop dispatching and let requests in flight finish.
/// A second: exit at once (the store stays consistent; open attempts are resent on resume).
async fn handle_interrupts(stop: StopSignal, timeout: Duration) {
    let mut stops = super::signals::Stops::listen();
    let Some(signal) = stops.next().await else {
        return;
    };
    stop.stop();
    eprintln!(
        "\ninterrupt ({signal}): no new requests; waiting up to {} s for those in flight (Ctrl-C again to exit at once)",
        timeout.as_secs()
    );
    if stops.next().await.is_some() {
        eprintln!(
            "second interrupt: exiting now; `keyfleet resume` sends the unfinished requests again"
        );
        std::process::exit(exit::INTERRUPTED.into());
    }
}

/// 0: every valid pair succeeded, none rejected; 1: finished with failed or rejected
/// pairs; 4: stopped early, resumable.
pub(crate) fn exit_code(summary: &Summary) -> u8 {
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

/// Instances a live run left stopped, first and loudly.
pub(crate) fn print_left_stopped(
    power: &keyfleet::store::power::PowerCounts,
    run_id: i64,
    global: &GlobalArgs,
) {
    if power.left_stopped.is_empty() {
        return;
    }
    eprintln!(
        "\nLEFT STOPPED: {} instances of run {run_id} are down and were not started again:",
        power.left_stopped.len()
    );
    for (instance, reason) in &power.left_stopped {
        eprintln!("  {}  {}", escape(instance), escape(reason));
    }
    eprintln!(
        "  start them (StartInstances, or the console), then: keyfleet{} report {run_id}",
        db_flag(global)
    );
}

/// A live run's power line: what is down against the budget, the most ever down,
/// downtime per instance.
pub(crate) fn print_power(power: &keyfleet::store::power::PowerCounts) {
    let count = |state: &str| power.by_state.get(state).copied().unwrap_or(0);
    eprintln!(
        "  power:    down {} now (budget {}), at most {} at once; {} stopped and started, {} not \
         RUNNING before (untouched), {} not stopped, {} left stopped",
        power.down,
        power.budget,
        power.max_down,
        count("up"),
        count("kept"),
        count("not_stopped"),
        power.left_stopped.len()
    );
    if let Some((p50, p95, max)) = power.downtime_s {
        eprintln!("  downtime: p50 {p50:.1} s, p95 {p95:.1} s, max {max:.1} s per instance");
    }
    if let Some(why) = &power.admissions {
        eprintln!("  no further instance is taken down: {}", escape(why));
    }
}

pub(crate) fn db_flag(global: &GlobalArgs) -> String {
    if global.db == Path::new(keyfleet::store::DEFAULT_DB) {
        String::new()
    } else {
        format!(" --db {}", global.db.display())
    }
}

pub(crate) fn print_summary(summary: &Summary, global: &GlobalArgs) {
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
    if let Some(StopReason::Accounts(failures)) = &summary.stopped {
        // Always shown, whatever --quiet: the run is not done.
        for failure in failures {
            eprintln!("INCOMPLETE: {}", escape(&failure.to_string()));
        }
    }
    if summary.stopped.is_some() {
        crate::note!(
            "  nothing was marked failed by the stop; fix the cause, then: keyfleet{db} resume {run}"
        );
    }
    crate::note!("  details:  keyfleet{db} report {run} --format csv --output report-{run}.csv");
}
