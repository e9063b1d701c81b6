//! Two runs on one database (issue 26, M2): `--keep-one-key` holds across runs, and a
//! live run never takes down an instance another run has down. The review's
//! reproduction first: on the old code both runs exited 0 and left the instance with
//! no key.

use std::time::Duration;

use keyfleet::sim::{Fleet, Instance, InstanceState, SimConfig};

use crate::support::Rehearsal;

const LIMIT: Duration = Duration::from_secs(120);
const GZ: &str = "ap-guangzhou";
const INSTANCE: &str = "ins-aaaaaaa1";
const KEY_1: &str = "skey-aaaaaaa1";
const KEY_2: &str = "skey-aaaaaaa2";

fn two_key_fleet() -> Fleet {
    Fleet::new().with(
        Instance::new(INSTANCE, GZ)
            .state(InstanceState::Stopped)
            .keys([KEY_1, KEY_2]),
    )
}

/// Reads one run's report as JSON rows.
async fn report(r: &Rehearsal, run: &str) -> Vec<serde_json::Value> {
    let (code, stdout, stderr) = r.run(&["report", run, "--format", "json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// The review's M2 reproduction: an operation takes 3 s; `run a.csv --keep-one-key`
/// removes key 1 and, once its unbind is accepted, `run b.csv --keep-one-key` removes
/// key 2 on the same database. The second look waits out the first run's operation and
/// its claim, sees key 1 gone, and skips key 2: the instance keeps a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_cannot_each_remove_one_of_an_instances_last_two_keys() {
    let config = SimConfig {
        rate: 0,
        operation_time: Duration::from_secs(3),
        seed: 26,
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, two_key_fleet()).await;
    let a = r.input("a.csv", &[(INSTANCE.into(), KEY_1.into(), GZ.into())]);
    let b = r.input("b.csv", &[(INSTANCE.into(), KEY_2.into(), GZ.into())]);
    let args = |input: &std::path::Path| {
        vec![
            "run".to_string(),
            input.to_str().unwrap().to_string(),
            "--keep-one-key".to_string(),
            "--progress".to_string(),
            "none".to_string(),
        ]
    };
    let a_args = args(&a);
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let first = r.command(&a_args).output();
    let first = tokio::spawn(first);
    // Once the first run's unbind is accepted (its operation runs for 3 s), the second.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !r
        .sim
        .journal()
        .iter()
        .any(|e| e.action == "DisassociateInstancesKeyPairs" && e.applied)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first run never unbound"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_args = args(&b);
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let (code_b, _, stderr_b) = r.run(&b_args, LIMIT).await;
    let first = tokio::time::timeout(LIMIT, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    let keys = r.sim.fleet().instance(INSTANCE).unwrap().key_ids.clone();
    assert_eq!(
        keys,
        [KEY_2],
        "the instance keeps a key; second run: {stderr_b}"
    );
    let journal = r.sim.journal();
    let unbinds: Vec<&Vec<String>> = journal
        .iter()
        .filter(|e| e.action == "DisassociateInstancesKeyPairs" && e.applied)
        .map(|e| &e.key_ids)
        .collect();
    assert_eq!(
        unbinds,
        [&vec![KEY_1.to_string()]],
        "only key 1 was ever unbound"
    );
    let rows = report(&r, "2").await;
    assert_eq!(rows[0]["status"], "skipped", "{rows:?}");
    assert_eq!(rows[0]["error_code"], "KeepOneKey.LastKey", "{rows:?}");
    assert_ne!(code_b, 0, "a skipped pair is not a clean exit: {stderr_b}");
}

/// Two live runs on one database whose instances overlap, started together, each
/// with a budget of 2: an instance one run has down is never stopped by the other (it
/// waits for the claim), so each instance's stops and starts alternate; every
/// instance ends RUNNING with exactly the keys asked removed, and at most 4 are ever
/// down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_runs_never_stop_one_instance_at_once() {
    use keyfleet::sim::Power;
    use keyfleet::sim::audit::{PowerRules, audit_power_of};

    const LEAK: &str = "skey-1eak0001";
    const OTHER: &str = "skey-0ther001";
    const THIRD: &str = "skey-7hird001";
    let n = 10;
    let before = (0..n).fold(Fleet::new(), |fleet, i| {
        fleet.with(
            Instance::new(crate::support::ins(i), GZ)
                .state(InstanceState::Running)
                .zone("ap-guangzhou-3")
                .keys([LEAK, OTHER, THIRD]),
        )
    });
    let config = SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        operation_time: Duration::from_millis(50),
        power: Power {
            stop_time: Duration::from_millis(200),
            start_time: Duration::from_millis(250),
            ..Power::default()
        },
        seed: 27,
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, before.clone()).await;
    // Run A removes LEAK from 0..7, run B removes OTHER from 3..10: 3..7 are in both.
    let a: Vec<_> = (0..7)
        .map(|i| (crate::support::ins(i), LEAK.to_string(), GZ.to_string()))
        .collect();
    let b: Vec<_> = (3..n)
        .map(|i| (crate::support::ins(i), OTHER.to_string(), GZ.to_string()))
        .collect();
    let a = r.input("a.csv", &a);
    let b = r.input("b.csv", &b);
    let args = |input: &std::path::Path| -> Vec<String> {
        [
            "run",
            input.to_str().unwrap(),
            "--running",
            "stop-start",
            "--max-down",
            "2",
            "--canary",
            "0",
            "--progress",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (a_args, b_args) = (args(&a), args(&b));
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let (first, second) = tokio::join!(r.run(&a_args, LIMIT), r.run(&b_args, LIMIT));
    assert_eq!(first.0, 0, "{}", first.2);
    assert_eq!(second.0, 0, "{}", second.2);

    // Per instance, the stops and starts the simulator accepted alternate.
    let mut sequence = std::collections::BTreeMap::<String, Vec<&str>>::new();
    let journal = r.sim.journal();
    for e in journal.iter().filter(|e| {
        (e.action == "StopInstances" || e.action == "StartInstances") && e.code.is_none()
    }) {
        for i in &e.instance_ids {
            sequence
                .entry(i.clone())
                .or_default()
                .push(if e.action == "StopInstances" {
                    "stop"
                } else {
                    "start"
                });
        }
    }
    for (instance, steps) in &sequence {
        assert!(
            steps.chunks(2).all(|pair| pair == ["stop", "start"]),
            "{instance}: {steps:?}"
        );
    }
    let refused_stops = journal
        .iter()
        .filter(|e| e.action == "StopInstances" && e.code.is_some())
        .count();
    assert_eq!(refused_stops, 0, "no stop met an instance already down");
    let rules = PowerRules {
        max_down: 4,
        ..PowerRules::default()
    };
    let power = audit_power_of(&r.sim, &before, &rules);
    assert!(power.violations.is_empty(), "{:#?}", power.violations);
    assert!(power.left_down.is_empty(), "{:?}", power.left_down);
    let fleet = r.sim.fleet();
    for i in 0..n {
        let id = crate::support::ins(i);
        let keys = &fleet.instance(&id).unwrap().key_ids;
        assert_eq!(keys.contains(&LEAK.to_string()), i >= 7, "{id}: {keys:?}");
        assert_eq!(keys.contains(&OTHER.to_string()), i < 3, "{id}: {keys:?}");
        assert!(keys.contains(&THIRD.to_string()), "{id}: {keys:?}");
    }
}
