//! Live fleets against the simulator (issue 21): RUNNING instances go through their key
//! change under a downtime budget (total, or per zone), come back RUNNING, and the
//! simulator's own power timeline proves the budget held; an instance STOPPED before the
//! run is never started; a start that fails for good leaves the instance named LEFT
//! STOPPED with its own exit code and no further stop; kill -9 and the same command.

use std::time::Duration;

use keyfleet::sim::audit::{PowerRules, audit_power_of};
use keyfleet::sim::{Fleet, Instance, InstanceState, Power, SimConfig, audit};

use crate::support::{Rehearsal, audit_rows, ins};

const LIMIT: Duration = Duration::from_secs(120);
const GZ: &str = "ap-guangzhou";
const LEAK: &str = "skey-1eak0001";
const OTHER: &str = "skey-0ther001";
const ZONES: [&str; 3] = ["ap-guangzhou-3", "ap-guangzhou-4", "ap-guangzhou-6"];

fn sim(power: Power, seed: u64) -> SimConfig {
    SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        operation_time: Duration::from_millis(50),
        power,
        seed,
        ..SimConfig::default()
    }
}

fn power(stop_ms: u64, start_ms: u64) -> Power {
    Power {
        stop_time: Duration::from_millis(stop_ms),
        start_time: Duration::from_millis(start_ms),
        ..Power::default()
    }
}

/// `n` instances holding LEAK and OTHER over three zones; every fifth STOPPED.
fn fleet(n: usize) -> Fleet {
    (0..n).fold(Fleet::new(), |fleet, i| {
        let state = if i % 5 == 4 {
            InstanceState::Stopped
        } else {
            InstanceState::Running
        };
        fleet.with(
            Instance::new(ins(i), GZ)
                .state(state)
                .zone(ZONES[i % 3])
                .keys([LEAK, OTHER]),
        )
    })
}

fn rows(n: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| (ins(i), LEAK.to_string(), GZ.to_string()))
        .collect()
}

async fn assert_keys_and_power(r: &Rehearsal, before: &Fleet, rules: &PowerRules) {
    let power = audit_power_of(&r.sim, before, rules);
    assert!(power.violations.is_empty(), "{:#?}", power.violations);
    assert!(power.left_down.is_empty(), "{:?}", power.left_down);
    assert!(power.started_not_running_before.is_empty());
    assert!(power.taken_down > 0, "nothing was stopped");
    let store = keyfleet::store::Store::open(&r.db).await.unwrap();
    let run_id = store.resolve_run(None).await.unwrap();
    let outcomes = audit_rows(store.pair_outcomes(run_id).await.unwrap());
    let after = r.sim.fleet().bindings();
    let keys = audit::audit(&before.bindings(), &after, &outcomes, &r.sim.journal());
    assert!(keys.violations.is_empty(), "{:#?}", keys.violations);
    // Every pair asked for is gone, and nothing else was touched.
    for (instance, key) in &after {
        assert_ne!(key, LEAK, "{instance} still holds the leaked key");
    }
    assert_eq!(
        after.iter().filter(|(_, k)| k == OTHER).count(),
        before.instances().len()
    );
}

/// The report's power columns against the simulator's own power timeline: an instance
/// the simulator saw go down has `stopped_at`, a `downtime_s` at least as long as the
/// simulator's (keyfleet counts from before it sends until it has seen RUNNING) and
/// `power_after` RUNNING; `started_at` follows `stopped_at` when a start was sent (always
/// with `stop-start`); one never taken down has them all empty and its state before.
async fn assert_report_matches_the_power_timeline(r: &Rehearsal, before: &Fleet, starts: bool) {
    let (code, stdout, stderr) = r.run(&["report", "--format", "json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let report: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let power = audit_power_of(&r.sim, before, &PowerRules::default());
    let was: std::collections::BTreeMap<String, InstanceState> = before
        .instances()
        .iter()
        .map(|i| (i.instance_id.clone(), i.state))
        .collect();
    assert!(!report.is_empty());
    for row in &report {
        let instance = row["instance_id"].as_str().unwrap();
        let text = |column: &str| row[column].as_str().map(str::to_string);
        match power.downtime_ms.get(instance) {
            Some(&sim_ms) => {
                assert_eq!(text("power_before").as_deref(), Some("RUNNING"), "{row}");
                assert_eq!(text("power_after").as_deref(), Some("RUNNING"), "{row}");
                let stopped = text("stopped_at").expect("stopped_at");
                assert!(stopped.ends_with('Z') && stopped.len() == 24, "{row}");
                let downtime: f64 = text("downtime_s").unwrap().parse().unwrap();
                assert!(
                    downtime * 1000.0 + 1.0 >= sim_ms as f64,
                    "{instance}: keyfleet {downtime} s < the simulator's {sim_ms} ms"
                );
                match text("started_at") {
                    Some(started) => assert!(started >= stopped, "{row}"),
                    None => assert!(!starts, "no started_at: {row}"),
                }
            }
            None => {
                for column in ["stopped_at", "started_at", "downtime_s", "power_after"] {
                    assert!(row[column].is_null(), "{column} of {instance}: {row}");
                }
                let before = format!("{:?}", was[instance]).to_uppercase();
                assert_eq!(text("power_before"), Some(before), "{row}");
            }
        }
    }
    // Every instance the simulator saw go down is in the report as stopped.
    let stopped: std::collections::BTreeSet<&str> = report
        .iter()
        .filter(|row| !row["stopped_at"].is_null())
        .map(|row| row["instance_id"].as_str().unwrap())
        .collect();
    let sim_down: std::collections::BTreeSet<&str> =
        power.downtime_ms.keys().map(String::as_str).collect();
    assert_eq!(stopped, sim_down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_rolls_through_the_fleet_within_the_budget() {
    let before = fleet(30);
    let r = Rehearsal::start(sim(power(150, 200), 1), before.clone()).await;
    let input = r.input("leak.csv", &rows(30));
    let path = input.to_str().unwrap();
    let args = [
        "run",
        path,
        "--running",
        "stop-start",
        "--max-down",
        "3",
        "--canary",
        "1",
        "--progress",
        "none",
    ];
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("power:    down 0 now (budget 3), at most 3 at once"),
        "{stderr}"
    );
    assert!(stderr.contains("downtime: p50"), "{stderr}");
    let rules = PowerRules {
        max_down: 3,
        ..PowerRules::default()
    };
    assert_keys_and_power(&r, &before, &rules).await;
    let power = audit_power_of(&r.sim, &before, &rules);
    assert_eq!(power.taken_down, 24, "every RUNNING instance, once");
    assert_eq!(power.max_down, 3, "the budget is used");
    assert_report_matches_the_power_timeline(&r, &before, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_per_zone_holds_in_every_zone() {
    let before = fleet(30);
    let r = Rehearsal::start(sim(power(100, 150), 2), before.clone()).await;
    let input = r.input("leak.csv", &rows(30));
    let path = input.to_str().unwrap();
    let args = [
        "run",
        path,
        "--running",
        "stop-start",
        "--max-down",
        "1",
        "--max-down-per",
        "zone",
        "--progress",
        "none",
    ];
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let rules = PowerRules {
        max_down: 3,
        max_down_per_zone: Some(1),
        ..PowerRules::default()
    };
    assert_keys_and_power(&r, &before, &rules).await;
    let power = audit_power_of(&r.sim, &before, &rules);
    assert!(
        power.max_down_per_zone.values().all(|&n| n == 1),
        "{power:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_seeded_moments_the_same_command_keeps_the_budget_and_brings_all_back() {
    let before = fleet(24);
    let r = Rehearsal::start(sim(power(200, 250), 3), before.clone()).await;
    let input = r.input("leak.csv", &rows(24));
    let path = input.to_str().unwrap();
    let args = [
        "run",
        path,
        "--running",
        "stop-start",
        "--max-down",
        "2",
        "--progress",
        "none",
    ];
    // Two kills, each once some requests have gone out: mid-cycle, instances down.
    for sent in [6, 20] {
        let mut child = r.command(&args).spawn().unwrap();
        let deadline = tokio::time::Instant::now() + LIMIT;
        while r.sim.journal().len() < sent {
            assert!(tokio::time::Instant::now() < deadline, "the run never sent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let rules = PowerRules {
        max_down: 2,
        ..PowerRules::default()
    };
    assert_keys_and_power(&r, &before, &rules).await;
    // None was stopped twice: each instance's timeline has one stop.
    let journal = r.sim.journal();
    let mut stops = std::collections::BTreeMap::<String, usize>::new();
    for e in journal
        .iter()
        .filter(|e| e.action == "StopInstances" && e.applied)
    {
        for i in &e.instance_ids {
            *stops.entry(i.clone()).or_default() += 1;
        }
    }
    assert!(stops.values().all(|&n| n == 1), "{stops:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_for_good_is_left_stopped_named_and_halts_the_rollout() {
    // The canary (the survey's first) fails every start.
    let before = (1..10).fold(
        Fleet::new().with(
            Instance::new(ins(0), GZ)
                .state(InstanceState::Running)
                .zone(ZONES[0])
                .keys([LEAK, OTHER])
                .start_fails(),
        ),
        |fleet, i| {
            fleet.with(
                Instance::new(ins(i), GZ)
                    .state(InstanceState::Running)
                    .zone(ZONES[i % 3])
                    .keys([LEAK, OTHER]),
            )
        },
    );
    let r = Rehearsal::start(sim(power(50, 50), 4), before.clone()).await;
    let input = r.input("leak.csv", &rows(10));
    let path = input.to_str().unwrap();
    let args = [
        "run",
        path,
        "--running",
        "stop-start",
        "--max-down",
        "2",
        "--max-attempts",
        "2",
        "--progress",
        "none",
    ];
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 5, "{stderr}");
    let left = stderr.find("LEFT STOPPED").expect("named");
    assert!(
        left < stderr.find("pairs:").unwrap(),
        "named first:\n{stderr}"
    );
    assert!(stderr.contains(&ins(0)), "{stderr}");
    // Nothing but the canary went down.
    let journal = r.sim.journal();
    let stopped: Vec<&String> = journal
        .iter()
        .filter(|e| e.action == "StopInstances" && e.applied)
        .flat_map(|e| e.instance_ids.iter())
        .collect();
    assert_eq!(
        stopped,
        [&ins(0)],
        "no further stop after the canary failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_stop_in_both_readings_keeps_the_budget_and_ends_everyone_running() {
    for (seed, reading) in [
        (5, keyfleet::sim::ForceStopReading::Restart),
        (6, keyfleet::sim::ForceStopReading::LeftStopped),
    ] {
        let before = fleet(15);
        let power = Power {
            force_stop: reading,
            ..power(100, 150)
        };
        let r = Rehearsal::start(sim(power, seed), before.clone()).await;
        let input = r.input("leak.csv", &rows(15));
        let path = input.to_str().unwrap();
        let args = [
            "run",
            path,
            "--force-stop",
            "--max-down",
            "2",
            "--progress",
            "none",
        ];
        let (code, _, stderr) = r.run(&args, LIMIT).await;
        assert_eq!(code, 0, "{reading:?}: {stderr}");
        let rules = PowerRules {
            max_down: 2,
            allow_force_stop: true,
            ..PowerRules::default()
        };
        assert_keys_and_power(&r, &before, &rules).await;
        let journal = r.sim.journal();
        let starts = journal
            .iter()
            .filter(|e| e.action == "StartInstances" && e.applied)
            .count();
        match reading {
            // The cloud restarts them: keyfleet only sees them RUNNING.
            keyfleet::sim::ForceStopReading::Restart => assert_eq!(starts, 0, "{stderr}"),
            // The older reading leaves them STOPPED: keyfleet starts them.
            keyfleet::sim::ForceStopReading::LeftStopped => assert!(starts > 0, "{stderr}"),
        }
        assert_report_matches_the_power_timeline(&r, &before, false).await;
    }
}

/// SIGTERM (a cancelled CI job, `systemctl stop`) mid-rollout: no new instance goes
/// down, the ones down finish their cycle and are RUNNING before the process exits
/// (resumable, exit 4); the same command then finishes the rollout within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_brings_the_down_instances_back_up_before_it_exits_and_resume_finishes() {
    let before = fleet(30);
    let r = Rehearsal::start(sim(power(300, 400), 7), before.clone()).await;
    let input = r.input("leak.csv", &rows(30));
    let path = input.to_str().unwrap();
    let args = [
        "run",
        path,
        "--running",
        "stop-start",
        "--max-down",
        "3",
        "--progress",
        "none",
    ];
    let child = r
        .command(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // Once a few stops are out (past the canary), some instances are down.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while r
        .sim
        .journal()
        .iter()
        .filter(|e| e.action == "StopInstances" && e.applied)
        .count()
        < 3
    {
        assert!(tokio::time::Instant::now() < deadline, "no stop was sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stops_at_signal = r
        .sim
        .journal()
        .iter()
        .filter(|e| e.action == "StopInstances" && e.applied)
        .count();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    // Nobody is left down by the interrupt, and nothing new went down after it (a
    // stop already admitted in the same instant may still go out: at most the budget).
    let rules = PowerRules {
        max_down: 3,
        ..PowerRules::default()
    };
    let power = audit_power_of(&r.sim, &before, &rules);
    assert!(
        power.left_down.is_empty(),
        "left down: {:?}\n{stderr}",
        power.left_down
    );
    assert!(power.violations.is_empty(), "{:#?}", power.violations);
    let stops_after = r
        .sim
        .journal()
        .iter()
        .filter(|e| e.action == "StopInstances" && e.applied)
        .count();
    assert!(
        stops_after <= stops_at_signal + 1,
        "{stops_at_signal} -> {stops_after}"
    );
    assert!(
        power.taken_down < 24,
        "the interrupt stopped the rollout early"
    );
    // The same command finishes it.
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert_keys_and_power(&r, &before, &rules).await;
    assert_eq!(audit_power_of(&r.sim, &before, &rules).taken_down, 24);
}

/// `plan` says how many instances are RUNNING and need the budget: from the input's
/// `instance_state` column (`discover` writes it), else that the survey finds out,
/// with the budget's rule; `plan --json` carries the number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_says_how_many_instances_are_running_and_need_the_budget() {
    let r = Rehearsal::start(sim(power(50, 50), 8), fleet(1)).await;
    let with_state = r.dir.path().join("discovered.csv");
    std::fs::write(
        &with_state,
        format!(
            "region,instance_id,key_id,instance_state,keys_after\n\
             {GZ},{},{LEAK},RUNNING,1\n{GZ},{},{LEAK},STOPPED,1\n{GZ},{},{LEAK},RUNNING,1\n\
             {GZ},{},{OTHER},RUNNING,0\n",
            ins(0),
            ins(1),
            ins(2),
            ins(2)
        ),
    )
    .unwrap();
    let path = with_state.to_str().unwrap();
    let (code, stdout, stderr) = r.run(&["plan", path, "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["running"], 2, "{plan}");
    let (code, _, stderr) = r.run(&["plan", path], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "running      2 instances RUNNING (the input's instance_state): --running fail"
        ),
        "{stderr}"
    );
    let live = [
        "plan",
        path,
        "--running",
        "stop-start",
        "--max-down",
        "50%",
        "--max-down-per",
        "zone",
    ];
    let (code, _, stderr) = r.run(&live, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "running      2 instances RUNNING (the input's instance_state) need the budget: at \
             most 1 (50% of 2, rounded down, at least 1) down at once in each zone"
        ),
        "{stderr}"
    );
    // Without the column: the survey finds out; --json says null.
    let plain = r.input("plain.csv", &rows(3));
    let plain = plain.to_str().unwrap();
    let (code, stdout, stderr) = r
        .run(
            &[
                "plan",
                plain,
                "--running",
                "stop-start",
                "--max-down",
                "2",
                "--json",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(plan["running"].is_null(), "{plan}");
    let (code, _, stderr) = r
        .run(
            &["plan", plain, "--running", "stop-start", "--max-down", "2"],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("RUNNING instances known after the survey (DescribeInstances; the input has no instance_state column): at most 2 down at once"),
        "{stderr}"
    );
}

/// `--max-down-per COLUMN`: the budget holds for each value of an input column (here a
/// rack that crosses the zones), by the simulator's own power timeline; an input
/// without the column is an error naming it, before anything is written or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_per_input_column_holds_in_every_group() {
    let n = 18;
    let before = fleet(n);
    let r = Rehearsal::start(sim(power(100, 150), 9), before.clone()).await;
    let rack = |i: usize| format!("rack-{}", i % 2);
    let mut csv = String::from("instance_id,key_id,region,rack\n");
    for i in 0..n {
        csv.push_str(&format!("{},{LEAK},{GZ},{}\n", ins(i), rack(i)));
    }
    let input = r.dir.path().join("racks.csv");
    std::fs::write(&input, csv).unwrap();
    let path = input.to_str().unwrap();

    let missing = r.input("no-rack.csv", &rows(n));
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                missing.to_str().unwrap(),
                "--running",
                "stop-start",
                "--max-down",
                "2",
                "--max-down-per",
                "rack",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("--max-down-per rack: the header has no rack column"),
        "{stderr}"
    );
    assert!(r.sim.journal().is_empty(), "nothing was sent");

    let args = [
        "run",
        path,
        "--running",
        "stop-start",
        "--max-down",
        "2",
        "--max-down-per",
        "rack",
        "--canary",
        "0",
        "--progress",
        "none",
    ];
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("(budget 2 per rack)"), "{stderr}");
    let groups: std::collections::BTreeMap<String, String> =
        (0..n).map(|i| (ins(i), rack(i))).collect();
    let rules = PowerRules {
        max_down: 4,
        max_down_per_group: Some((groups, 2)),
        ..PowerRules::default()
    };
    assert_keys_and_power(&r, &before, &rules).await;
    let power = audit_power_of(&r.sim, &before, &rules);
    assert!(
        power.max_down_per_tag_value.values().all(|&n| n <= 2)
            && power.max_down_per_tag_value.values().any(|&n| n == 2),
        "{:?}",
        power.max_down_per_tag_value
    );
}
