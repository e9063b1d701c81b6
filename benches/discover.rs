//! `discover` over a large fleet: how many DescribeInstances requests it sends and at
//! what rate, against the simulator limiting DescribeInstances to its documented 40/s
//! (the simulator's key-pair rate 10, reads scaled to their documented limits).
//!
//! `cargo bench --bench discover` (KEYFLEET_BENCH_INSTANCES to change the fleet; `--quick`
//! for 10,000). Target: ceil(N / 100) requests, no more, at >= 95% of 40/s.

mod exec_common;

use std::sync::Arc;
use std::time::Duration;

use exec_common as common;
use keyfleet::discover::{DiscoverOptions, discover};
use keyfleet::executor::LocalLimiter;
use keyfleet::sim::{Fleet, Instance};

#[tokio::main]
async fn main() {
    let Some(opts) = common::opts("discover") else {
        return;
    };
    common::header("discover", &opts);
    let n: usize = common::env_number(
        "KEYFLEET_BENCH_INSTANCES",
        if opts.quick { 10_000 } else { 100_000 },
    );
    let leaked = common::key_id(1);
    // Two regions; every tenth instance holds the leaked key beside its own.
    let fleet = Fleet {
        keys: Vec::new(),
        instances: (0..n)
            .map(|i| {
                let region = if i % 2 == 0 {
                    "ap-guangzhou"
                } else {
                    "ap-shanghai"
                };
                let mut keys = vec![common::key_id(1000 + i % 50)];
                if i % 10 == 0 {
                    keys.push(leaked.clone());
                }
                Instance::new(common::instance_id(i), region).keys(keys)
            })
            .collect(),
        ..Fleet::default()
    };
    let sim = common::start_sim(
        common::sim_config(
            10,
            Duration::from_millis(5),
            (Duration::from_millis(20), Duration::from_millis(60)),
        ),
        fleet,
    )
    .await;
    let client = Arc::new(common::client(sim.endpoint()));
    let options = DiscoverOptions {
        keys: vec![leaked],
        regions: None,
        home_region: "ap-guangzhou".into(),
        max_attempts: 10,
        retry_base: Duration::from_secs(1),
        retry_cap: Duration::from_secs(60),
        throttle_delay: Duration::from_millis(500),
    };
    let started = std::time::Instant::now();
    let found = discover(client, Arc::new(LocalLimiter::new(10.0)), &options)
        .await
        .expect("discover");
    let elapsed = started.elapsed().as_secs_f64();
    let journal = sim.journal();
    let pages: Vec<i64> = journal
        .iter()
        .filter(|e| e.action == "DescribeInstances")
        .map(|e| e.at_ms)
        .collect();
    let throttled = journal
        .iter()
        .filter(|e| e.code.as_deref() == Some("RequestLimitExceeded"))
        .count();
    let span_s = (pages.iter().max().unwrap() - pages.iter().min().unwrap()) as f64 / 1000.0;
    let rate = (pages.len() - 1) as f64 / span_s;
    let stats = sim.stats();
    println!(
        "instances={n} matches={} describe_instances_requests={} expected={} throttled={throttled} \
         rate={rate:.2}/s of 40 ({:.1}%) max_in_any_second_describe={} elapsed_s={elapsed:.1}",
        found.found.len(),
        pages.len(),
        n.div_ceil(100),
        rate / 40.0 * 100.0,
        stats
            .max_in_any_second_by_action
            .get("DescribeInstances")
            .copied()
            .unwrap_or(0),
    );
    assert_eq!(found.found.len(), n.div_ceil(10));
}
