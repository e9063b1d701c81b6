//! `keyfleet demo`: the whole job on embedded defaults, with no setup.
//!
//! Generates a fleet and a matching rotation input, starts the simulator
//! in-process on 127.0.0.1 with transient faults and the API's 10/s limit, plans
//! and executes the input with progress bars, writes the report, and finally
//! audits the simulator's fleet against what the run reports.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyfleet::api::{ClientConfig, CvmClient};
use keyfleet::credentials::Credentials;
use keyfleet::plan::{self, PlanOptions};
use keyfleet::secret::Secret;
use keyfleet::sim::{self, Faults, Fleet, Mix, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    #[command(flatten)]
    exec: ExecFlags,
}

/// Rows that point at instances which do not exist, and malformed rows.
const UNKNOWN_INSTANCES: usize = 6;

/// The demo fleet: mostly STOPPED Linux, with a few of every kind that cannot be
/// unbound, some settling and some busy, in two regions.
fn demo_mix() -> Mix {
    Mix {
        windows: 0.01,
        running: 0.01,
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

/// A key rotation: remove one or two of each instance's keys; plus a few unknown
/// instances, two malformed rows and a duplicate, as real exports have.
fn rotation_input(fleet: &Fleet, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut csv = String::from("instance_id,key_id,region,owner\n");
    for instance in fleet.instances() {
        let take = rng.random_range(1..=2).min(instance.key_ids.len());
        for key in instance.key_ids.iter().take(take) {
            csv.push_str(&format!(
                "{},{key},{},team-{}\n",
                instance.instance_id,
                instance.region,
                rng.random_range(1..9)
            ));
        }
    }
    let some_key = fleet
        .instances()
        .first()
        .and_then(|i| i.key_ids.first())
        .cloned()
        .unwrap_or_default();
    for n in 0..UNKNOWN_INSTANCES {
        csv.push_str(&format!(
            "ins-zz{n:06},{some_key},ap-guangzhou,decommissioned\n"
        ));
    }
    csv.push_str(&format!("ins-TYPO1234,{some_key},ap-guangzhou,typo\n"));
    csv.push_str(&format!("ins-00000001,{some_key},,no region\n"));
    if let Some(first) = fleet.instances().first() {
        let key = first.key_ids.first().cloned().unwrap_or_default();
        csv.push_str(&format!(
            "{},{key},{},pasted twice\n",
            first.instance_id, first.region
        ));
    }
    csv
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<u8> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            std::env::temp_dir().join(format!("keyfleet-demo-{}", uuid::Uuid::new_v4().simple()))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let input = dir.join("rotation.csv");
    let db = dir.join("keyfleet.db");
    let report = dir.join("report.csv");

    let fleet = Fleet::generate(args.instances, args.seed, &demo_mix());
    let before: BTreeSet<(String, String)> = fleet.bindings();
    std::fs::File::create(&input)
        .and_then(|mut f| f.write_all(rotation_input(&fleet, args.seed).as_bytes()))
        .with_context(|| format!("cannot write {}", input.display()))?;

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
        ..SimConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let simulator = sim::start(listener, config, fleet).await?;
    eprintln!(
        "keyfleet demo: {} instances ({} key bindings) behind a simulated CVM API at {} (10 requests/s, {:.0}% transient faults)",
        args.instances,
        before.len(),
        simulator.endpoint(),
        args.faults * 100.0
    );
    eprintln!("  input:    {}", input.display());

    let store = open_store(&db).await?;
    let outcome = plan::plan_input(&store, &input, &PlanOptions::default()).await?;
    let s = &outcome.summary;
    eprintln!(
        "  plan:     run {}: {} rows -> {} pairs in {} requests (lower bound {}), {} duplicate, {} rejected",
        s.run_id, s.rows, s.pairs, s.jobs, outcome.lower_bound, s.duplicates, s.rejected
    );
    let client = CvmClient::new(ClientConfig {
        endpoint: simulator.endpoint(),
        credentials: Credentials {
            secret_id,
            secret_key,
            token: None,
            source: "demo".into(),
        },
        connect_timeout: args.exec.connect_timeout,
        request_timeout: args.exec.timeout,
        resolve: Vec::new(),
        // The demo's simulator is on 127.0.0.1.
        insecure_http: false,
    })?;
    let demo_global = GlobalArgs {
        db: db.clone(),
        ..global.clone()
    };
    let code = execute(&store, s.run_id, Arc::new(client), &args.exec, &demo_global).await?;

    let rows = super::report::write_csv_file(&store, s.run_id, &report).await?;
    eprintln!(
        "  report:   {} ({rows} rows, one per input row)",
        report.display()
    );
    let stats = simulator.stats();
    let audit = sim::audit::audit(
        &before,
        &simulator.fleet().bindings(),
        &store.pair_outcomes(s.run_id).await?,
        &simulator.journal(),
    );
    eprintln!(
        "  simulator: {} requests admitted, {} throttled, at most {} in any second",
        stats.admitted, stats.throttled, stats.max_in_any_second
    );
    if audit.is_clean() {
        eprintln!(
            "  audit:    clean: {} bindings removed, every one asked for; {} pairs succeeded, each proven by a RequestId the simulator issued; {} failed pairs still bound",
            audit.removed_as_asked, audit.succeeded, audit.failed_still_bound
        );
    } else {
        eprintln!("  audit:    FAILED:");
        for violation in &audit.violations {
            eprintln!("    {violation}");
        }
    }
    store.close().await;
    simulator.shutdown().await;
    // Failed and rejected rows are part of the demo: it succeeds when the run
    // finished and the audit is clean.
    Ok(match (audit.is_clean(), code) {
        (false, _) => exit::FAILED,
        (true, exit::STOPPED) => exit::STOPPED,
        (true, _) => exit::OK,
    })
}
