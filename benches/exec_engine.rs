//! Engine overhead: jobs per second through the durable queue (synchronous=FULL)
//! with keyfleet's limiter off, against a simulator with no limit, no latency and
//! no faults. Every job is one pair (each instance holds its own key), so every
//! job is one request, one attempt row written before it and one outcome after.
//!
//! `cargo bench --bench exec_engine [-- --quick]`; `KEYFLEET_BENCH_JOBS` (default
//! 20000, quick 2000) and `KEYFLEET_BENCH_CONCURRENCY` (default `20,64`).
//! Target (issue 5): at least 1,000 jobs/s on the 2-core benchmark machine.

mod exec_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use exec_common as common;
use keyfleet::executor::ExecConfig;

const TARGET_JOBS_PER_SECOND: f64 = 1000.0;

fn main() {
    let Some(opts) = common::opts("exec_engine") else {
        return;
    };
    let jobs: usize = common::env_number(
        "KEYFLEET_BENCH_JOBS",
        if opts.quick { 2000 } else { 20_000 },
    );
    let concurrencies: Vec<usize> = std::env::var("KEYFLEET_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "20,64".to_string())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    common::header("exec_engine", &opts);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    for concurrency in concurrencies {
        runtime.block_on(engine(jobs, concurrency));
    }
}

async fn engine(jobs: usize, concurrency: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = common::one_key_each(jobs);
    let input = dir.path().join("input.csv");
    common::write_input(&input, &fleet).expect("write the input");
    let plan_started = Instant::now();
    let (store, run_id, planned) = common::plan(&dir.path().join("keyfleet.db"), &input).await;
    let plan_time = plan_started.elapsed();
    assert_eq!(planned as usize, jobs, "one job per pair");

    let simulator = common::start_sim(
        common::sim_config(0, Duration::ZERO, (Duration::ZERO, Duration::ZERO)),
        fleet,
    )
    .await;
    let api = Arc::new(common::client(simulator.endpoint()));
    let config = ExecConfig {
        rate: 0.0,
        concurrency,
        ..ExecConfig::default()
    };
    let summary = common::execute(&store, run_id, api, &config).await;
    let secs = summary.elapsed.as_secs_f64();
    let stats = simulator.stats();
    assert!(summary.stopped.is_none(), "stopped: {:?}", summary.stopped);
    assert_eq!(
        summary.pairs.succeeded as usize, jobs,
        "every pair succeeded"
    );
    let rate = jobs as f64 / secs;
    println!(
        "exec_engine jobs={jobs} concurrency={concurrency} elapsed_s={secs:.2} jobs_per_s={rate:.0} \
         requests={} sim_admitted={} sim_max_in_any_second={} plan_s={:.2} target>={TARGET_JOBS_PER_SECOND:.0} {}",
        summary.requests,
        stats.admitted,
        stats.max_in_any_second,
        plan_time.as_secs_f64(),
        if rate >= TARGET_JOBS_PER_SECOND {
            "MET"
        } else {
            "MISSED"
        }
    );
    store.close().await;
    simulator.shutdown().await;
}
