//! `keyfleet demo`: a whole leaked-key incident on embedded defaults, with no setup.
//!
//! Generates a fleet in two regions, starts the simulator in-process on 127.0.0.1
//! with transient faults, asynchronous operations (some of which fail after being
//! accepted) and the API's 10/s limit, then runs the runbook: `discover` the leaked
//! key across both regions, `run` the rows it wrote (with progress bars and the
//! closing verification), `verify --requeue` + `resume` until every pair is verified
//! gone, the report, and an audit of the simulator's fleet against what keyfleet says.
//!
//! Launch templates and an Auto Scaling launch configuration hand the key out too: the
//! run changes them through its queue (`--templates`), then the key is retired
//! (`keyfleet retire`: refused, naming what holds it, while instances the run could not
//! change keep it) and the incident report's first screen is shown; the audit checks the
//! templates and the key pair's deletion against the simulator.
//!
//! `--rotate` rehearses a key rotation instead: every holder of the key is rotated to
//! a new one (bound, confirmed, then the old one unbound), with the same faults.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyfleet::api::{ClientConfig, CvmClient};
use keyfleet::credentials::Credentials;
use keyfleet::discover::{self, DiscoverOptions};
use keyfleet::executor::LocalLimiter;
use keyfleet::plan::{self, PlanOptions};
use keyfleet::secret::Secret;
use keyfleet::sim::{self, Faults, Fleet, Mix, SimConfig};

use super::run::{ExecFlags, execute, open_store};
use crate::{GlobalArgs, exit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instances in the generated fleet.
    #[arg(long, default_value_t = 1600)]
    instances: usize,
    /// Seed of the fleet, the input and the simulator's faults.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Where the input, database and report go (default: a new folder under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Chance that a request meets a transient fault (split over the fault kinds).
    #[arg(long, default_value_t = 0.2)]
    faults: f64,
    /// Chance that an accepted operation ends FAILED (what `verify` is there to catch).
    #[arg(long, default_value_t = 0.15)]
    async_fail: f64,
    /// Rounds of `verify --requeue` + `resume` at most.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Rehearse a key rotation: bind a new key to every holder of the old one, confirm
    /// it with DescribeInstances, then unbind the old key, instance by instance.
    #[arg(long)]
    rotate: bool,
    #[command(flatten)]
    exec: ExecFlags,
}

/// The demo fleet: a production fleet, most instances RUNNING over three zones per
/// region, with a few of every kind that cannot be unbound, some settling and some
/// busy, in two regions.
fn demo_mix() -> Mix {
    Mix {
        windows: 0.01,
        running: 0.8,
        zones: vec![3, 4, 6],
        shutdown: 0.005,
        settling: 0.02,
        stop_charging: 0.003,
        banned: 0.002,
        frozen: 0.002,
        busy: 0.01,
        busy_for: Duration::from_secs(4),
        settle_after: Duration::from_secs(3),
        ..Mix::default()
    }
}

/// The simulator's faults, `total` split over the kinds a real fleet throws.
fn demo_faults(total: f64) -> Faults {
    Faults {
        mutex: total * 0.35,
        in_progress: total * 0.3,
        internal: total * 0.15,
        drop_before: total * 0.1,
        drop_after: total * 0.1,
    }
}

/// The key the demo's incident is about: the one most instances hold.
fn leaked_key(fleet: &Fleet) -> Option<String> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for instance in fleet.instances() {
        for key in &instance.key_ids {
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(key, n)| (*n, std::cmp::Reverse(*key)))
        .map(|(key, _)| key.to_string())
}

/// Templates that hand the leaked key out, as a real account has them: a launch
/// template whose default version holds it beside another key, an old version of
/// another template holding it alone (it is kept: a removal never strips a
/// template's only key), and a launch configuration.
fn with_templates(fleet: Fleet, leaked: &str) -> Fleet {
    let other = fleet
        .instances()
        .iter()
        .flat_map(|i| i.key_ids.iter())
        .find(|k| *k != leaked)
        .cloned()
        .unwrap_or_else(|| leaked.to_string());
    fleet
        .with_template(
            sim::LaunchTemplate::new("lt-0000dem0", "web", "ap-guangzhou")
                .version([leaked, other.as_str()]),
        )
        .with_template(
            sim::LaunchTemplate::new("lt-0000dem1", "batch", "ap-shanghai")
                .version([leaked])
                .version([other.as_str()])
                .default_version(2),
        )
        .with_configuration(
            sim::LaunchConfiguration::new("asc-0000dem0", "web-asg", "ap-shanghai")
                .keys([leaked, other.as_str()]),
        )
}

/// The key `--rotate` binds.
const ROTATE_TO: &str = "skey-r0tate0n";

pub(crate) async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<u8> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            std::env::temp_dir().join(format!("keyfleet-demo-{}", uuid::Uuid::new_v4().simple()))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let input = dir.join("leaked.csv");
    let db = dir.join("keyfleet.db");
    let report = dir.join("report.csv");
    let templates_csv = dir.join("templates.csv");
    let incident_md = dir.join("incident.md");

    let mut fleet = Fleet::generate(args.instances, args.seed, &demo_mix());
    let leaked_for_templates = leaked_key(&fleet).context("the generated fleet has no keys")?;
    fleet = with_templates(fleet, &leaked_for_templates);
    let before_fleet = fleet.clone();
    let before: BTreeSet<(String, String)> = fleet.bindings();
    let leaked = leaked_key(&fleet).context("the generated fleet has no keys")?;
    // The key a rotation binds: it exists in the account, bound nowhere yet.
    let new_key = args.rotate.then(|| ROTATE_TO.to_string());
    fleet.keys.extend(new_key.clone());

    let secret_id = format!("AKIDdemo{}", uuid::Uuid::new_v4().simple());
    let secret_key = Secret::new(uuid::Uuid::new_v4().simple().to_string());
    let config = SimConfig {
        secret_id: secret_id.clone(),
        secret_key: secret_key.clone(),
        rate: 10,
        jitter: Duration::from_millis(15),
        latency: (Duration::from_millis(50), Duration::from_millis(200)),
        faults: demo_faults(args.faults),
        seed: args.seed,
        settle_after: Duration::from_secs(3),
        operation_time: Duration::from_millis(400),
        async_fail: args.async_fail,
        power: sim::Power {
            stop_time: Duration::from_millis(500),
            start_time: Duration::from_millis(700),
            ..sim::Power::default()
        },
        ..SimConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let simulator = sim::start(listener, config, fleet).await?;
    if let Some(new) = &new_key {
        eprintln!("keyfleet demo: rotating every holder of {leaked} to {new}.");
    }
    eprintln!(
        "keyfleet demo: key {leaked} has leaked. {} instances ({} key bindings) in two regions behind a simulated CVM API at {} (10 requests/s, {:.0}% transient faults, {:.0}% of accepted operations fail later)",
        args.instances,
        before.len(),
        simulator.endpoint(),
        args.faults * 100.0,
        args.async_fail * 100.0,
    );
    let client = Arc::new(CvmClient::new(ClientConfig {
        endpoint: simulator.endpoint(),
        credentials: Credentials {
            secret_id,
            secret_key,
            token: None,
            source: "demo".into(),
        },
        connect_timeout: args.exec.send.connect_timeout,
        request_timeout: args.exec.send.timeout,
        resolve: Vec::new(),
        // The demo's simulator is on 127.0.0.1.
        insecure_http: false,
    })?);

    eprintln!(
        "\n1. keyfleet discover --key {leaked} --all-regions{} --output {} --templates-output {}",
        new_key
            .as_ref()
            .map(|k| format!(" --rotate-to {k}"))
            .unwrap_or_default(),
        input.display(),
        templates_csv.display()
    );
    let exec = args.exec.exec_config();
    let options = DiscoverOptions::new(vec![leaked.clone()], None, "ap-guangzhou".into(), &exec);
    let limiter = Arc::new(LocalLimiter::new(exec.rate));
    let discovery = discover::discover(client.clone(), limiter, &options).await?;
    let rows = super::discover::render(
        &discovery.found,
        super::discover::OutputFormat::Csv,
        new_key.as_deref(),
    )?;
    super::report::write_private_file(&input, &rows)?;
    super::discover::summarize(
        &discovery,
        std::slice::from_ref(&leaked),
        new_key.as_deref(),
    );
    let walked = discovery.walked_regions();
    let limiter = Arc::new(LocalLimiter::new(exec.rate));
    let scan = keyfleet::incident::find_templates(
        client.clone(),
        limiter,
        &options,
        std::slice::from_ref(&leaked),
        &walked,
    )
    .await;
    super::report::write_private_file(
        &templates_csv,
        &super::incident::render_templates(&scan.holders, false)?,
    )?;
    super::incident::summarize_templates(&scan, std::slice::from_ref(&leaked));

    eprintln!(
        "\n2. keyfleet run {} --templates {} --running stop-start --max-down 5% --max-down-per zone",
        input.display(),
        templates_csv.display()
    );
    let store = open_store(&db).await?;
    // A production fleet runs: each RUNNING instance is stopped, its keys changed and
    // started again, never more than 5% of a zone's RUNNING instances down at once.
    let live = keyfleet::rules::power::Live {
        running: keyfleet::rules::power::Running::StopStart,
        max_down: keyfleet::rules::power::Budget::Percent(5),
        per: Some(keyfleet::rules::power::Per::Zone),
        warmup_ms: 0,
        stop_type: keyfleet::cvm::StopType::Soft,
        canary: 1,
    };
    let options = PlanOptions {
        live: Some(live),
        ..PlanOptions::default()
    };
    let outcome = plan::plan_input(&store, &input, &options).await?;
    let s = &outcome.summary;
    let run_id = s.run_id;
    eprintln!(
        "  plan:     run {run_id}: {} rows -> {} pairs in {} requests (lower bound {}), {} duplicate, {} rejected",
        s.rows, s.pairs, s.jobs, outcome.lower_bound, s.duplicates, s.rejected
    );
    if s.binds > 0 {
        eprintln!(
            "  rotation: {} new keys to bind and confirm first; {} unbinds held until their instance is confirmed",
            s.binds, s.held
        );
    }
    super::incident::plan_templates(&store, run_id, &templates_csv).await?;
    let demo_global = GlobalArgs {
        db: db.clone(),
        ..global.clone()
    };
    let mut code = execute(&store, run_id, client.clone(), &args.exec, &demo_global).await?;
    let mut round = 0;
    while code != exit::STOPPED
        && store.verification_counts(run_id).await?.succeeded_not_gone > 0
        && round < args.rounds
    {
        round += 1;
        eprintln!(
            "\n{}. keyfleet verify {run_id} --requeue && keyfleet resume {run_id}",
            2 + round
        );
        let requeued = keyfleet::lifecycle::requeue_unverified(&store, run_id)
            .await?
            .pairs;
        eprintln!("  {requeued} pairs accepted but not applied are pending again");
        code = execute(&store, run_id, client.clone(), &args.exec, &demo_global).await?;
    }
    let verification = store.verification_counts(run_id).await?;

    eprintln!("\n{}. keyfleet retire --key {leaked}", 3 + round);
    let retire = keyfleet::incident::RetireOptions {
        keys: vec![leaked.clone()],
        dry_run: false,
        ignore_templates: false,
    };
    let record = super::retire::Record {
        store: &store,
        run_id: Some(run_id),
        account: None,
    };
    super::retire::retire_with(
        &record,
        &retire,
        client.clone(),
        &args.exec.send,
        "ap-guangzhou",
        None,
    )
    .await?;

    eprintln!(
        "\n{}. keyfleet report --incident --output {}",
        4 + round,
        incident_md.display()
    );
    let incident = super::incident_report::gather(&store, &[run_id]).await?;
    let beside = super::incident_report::csv_beside(&incident_md);
    super::report::write_private_file(&beside, &super::incident_report::requests_csv(&incident)?)?;
    let markdown =
        super::incident_report::markdown(&incident, beside.file_name().and_then(|n| n.to_str()));
    super::report::write_private_file(&incident_md, markdown.as_bytes())?;
    let first_screen = markdown.split("\n## ").next().unwrap_or("");
    for line in first_screen.lines() {
        eprintln!("  {line}");
    }

    let rows = super::report::write_csv_file(&store, run_id, &report).await?;
    eprintln!(
        "\n  report:   {} ({rows} rows, one per input row)",
        report.display()
    );
    let stats = simulator.stats();
    let after = simulator.fleet().bindings();
    let budget_per_zone = power_budget_per_zone(&before_fleet, &leaked);
    let power = sim::audit::audit_power_of(
        &simulator,
        &before_fleet,
        &sim::audit::PowerRules {
            max_down: usize::MAX,
            max_down_per_zone: Some(budget_per_zone),
            ..sim::audit::PowerRules::default()
        },
    );
    let audit = sim::audit::audit_rotation(
        &before,
        &after,
        &audit_rows(store.pair_outcomes(run_id).await?),
        &audit_rows(store.bind_outcomes(run_id).await?),
        &simulator.journal(),
    );
    eprintln!(
        "  simulator: {} requests admitted, {} throttled, at most {} in any second",
        stats.admitted, stats.throttled, stats.max_in_any_second
    );
    let all_gone = verification.succeeded_not_gone == 0;
    let closing = sim::closing::audit_closing(
        &before_fleet,
        &simulator.fleet(),
        &leaked,
        new_key.as_deref(),
        &simulator.journal(),
    );
    if closing.is_clean() {
        eprintln!(
            "  closing:  clean: {} templates and launch configurations changed as asked, {} kept (the leaked key was their only key), none given two versions; key pair {}",
            closing.changed,
            closing.kept,
            if closing.key_deleted {
                "deleted, by a DeleteKeyPairs that succeeded"
            } else {
                "not deleted (something still holds it: see retire above)"
            }
        );
    } else {
        eprintln!("  closing:  FAILED:");
        for violation in &closing.violations {
            eprintln!("    {violation}");
        }
    }
    if power.violations.is_empty() {
        eprintln!(
            "  power:    clean: {} instances stopped and started, at most {} down at once in any zone \
             (budget {budget_per_zone} per zone), every instance RUNNING before is RUNNING now, none \
             that was stopped was started",
            power.taken_down,
            power.max_down_per_zone.values().max().copied().unwrap_or(0),
        );
    } else {
        eprintln!("  power:    FAILED:");
        for violation in &power.violations {
            eprintln!("    {violation}");
        }
    }
    if audit.is_clean() && audit.accepted_not_applied.is_empty() {
        eprintln!(
            "  audit:    clean: {} bindings removed, every one asked for; {} pairs succeeded, each proven by a RequestId the simulator issued and verified gone by DescribeInstances ({}); {} failed pairs still bound",
            audit.removed_as_asked,
            audit.succeeded,
            if all_gone { "all of them" } else { "NOT all" },
            audit.failed_still_bound
        );
        if let Some(new) = &new_key {
            let holders = |key: &str| after.iter().filter(|(_, k)| k == key).count();
            eprintln!(
                "  rotation: {} instances now hold {new}, each bound and confirmed before {leaked} was unbound; {} kept {leaked} because {new} could not be bound there (skipped, with the reason in the report); none left without a key",
                holders(new),
                holders(&leaked)
            );
        }
    } else {
        eprintln!("  audit:    FAILED:");
        for violation in &audit.violations {
            eprintln!("    {violation}");
        }
        for (instance, key) in &audit.accepted_not_applied {
            eprintln!("    accepted but not applied: {instance} {key}");
        }
    }
    store.close().await;
    simulator.shutdown().await;
    // Failed pairs (Windows, RUNNING, ...) are part of the demo: it succeeds when the
    // run finished, every succeeded pair is verified gone and the audit is clean.
    Ok(
        match (
            audit.is_clean() && all_gone && power.violations.is_empty() && closing.is_clean(),
            code,
        ) {
            (false, _) => exit::FAILED,
            (true, exit::STOPPED) => exit::STOPPED,
            (true, _) => exit::OK,
        },
    )
}

/// The run's reported outcomes as the simulator's audit takes them (its own row type:
/// the oracle imports nothing from the store).
fn audit_rows(outcomes: Vec<keyfleet::store::queue::PairOutcome>) -> Vec<sim::audit::PairOutcome> {
    outcomes
        .into_iter()
        .map(|o| sim::audit::PairOutcome {
            region: o.region,
            instance_id: o.instance_id,
            key_id: o.key_id,
            status: o.status,
            request_id: o.request_id,
            error_code: o.error_code,
        })
        .collect()
}

/// The demo's budget per zone: 5% of the run's instances found RUNNING (those holding
/// the leaked key), at least 1, as `--max-down 5% --max-down-per zone` counts it.
fn power_budget_per_zone(fleet: &Fleet, leaked: &str) -> usize {
    let running = fleet
        .instances()
        .iter()
        .filter(|i| i.state == sim::InstanceState::Running && i.key_ids.iter().any(|k| k == leaked))
        .count();
    keyfleet::rules::power::Budget::Percent(5).of(running)
}
