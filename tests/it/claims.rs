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
