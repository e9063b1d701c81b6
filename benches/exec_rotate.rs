//! Rotation throughput (issue 11): a fleet of N instances, each holding one old key
//! and rotated to one new key, against the simulator limited to 10 requests in any
//! sliding second per (Host, action, SecretId), with jitter, latency and
//! asynchronous operations. keyfleet at `--rate 10` paces Associate and Disassociate
//! on their own limiters, so the unbinding phase (released instance by instance as
//! confirmations come) overlaps the binding phase: the whole rotation should take
//! about as long as its larger phase alone.
//!
//! Keys are shared by groups of ten instances (N/10 old keys, N/10 new keys), so
//! the plan has N/10 Associate jobs and the confirmations release N/10 Disassociate
//! jobs: equal phases of N/10 requests each.
//!
//! Measured from the simulator's journal: per action, admitted requests, the span
//! from its first to its last admitted request and the rate over that span, the
//! largest sliding second and throttles; the two spans' overlap; the total time
//! against the larger phase alone (its requests at 10/s). Then the fleet is checked:
//! every instance holds exactly its new key.
//!
//! `cargo bench --bench exec_rotate [-- --quick]`: N = 10,000 (about 2 minutes);
//! quick: N = 2,000. `KEYFLEET_BENCH_INSTANCES` sets N. Target: each phase >= 95%
//! of its limit (9.5/s) while both run, total <= 1.1 x the larger phase alone.

mod exec_common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exec_common as common;
use keyfleet::executor::ExecConfig;
use keyfleet::sim::{Fleet, Instance, JournalEntry};

const GROUP: usize = 10;
const LIMIT: f64 = 10.0;
const JITTER: Duration = Duration::from_millis(20);
const LATENCY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_millis(300));
const OPERATION_TIME: Duration = Duration::from_millis(500);
const ASSOCIATE: &str = "AssociateInstancesKeyPairs";
const DISASSOCIATE: &str = "DisassociateInstancesKeyPairs";

fn old_key(i: usize) -> String {
    common::key_id(i / GROUP)
}

fn new_key(i: usize) -> String {
    common::key_id(0x0100_0000 + i / GROUP)
}

fn main() {
    let Some(opts) = common::opts("exec_rotate") else {
        return;
    };
    common::header("exec_rotate", &opts);
    let n = common::env_number(
        "KEYFLEET_BENCH_INSTANCES",
        if opts.quick { 2_000 } else { 10_000 },
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(rotate(n));
}

/// One action's requests as the simulator admitted them.
struct Phase {
    admitted: usize,
    throttled: usize,
    first_ms: i64,
    last_ms: i64,
    max_window: usize,
}

impl Phase {
    fn of(journal: &[JournalEntry], action: &str) -> Phase {
        let mut times: Vec<i64> = Vec::new();
        let mut throttled = 0;
        for entry in journal.iter().filter(|e| e.action == action) {
            if common::admitted(entry) {
                times.push(entry.at_ms);
            } else {
                throttled += 1;
            }
        }
        times.sort_unstable();
        let mut max_window = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= 1000 {
                start += 1;
            }
            max_window = max_window.max(end - start + 1);
        }
        Phase {
            admitted: times.len(),
            throttled,
            first_ms: times.first().copied().unwrap_or(0),
            last_ms: times.last().copied().unwrap_or(0),
            max_window,
        }
    }

    fn span_s(&self) -> f64 {
        (self.last_ms - self.first_ms) as f64 / 1000.0
    }

    /// Requests per second over the phase's own span (n - 1 intervals).
    fn rate(&self) -> f64 {
        if self.admitted < 2 {
            return 0.0;
        }
        (self.admitted - 1) as f64 / self.span_s()
    }
}

async fn rotate(n: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut fleet = Fleet::new();
    for g in 0..n.div_ceil(GROUP) {
        fleet.keys.push(new_key(g * GROUP));
    }
    for i in 0..n {
        fleet =
            fleet.with(Instance::new(common::instance_id(i), common::REGION).keys([old_key(i)]));
    }
    let input = dir.path().join("rotate.csv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&input).expect("input"));
        writeln!(out, "instance_id,key_id,region,new_key_id").expect("write");
        for i in 0..n {
            writeln!(
                out,
                "{},{},{},{}",
                common::instance_id(i),
                old_key(i),
                common::REGION,
                new_key(i)
            )
            .expect("write");
        }
        out.flush().expect("write");
    }
    let (store, run_id, jobs) = common::plan(&dir.path().join("keyfleet.db"), &input).await;
    let mut config = common::sim_config(LIMIT as u32, JITTER, LATENCY);
    config.operation_time = OPERATION_TIME;
    let sim = common::start_sim(config, fleet).await;
    let api = Arc::new(common::client(sim.endpoint()));
    let exec = ExecConfig {
        rate: LIMIT,
        concurrency: 20,
        ..ExecConfig::default()
    };
    let started = Instant::now();
    let summary = common::execute(&store, run_id, api, &exec).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(summary.stopped.is_none(), "stopped: {:?}", summary.stopped);

    // The last operations accepted are still running: let them complete.
    tokio::time::sleep(OPERATION_TIME * 2).await;
    let journal = sim.journal();
    let bind = Phase::of(&journal, ASSOCIATE);
    let unbind = Phase::of(&journal, DISASSOCIATE);
    let reads = Phase::of(&journal, "DescribeInstances");
    let both_from = bind.first_ms.max(unbind.first_ms);
    let both_to = bind.last_ms.min(unbind.last_ms);
    let overlap_s = (both_to - both_from).max(0) as f64 / 1000.0;
    let rate_within = |action: &str| {
        let admitted = journal
            .iter()
            .filter(|e| {
                e.action == action
                    && common::admitted(e)
                    && e.at_ms >= both_from
                    && e.at_ms <= both_to
            })
            .count();
        if overlap_s > 0.0 {
            (admitted.saturating_sub(1)) as f64 / overlap_s
        } else {
            0.0
        }
    };
    let larger_alone_s = bind.admitted.max(unbind.admitted) as f64 / LIMIT;
    let first_ms = journal.iter().map(|e| e.at_ms).min().unwrap_or(0);
    let last_ms = journal.iter().map(|e| e.at_ms).max().unwrap_or(0);
    let wall_s = (last_ms - first_ms) as f64 / 1000.0;

    // The fleet as asked: every instance holds its new key only.
    let mut wrong = 0;
    let expected: BTreeMap<String, String> = (0..n)
        .map(|i| (common::instance_id(i), new_key(i)))
        .collect();
    for instance in sim.fleet().instances() {
        if instance.key_ids != [expected[&instance.instance_id].clone()] {
            wrong += 1;
        }
    }

    println!("instances {n}, plan: {jobs} jobs");
    for (name, phase) in [
        ("associate", &bind),
        ("disassociate", &unbind),
        ("describe", &reads),
    ] {
        println!(
            "  {name:<13} {:>6} admitted, {:>3} throttled, span {:>7.1} s, {:>6.2}/s, largest second {}",
            phase.admitted,
            phase.throttled,
            phase.span_s(),
            phase.rate(),
            phase.max_window
        );
    }
    let (bind_both, unbind_both) = (rate_within(ASSOCIATE), rate_within(DISASSOCIATE));
    println!(
        "  both phases at once for {overlap_s:.1} s: associate {bind_both:.2}/s, disassociate {unbind_both:.2}/s"
    );
    println!(
        "  rotation {wall_s:.1} s first to last request ({elapsed:.1} s with setup and the last reply); \
         larger phase alone at 10/s: {larger_alone_s:.1} s; ratio {:.3}",
        wall_s / larger_alone_s
    );
    println!("  instances not exactly rotated: {wrong}");
    let met = bind_both >= 9.5
        && unbind_both >= 9.5
        && wall_s <= 1.1 * larger_alone_s
        && bind.throttled + unbind.throttled == 0
        && wrong == 0;
    println!(
        "  target (each >= 9.5/s together, total <= 1.1 x larger phase, no throttle, fleet exact): {}",
        if met { "MET" } else { "MISSED" }
    );
    store.close().await;
}
