//! Live fleets (issue 21): a production fleet rolled through a leaked key's removal
//! under a downtime budget, as `keyfleet run --running stop-start --max-down 50
//! --canary 1` does it (`keyfleet::lifecycle::Lifecycle`, the database, the executor),
//! against the simulator: stop 1 s, start 1.5 s, key operations 0.3 s, 10 requests/s
//! per action (DescribeInstances 40/s), 10-50 ms latency, no faults.
//!
//! The fleet is `Mix::live()` without its Windows, SHUTDOWN, banned and frozen
//! instances (80% RUNNING over zones 3, 4 and 6), every instance holding the leaked
//! key; the input asks to unbind it from every instance (the STOPPED ones go through
//! the key steps and are never started).
//!
//! Measured from the outside, on the simulator's own records: `audit_power` (budget
//! use, downtime per instance, the most down at once, violations) over its power
//! timeline, the most requests of each action in any sliding second and the throttles
//! from its stats, and where each instance's cycle spends its time from the journal's
//! and the timeline's timestamps (stop accepted, STOPPED, STOPPED seen by a look,
//! unbind accepted, start accepted, RUNNING, RUNNING seen). Then the keys are audited.
//!
//! `cargo bench --bench exec_live [-- --quick]`: 2,000 instances, budget 50 (about 2
//! minutes); quick: 300 instances, budget 10. `KEYFLEET_BENCH_INSTANCES` and
//! `KEYFLEET_BENCH_BUDGET` set them. Targets: budget use >= 90%, p95 downtime <=
//! stop + key operation + start + 2 s (4.8 s), every action within its limit in every
//! sliding second, no throttle, no violation.

mod exec_common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exec_common as common;
use keyfleet::cvm::{Action, StopType};
use keyfleet::executor::ExecConfig;
use keyfleet::lifecycle::{Lifecycle, Unobserved};
use keyfleet::plan::{self, PlanOptions};
use keyfleet::rules::power::{Budget, Live, Running};
use keyfleet::sim::audit::{self, PairOutcome, PowerRules, audit_power_of};
use keyfleet::sim::{
    Fleet, InstanceState, JournalEntry, Mix, Power, PowerEvent, SimConfig, audit::PowerAudit,
};
use keyfleet::store::Store;

const LEAKED: &str = "skey-1eaked00";
const SEED: u64 = 2026;
const STOP_TIME: Duration = Duration::from_secs(1);
const START_TIME: Duration = Duration::from_millis(1500);
const OPERATION_TIME: Duration = Duration::from_millis(300);
const LATENCY: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(50));
/// Key-pair actions, StopInstances and StartInstances; DescribeInstances gets 4x.
const RATE: u32 = 10;
/// The p95 target's slack over one instance's own stop + key operation + start.
const SLACK: Duration = Duration::from_secs(2);
/// A run that takes longer than this is broken, not slow.
const LIMIT: Duration = Duration::from_secs(1800);

fn main() {
    let Some(opts) = common::opts("exec_live") else {
        return;
    };
    common::header("exec_live", &opts);
    let n = common::env_number(
        "KEYFLEET_BENCH_INSTANCES",
        if opts.quick { 300 } else { 2_000 },
    );
    let budget = common::env_number("KEYFLEET_BENCH_BUDGET", if opts.quick { 10 } else { 50 });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(roll(n, budget));
}

/// `Mix::live()` without the instances whose keys cannot change, each holding LEAKED.
fn live_fleet(n: usize) -> Fleet {
    let mix = Mix {
        windows: 0.0,
        shutdown: 0.0,
        banned: 0.0,
        frozen: 0.0,
        ..Mix::live()
    };
    let mut fleet = Fleet::generate(n, SEED, &mix);
    for instance in &mut fleet.instances {
        instance.key_ids.push(LEAKED.to_string());
    }
    fleet
}

async fn roll(n: usize, budget: u32) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = live_fleet(n);
    let before = fleet.clone();
    let running = fleet
        .instances()
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .count();
    let input = dir.path().join("leaked.csv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&input).expect("input"));
        writeln!(out, "instance_id,key_id,region").expect("write");
        for instance in fleet.instances() {
            writeln!(out, "{},{LEAKED},{}", instance.instance_id, instance.region).expect("write");
        }
        out.flush().expect("write");
    }
    let store = Store::open(&dir.path().join("keyfleet.db"))
        .await
        .expect("open the database");
    let options = PlanOptions {
        live: Some(Live {
            running: Running::StopStart,
            max_down: Budget::Count(budget),
            per: None,
            warmup_ms: 0,
            stop_type: StopType::Soft,
            canary: 1,
        }),
        ..PlanOptions::default()
    };
    let planned = plan::plan_input(&store, &input, &options)
        .await
        .expect("plan the input");
    let run_id = planned.summary.run_id;

    let config = SimConfig {
        latency: LATENCY,
        operation_time: OPERATION_TIME,
        settle_after: Duration::from_secs(3600),
        power: Power {
            stop_time: STOP_TIME,
            start_time: START_TIME,
            ..Power::default()
        },
        ..common::sim_config(RATE, Duration::ZERO, LATENCY)
    };
    let sim = common::start_sim(config, fleet).await;
    let api = Arc::new(common::client(sim.endpoint()));
    let lifecycle = Lifecycle {
        store: &store,
        api,
        config: ExecConfig {
            rate: f64::from(RATE),
            ..ExecConfig::default()
        },
        verify_wait: Duration::from_secs(60),
        stop: keyfleet::executor::StopSignal::default(),
        observer: &Unobserved,
    };
    let started = Instant::now();
    let outcome = tokio::time::timeout(LIMIT, lifecycle.run_to_verified(run_id, true))
        .await
        .expect("the run ended in time")
        .expect("the run");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        outcome.summary.stopped.is_none(),
        "stopped: {:?}",
        outcome.summary.stopped
    );

    let rules = PowerRules {
        max_down: budget as usize,
        ..PowerRules::default()
    };
    let power = audit_power_of(&sim, &before, &rules);
    let stats = sim.stats();
    let journal = sim.journal();
    let timeline = sim.power_timeline();
    let keys = audit_keys(&store, run_id, &before, &sim, &journal).await;

    let ms = |q: f64| power.downtime_quantile(q).unwrap_or(0);
    let use_ = power.budget_use(budget as usize).unwrap_or(0.0);
    let window_s = power
        .window_ms
        .map_or(0.0, |(first, last)| (last - first) as f64 / 1000.0);
    let p95_target = (STOP_TIME + OPERATION_TIME + START_TIME + SLACK).as_millis() as i64;
    println!(
        "instances {n} ({running} RUNNING, {} taken down), budget {budget}, plan: {} jobs",
        power.taken_down, planned.summary.jobs
    );
    println!(
        "  elapsed {elapsed:.1} s (run and verification); first stop to last RUNNING {window_s:.1} s"
    );
    println!(
        "  budget use {:.1}% (time-averaged down {:.1} / {budget}), most down {}",
        use_ * 100.0,
        use_ * f64::from(budget),
        power.max_down
    );
    println!(
        "  downtime per instance p50 / p95 / max: {} / {} / {} ms (target p95 <= {p95_target} ms)",
        ms(0.5),
        ms(0.95),
        ms(1.0)
    );
    let mut over_limit = Vec::new();
    let mut most = Vec::new();
    for (action, max) in &stats.max_in_any_second_by_action {
        let limit = Action::from_name(action).map_or(u64::from(RATE), |a| {
            u64::from(a.rate_limit()) * u64::from(RATE) / 10
        });
        if *max > limit {
            over_limit.push(action.clone());
        }
        most.push(format!("{action} {max}/{limit}"));
    }
    println!("  most requests in any sliding second: {}", most.join(", "));
    println!(
        "  requests {} admitted, {} throttled; executor: {} requests, {} retries",
        stats.admitted, stats.throttled, outcome.summary.requests, outcome.summary.retries
    );
    println!(
        "  power violations: {}; key violations: {}",
        power.violations.len(),
        keys.len()
    );
    for violation in power.violations.iter().chain(&keys) {
        println!("    {violation}");
    }
    let cycles = cycles(&journal, &timeline, &before);
    print_cycle(&cycles);
    print_slots(&cycles, &power, budget);
    let mut by_action: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in journal.iter().filter(|e| common::admitted(e)) {
        *by_action.entry(entry.action.as_str()).or_default() += 1;
    }
    let sent: Vec<String> = by_action.iter().map(|(a, n)| format!("{a} {n}")).collect();
    println!("  requests admitted per action: {}", sent.join(", "));
    let began = journal.iter().map(|e| e.at_ms).min().unwrap_or(0);
    for action in by_action.keys() {
        let (most, at) = busiest_second(&journal, action);
        println!(
            "  {action}: its busiest sliding second ({most}) ends {:.1} s after the first request",
            (at - began) as f64 / 1000.0
        );
    }
    for entry in journal.iter().filter(|e| !common::admitted(e)) {
        println!(
            "  throttled: {} at {} ms ({} instances), {} admitted of it in the second before",
            entry.action,
            entry.at_ms,
            entry.instance_ids.len(),
            journal
                .iter()
                .filter(|e| e.action == entry.action
                    && common::admitted(e)
                    && e.at_ms > entry.at_ms - 1000
                    && e.at_ms <= entry.at_ms)
                .count()
        );
    }
    let met = use_ >= 0.9
        && ms(0.95) <= p95_target
        && over_limit.is_empty()
        && stats.throttled == 0
        && power.violations.is_empty()
        && keys.is_empty();
    println!(
        "  target (budget use >= 90%, p95 <= {p95_target} ms, every action within its limit, no throttle, no violation): {}",
        if met { "MET" } else { "MISSED" }
    );
    report_misses(&power, budget, use_, ms(0.95), p95_target);
    store.close().await;
}

/// Broken key promises: the pairs against the fleet, and the leaked key still bound.
async fn audit_keys(
    store: &Store,
    run_id: i64,
    before: &Fleet,
    sim: &keyfleet::sim::SimHandle,
    journal: &[JournalEntry],
) -> Vec<String> {
    let outcomes: Vec<PairOutcome> = store
        .pair_outcomes(run_id)
        .await
        .expect("read the outcomes")
        .into_iter()
        .map(|o| PairOutcome {
            region: o.region,
            instance_id: o.instance_id,
            key_id: o.key_id,
            status: o.status,
            request_id: o.request_id,
            error_code: o.error_code,
        })
        .collect();
    let after = sim.fleet().bindings();
    let mut violations = audit::audit(&before.bindings(), &after, &outcomes, journal).violations;
    let still = after.iter().filter(|(_, key)| key == LEAKED).count();
    if still > 0 {
        violations.push(format!("{still} instances still hold the leaked key"));
    }
    violations
}

/// Where one cycled instance's time went, each a moment in ms since the simulator started.
#[derive(Debug, Default, Clone, Copy)]
struct Cycle {
    stop_accepted: i64,
    stopped: i64,
    stopped_seen: i64,
    unbind_accepted: i64,
    start_accepted: i64,
    running: i64,
    running_seen: i64,
}

/// The cycles of the instances RUNNING at the start, from the journal (admitted
/// requests naming the instance) and the power timeline.
fn cycles(journal: &[JournalEntry], timeline: &[PowerEvent], before: &Fleet) -> Vec<Cycle> {
    let mut by_instance: BTreeMap<&str, Vec<&JournalEntry>> = BTreeMap::new();
    for entry in journal.iter().filter(|e| common::admitted(e)) {
        for id in &entry.instance_ids {
            by_instance.entry(id.as_str()).or_default().push(entry);
        }
    }
    let mut events: BTreeMap<&str, Vec<&PowerEvent>> = BTreeMap::new();
    for event in timeline {
        events
            .entry(event.instance_id.as_str())
            .or_default()
            .push(event);
    }
    let first = |entries: &[&JournalEntry], action: &str, from: i64| {
        entries
            .iter()
            .filter(|e| e.action == action && e.at_ms >= from)
            .map(|e| e.at_ms)
            .min()
    };
    let mut out = Vec::new();
    for instance in before
        .instances()
        .iter()
        .filter(|i| i.state == InstanceState::Running)
    {
        let id = instance.instance_id.as_str();
        let (Some(entries), Some(power)) = (by_instance.get(id), events.get(id)) else {
            continue;
        };
        let at = |state: InstanceState| {
            power
                .iter()
                .filter(|e| e.state == state)
                .map(|e| e.at_ms)
                .min()
        };
        let cycle = (|| {
            let stop_accepted = first(entries, "StopInstances", 0)?;
            let stopped = at(InstanceState::Stopped)?;
            let stopped_seen = first(entries, "DescribeInstances", stopped)?;
            let unbind_accepted = first(entries, "DisassociateInstancesKeyPairs", stopped)?;
            let start_accepted = first(entries, "StartInstances", unbind_accepted)?;
            let running = power
                .iter()
                .filter(|e| e.state == InstanceState::Running && e.at_ms >= start_accepted)
                .map(|e| e.at_ms)
                .min()?;
            let running_seen = first(entries, "DescribeInstances", running)?;
            Some(Cycle {
                stop_accepted,
                stopped,
                stopped_seen,
                unbind_accepted,
                start_accepted,
                running,
                running_seen,
            })
        })();
        out.extend(cycle);
    }
    out
}

/// The most admitted requests of `action` in any sliding second, and when that second ends.
fn busiest_second(journal: &[JournalEntry], action: &str) -> (usize, i64) {
    let mut times: Vec<i64> = journal
        .iter()
        .filter(|e| e.action == action && common::admitted(e))
        .map(|e| e.at_ms)
        .collect();
    times.sort_unstable();
    let (mut most, mut at, mut start) = (0, 0, 0);
    for end in 0..times.len() {
        while times[end] - times[start] >= 1000 {
            start += 1;
        }
        if end - start + 1 > most {
            most = end - start + 1;
            at = times[end];
        }
    }
    (most, at)
}

fn quantile(mut values: Vec<i64>, q: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Each step of the cycle: p50 / p95 / max over the instances.
fn print_cycle(cycles: &[Cycle]) {
    println!(
        "  where an instance's cycle goes ({} cycles, ms, p50 / p95 / max):",
        cycles.len()
    );
    type Step = (&'static str, fn(&Cycle) -> i64);
    let steps: [Step; 7] = [
        ("stop accepted -> STOPPED", |c| c.stopped - c.stop_accepted),
        ("STOPPED -> seen by a look", |c| c.stopped_seen - c.stopped),
        ("STOPPED -> unbind accepted", |c| {
            c.unbind_accepted - c.stopped
        }),
        ("unbind accepted -> start accepted", |c| {
            c.start_accepted - c.unbind_accepted
        }),
        ("start accepted -> RUNNING", |c| {
            c.running - c.start_accepted
        }),
        ("RUNNING -> seen by a look", |c| c.running_seen - c.running),
        ("stop accepted -> RUNNING seen", |c| {
            c.running_seen - c.stop_accepted
        }),
    ];
    for (name, step) in steps {
        let values: Vec<i64> = cycles.iter().map(step).collect();
        println!(
            "    {name:<36} {:>6} / {:>6} / {:>6}",
            quantile(values.clone(), 0.5),
            quantile(values.clone(), 0.95),
            quantile(values, 1.0)
        );
    }
}

/// Where the budget's slot-seconds went: held by keyfleet while the simulator shows the
/// instance down, held while keyfleet has not yet seen it (stop accepted to RUNNING seen,
/// less the downtime), and free (no instance in the slot: the canary's cycle alone, the
/// gaps between a slot's release and its next stop, the last cycles' tail).
fn print_slots(cycles: &[Cycle], power: &PowerAudit, budget: u32) {
    let Some((first, last)) = power.window_ms else {
        return;
    };
    let capacity = (last - first) as f64 * f64::from(budget);
    if capacity <= 0.0 {
        return;
    }
    let held: i64 = cycles
        .iter()
        .map(|c| c.running_seen - c.stop_accepted)
        .sum();
    let down = power.down_ms_total;
    let mut stops: Vec<i64> = cycles.iter().map(|c| c.stop_accepted).collect();
    stops.sort_unstable();
    let canary = match (stops.first(), stops.get(1)) {
        (Some(a), Some(b)) => b - a,
        _ => 0,
    };
    println!(
        "  the budget's slot-time over the window: down {:.1}%, held unseen (RUNNING not yet seen) {:.1}%, free {:.1}% (the canary alone: {canary} ms, {:.1}%)",
        down as f64 / capacity * 100.0,
        (held - down) as f64 / capacity * 100.0,
        (capacity - held as f64) / capacity * 100.0,
        canary as f64 * f64::from(budget.saturating_sub(1)) / capacity * 100.0
    );
}

/// Says in words which target was missed.
fn report_misses(power: &PowerAudit, budget: u32, use_: f64, p95: i64, p95_target: i64) {
    if use_ < 0.9 {
        println!(
            "  MISSED budget use: {:.1}% < 90% ({} most down of {budget})",
            use_ * 100.0,
            power.max_down
        );
    }
    if p95 > p95_target {
        println!("  MISSED p95 downtime: {p95} ms > {p95_target} ms");
    }
}
