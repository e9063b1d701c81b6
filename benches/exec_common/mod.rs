//! Shared setup of the executor benchmarks: a simulated fleet whose every
//! instance holds its own key (so the planner cannot merge pairs into one job),
//! its input CSV, the in-process simulator, a planned temp database and a client.
//!
//! Benchmarks run only under `cargo bench` (which passes `--bench`); run as a test
//! (`cargo test --benches`) they return at once, so they never slow `cargo test`.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use keyfleet::api::{ClientConfig, CvmClient};
use keyfleet::credentials::Credentials;
use keyfleet::plan::{self, PlanOptions};
use keyfleet::secret::Secret;
use keyfleet::sim::{self, Fleet, Instance, SimConfig, SimHandle};
use keyfleet::store::Store;

/// Every benchmark's instances live here.
pub const REGION: &str = "ap-guangzhou";

/// Command-line switches of a benchmark binary.
#[derive(Debug, Clone)]
pub struct Opts {
    /// A short smoke version (`--quick` or `KEYFLEET_BENCH_QUICK=1`).
    pub quick: bool,
}

/// The switches, or `None` when not run by `cargo bench` (then the bench does nothing).
pub fn opts(name: &str) -> Option<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let under_bench = args.iter().any(|a| a == "--bench");
    if !under_bench {
        eprintln!("{name}: a benchmark; run it with `cargo bench --bench {name}`");
        return None;
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("KEYFLEET_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    Some(Opts { quick })
}

/// A number from the environment, or `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The `n`-th instance id: `ins-` and eight hex digits, offset so the ids never collide with keys.
pub fn instance_id(n: usize) -> String {
    format!("ins-{n:08x}")
}

/// The `n`-th key id.
pub fn key_id(n: usize) -> String {
    format!("skey-{n:08x}")
}

/// `n` STOPPED Linux instances, instance `i` holding key `i` only.
pub fn one_key_each(n: usize) -> Fleet {
    Fleet {
        keys: Vec::new(),
        instances: (0..n)
            .map(|i| Instance::new(instance_id(i), REGION).keys([key_id(i)]))
            .collect(),
        ..Fleet::default()
    }
}

/// Writes the input asking to unbind every binding of `fleet`.
pub fn write_input(path: &Path, fleet: &Fleet) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "instance_id,key_id,region")?;
    for instance in fleet.instances() {
        for key in &instance.key_ids {
            writeln!(out, "{},{key},{}", instance.instance_id, instance.region)?;
        }
    }
    out.flush()
}

/// Writes an input of `n` instances all losing the same key `skey-00000000`
/// (one million instances gives 10,000 jobs of 100 instances x 1 key).
pub fn write_shared_key_input(path: &Path, n: usize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "instance_id,key_id,region")?;
    let key = key_id(0);
    for i in 0..n {
        writeln!(out, "{},{key},{REGION}", instance_id(i))?;
    }
    out.flush()
}

/// The simulator with the test credentials, no faults, and the given limit and delays.
pub fn sim_config(rate: u32, jitter: Duration, latency: (Duration, Duration)) -> SimConfig {
    SimConfig {
        rate,
        jitter,
        latency,
        seed: 2026,
        ..SimConfig::default()
    }
}

/// Starts the simulator on 127.0.0.1, port chosen by the system.
pub async fn start_sim(config: SimConfig, fleet: Fleet) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    sim::start(listener, config, fleet)
        .await
        .expect("start the simulator")
}

/// A client for the simulator, with the simulator's test credentials.
pub fn client(endpoint: String) -> CvmClient {
    CvmClient::new(ClientConfig::new(
        endpoint,
        Credentials {
            secret_id: sim::TEST_SECRET_ID.to_string(),
            secret_key: Secret::new(sim::TEST_SECRET_KEY),
            token: None,
            source: "benchmark".into(),
        },
    ))
    .expect("build the client")
}

/// Opens `db` and plans `input` into it; returns the run id and its job count.
pub async fn plan(db: &Path, input: &Path) -> (Store, i64, i64) {
    let store = Store::open(db).await.expect("open the database");
    let outcome = plan::plan_input(&store, input, &PlanOptions::default())
        .await
        .expect("plan the input");
    let run_id = outcome.summary.run_id;
    let jobs = outcome.summary.jobs;
    (store, run_id, jobs)
}

/// Prints what ran where, for the record.
pub fn header(name: &str, opts: &Opts) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# {name}{} on {cores} cores, keyfleet {}",
        if opts.quick { " (quick)" } else { "" },
        env!("CARGO_PKG_VERSION")
    );
}

/// `n` STOPPED Linux instances all holding key `skey-00000000`: the fleet of
/// [`write_shared_key_input`].
pub fn one_key_shared(n: usize) -> Fleet {
    let key = key_id(0);
    Fleet {
        keys: Vec::new(),
        instances: (0..n)
            .map(|i| Instance::new(instance_id(i), REGION).keys([key.clone()]))
            .collect(),
        ..Fleet::default()
    }
}

/// Executes run `run_id` to its end with fresh counters and no stop signal, as every
/// benchmark does; panics on a storage error (a benchmark has nothing to recover).
pub async fn execute<A: keyfleet::executor::Api>(
    store: &Store,
    run_id: i64,
    api: std::sync::Arc<A>,
    config: &keyfleet::executor::ExecConfig,
) -> keyfleet::executor::Summary {
    keyfleet::executor::execute(
        store,
        run_id,
        api,
        config,
        std::sync::Arc::new(keyfleet::executor::Counters::default()),
        keyfleet::executor::StopSignal::default(),
    )
    .await
    .expect("execute")
}

/// A journal entry the simulator admitted: anything but a throttle (what "goodput"
/// and the phases' rates count).
pub fn admitted(entry: &sim::JournalEntry) -> bool {
    !entry
        .code
        .as_deref()
        .is_some_and(keyfleet::taxonomy::is_throttle)
}
