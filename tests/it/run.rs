//! `keyfleet run` / `resume` end to end: the binary against the in-process
//! simulator, with faults, isolation, fatal stops, throttling, kills and Ctrl-C.
//! Each test ends with an audit of the simulator's fleet against the run's report.

use std::time::Duration;

use keyfleet::sim::{Faults, Fleet, Instance, InstanceState, Os, SimConfig, audit};

use crate::support::{Rehearsal, ins, key};

const GZ: &str = "ap-guangzhou";
const LIMIT: Duration = Duration::from_secs(120);

/// `n` STOPPED Linux instances; instance i holds the shared key 0 and its own key.
fn fleet(n: usize) -> Fleet {
    (0..n).fold(Fleet::new(), |fleet, i| {
        fleet.with(Instance::new(ins(i), GZ).keys([key(0), key(1000 + i)]))
    })
}

/// Remove each instance's own key: one single-pair job per instance, key 0 untouched.
fn own_keys(n: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| (ins(i), key(1000 + i), GZ.to_string()))
        .collect()
}

fn quiet_sim() -> SimConfig {
    SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    }
}

/// Audits the run against the simulator, asserting every promise held.
async fn assert_audit(r: &Rehearsal, before: &Fleet) -> audit::Audit {
    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let outcomes = crate::support::audit_rows(store.pair_outcomes(run_id).await.unwrap());
    store.close().await;
    let result = audit::audit(
        &before.bindings(),
        &r.sim.fleet().bindings(),
        &outcomes,
        &r.sim.journal(),
    );
    assert!(result.is_clean(), "audit: {:#?}", result.violations);
    result
}

async fn status(r: &Rehearsal) -> serde_json::Value {
    let (code, stdout, stderr) = r.run(&["status", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

async fn wait_for_requests(r: &Rehearsal, n: usize) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while r.sim.journal().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never sent {n} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (a) With 20% transient faults, "applied but reply lost" among them, every pair
/// succeeds and every reply's RequestId is recorded on its attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_ridden_out() {
    let faults = Faults {
        mutex: 0.06,
        in_progress: 0.05,
        internal: 0.04,
        drop_before: 0.025,
        drop_after: 0.025,
    };
    let fleet = fleet(120);
    let r = Rehearsal::start(
        SimConfig {
            faults,
            seed: 11,
            ..quiet_sim()
        },
        fleet.clone(),
    )
    .await;
    let input = r.input("in.csv", &own_keys(120));
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                input.to_str().unwrap(),
                "--rate",
                "200",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let audit = assert_audit(&r, &fleet).await;
    assert_eq!(audit.succeeded, 120);

    let store = r.store().await;
    let (replied, with_id, transport, open): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT SUM(outcome IN ('succeeded', 'error')), SUM(outcome IN ('succeeded', 'error') AND request_id IS NOT NULL), \
         SUM(outcome = 'transport'), SUM(outcome IS NULL) FROM attempts",
    )
    .fetch_one(store.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(
        replied, with_id,
        "every attempt that got a reply carries its RequestId"
    );
    assert!(replied > 120, "faults were met and retried");
    assert!(transport > 0, "dropped connections were met");
    assert_eq!(open, 0);
    let s = status(&r).await;
    assert_eq!(s["pairs"]["succeeded"], 120);
}

/// (b) A batch of 100 holding one Windows and one unknown instance: the other 98
/// succeed, the two fail with their codes, in a few isolating requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_instance_does_not_block_the_batch() {
    let mut fleet = Fleet::new();
    for i in 0..100 {
        if i == 71 {
            continue; // ins(71) is in the input but not in the fleet
        }
        let instance = Instance::new(ins(i), GZ).keys([key(1), key(2)]);
        fleet = fleet.with(if i == 13 {
            instance.os(Os::Windows)
        } else {
            instance
        });
    }
    let r = Rehearsal::start(quiet_sim(), fleet.clone()).await;
    let rows: Vec<_> = (0..100).map(|i| (ins(i), key(1), GZ.to_string())).collect();
    let input = r.input("batch.csv", &rows);
    let (code, _, stderr) = r
        .run(
            &["run", input.to_str().unwrap(), "--progress", "none"],
            LIMIT,
        )
        .await;
    assert_eq!(code, 1, "finished with failed pairs: {stderr}");
    let audit = assert_audit(&r, &fleet).await;
    assert_eq!(audit.succeeded, 98);

    let (code, report, _) = r.run(&["report", "--only", "failed"], LIMIT).await;
    assert_eq!(code, 0);
    let failed: Vec<&str> = report.lines().skip(1).collect();
    assert_eq!(failed.len(), 2, "{report}");
    assert!(
        failed[0].contains(&ins(13))
            && failed[0].contains("UnsupportedOperation.InstanceOsWindows"),
        "{report}"
    );
    assert!(
        failed[1].contains(&ins(71)) && failed[1].contains("InvalidInstanceId.NotFound"),
        "{report}"
    );
    // Key-pair requests only: the closing verification's DescribeInstances is apart.
    let requests = r
        .sim
        .journal()
        .iter()
        .filter(|e| e.action == "DisassociateInstancesKeyPairs")
        .count();
    assert!(
        requests <= 3 + 2 * 7,
        "{requests} requests to isolate two instances"
    );
    assert!(
        r.sim.fleet().bindings().contains(&(ins(5), key(2))),
        "unrequested key untouched"
    );
}

/// (c) Credentials revoked mid-run: exit 4, nothing failed, and resume completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_stops_and_resume_completes() {
    let fleet = fleet(60);
    let config = SimConfig {
        latency: (Duration::from_millis(10), Duration::from_millis(20)),
        ..quiet_sim()
    };
    let r = Rehearsal::start(config, fleet.clone()).await;
    let input = r.input("in.csv", &own_keys(60));
    let child = r
        .command(&[
            "run",
            input.to_str().unwrap(),
            "--rate",
            "40",
            "--concurrency",
            "2",
            "--progress",
            "none",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_requests(&r, 10).await;
    r.sim.revoke_credentials(true);
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("AuthFailure.SecretIdNotFound"), "{stderr}");
    assert!(stderr.contains("resume"), "says how to resume: {stderr}");
    let s = status(&r).await;
    assert_eq!(s["pairs"]["failed"], 0, "a fatal error fails nothing");
    assert_eq!(s["state"], "stopped");

    r.sim.revoke_credentials(false);
    let (code, _, stderr) = r
        .run(&["resume", "--rate", "200", "--progress", "none"], LIMIT)
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(assert_audit(&r, &fleet).await.succeeded, 60);
}

/// (d) A simulator limited to 5/s with keyfleet at 10/s: throttled, slowed, completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_slows_down_and_completes() {
    let fleet = fleet(30);
    let r = Rehearsal::start(
        SimConfig {
            rate: 5,
            ..quiet_sim()
        },
        fleet.clone(),
    )
    .await;
    let input = r.input("in.csv", &own_keys(30));
    let (code, _, stderr) = r
        .run(
            &["run", input.to_str().unwrap(), "--progress", "none"],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(r.sim.stats().throttled > 0, "the simulator throttled");
    assert!(r.sim.stats().max_in_any_second <= 5);
    assert_eq!(assert_audit(&r, &fleet).await.succeeded, 30);
    let s = status(&r).await;
    assert!(
        s["throttled"].as_i64().unwrap() > 0,
        "status reports throttles: {s}"
    );
    assert!(stderr.contains("throttled"), "{stderr}");
}

/// (e) The simulator never sees more than --rate requests in any sliding second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_second_holds_more_than_the_rate() {
    let fleet = fleet(35);
    let r = Rehearsal::start(quiet_sim(), fleet.clone()).await;
    let input = r.input("in.csv", &own_keys(35));
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                input.to_str().unwrap(),
                "--rate",
                "10",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let stats = r.sim.stats();
    // 35 unbinds, then one DescribeInstances batch verifying their 35 instances.
    assert_eq!(stats.admitted, 36);
    assert!(
        stats.max_in_any_second <= 10,
        "{} in one second",
        stats.max_in_any_second
    );
    assert!(
        stats.max_in_any_second >= 9,
        "and it goes as fast as allowed: {}",
        stats.max_in_any_second
    );
}

/// (f) SIGKILL mid-run, with replies lost after applying, then the same command again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_and_run_again() {
    let faults = Faults {
        drop_after: 0.1,
        ..Faults::default()
    };
    let fleet = fleet(80);
    let config = SimConfig {
        faults,
        latency: (Duration::from_millis(5), Duration::from_millis(30)),
        ..quiet_sim()
    };
    let r = Rehearsal::start(config, fleet.clone()).await;
    let input = r.input("in.csv", &own_keys(80));
    let args = [
        "run",
        input.to_str().unwrap(),
        "--rate",
        "50",
        "--progress",
        "none",
    ];
    let mut child = r.command(&args).spawn().unwrap();
    wait_for_requests(&r, 20).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(assert_audit(&r, &fleet).await.succeeded, 80);
    let (_, report, _) = r.run(&["report"], LIMIT).await;
    assert_eq!(report.lines().count(), 81, "a row per input row");
}

/// (g) Ctrl-C: no new requests, in-flight ones recorded, exit 4; resume completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_then_resume() {
    let fleet = fleet(60);
    let config = SimConfig {
        latency: (Duration::from_millis(50), Duration::from_millis(100)),
        ..quiet_sim()
    };
    let r = Rehearsal::start(config, fleet.clone()).await;
    let input = r.input("in.csv", &own_keys(60));
    let child = r
        .command(&[
            "run",
            input.to_str().unwrap(),
            "--rate",
            "20",
            "--progress",
            "none",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_for_requests(&r, 8).await;
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("interrupt"), "{stderr}");
    assert!(stderr.contains("resume"), "{stderr}");
    let requests_at_stop = r.sim.journal().len();
    assert!(requests_at_stop < 60, "it stopped early");
    let store = r.store().await;
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE finished_at IS NULL")
        .fetch_one(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(open, 0, "in-flight requests were recorded before exiting");
    store.close().await;

    let (code, _, stderr) = r
        .run(&["resume", "--rate", "200", "--progress", "none"], LIMIT)
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(assert_audit(&r, &fleet).await.succeeded, 60);
}

/// Every sample input rehearsed against the sample fleet: the README's promise that
/// `samples/` works together. Rows for the RUNNING and the Windows instance fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_samples_rehearse_against_the_sample_fleet() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let fleet = Fleet::load(samples.join("fleet-small.json")).unwrap();
    for (input, expected_exit) in [
        ("small.csv", 0),
        ("small.json", 1),
        ("small.jsonl", 1),
        ("bad-rows.csv", 1),
    ] {
        let r = Rehearsal::start(quiet_sim(), fleet.clone()).await;
        let path = samples.join(input);
        let (code, _, stderr) = r
            .run(
                &[
                    "run",
                    path.to_str().unwrap(),
                    "--rate",
                    "100",
                    "--progress",
                    "none",
                ],
                LIMIT,
            )
            .await;
        assert_eq!(code, expected_exit, "{input}: {stderr}");
        let audit = assert_audit(&r, &fleet).await;
        assert!(audit.succeeded > 0, "{input}");
        assert!(
            r.sim
                .fleet()
                .bindings()
                .iter()
                .any(|(_, k)| k == "skey-00000009"),
            "the unrequested key stays"
        );
    }
}

/// `keyfleet retry --code`: pairs that failed because an instance was RUNNING are sent
/// again once an operator has stopped it; other failures stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_requeues_failed_pairs_by_code() {
    let fleet = Fleet::new()
        .with(Instance::new(ins(1), GZ).keys([key(1), key(9)]))
        .with(
            Instance::new(ins(2), GZ)
                .keys([key(1), key(9)])
                .state(InstanceState::Running),
        )
        .with(
            Instance::new(ins(3), GZ)
                .keys([key(1), key(9)])
                .os(Os::Windows),
        );
    let r = Rehearsal::start(quiet_sim(), fleet.clone()).await;
    let rows: Vec<_> = (1..=3).map(|i| (ins(i), key(1), GZ.to_string())).collect();
    let input = r.input("in.csv", &rows);
    let (code, _, stderr) = r
        .run(
            &["run", input.to_str().unwrap(), "--progress", "none"],
            LIMIT,
        )
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(status(&r).await["pairs"]["failed"], 2);

    // Nothing failed with this code: nothing to do.
    let (code, _, stderr) = r
        .run(
            &[
                "retry",
                "--code",
                "InternalServerError",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no failed pairs"), "{stderr}");

    r.sim
        .edit_fleet(|f| {
            f.instances
                .iter_mut()
                .filter(|i| i.instance_id == ins(2))
                .for_each(|i| i.state = InstanceState::Stopped)
        })
        .unwrap();
    let (code, _, stderr) = r
        .run(
            &[
                "retry",
                "--code",
                "UnsupportedOperation.InstanceStateRunning",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 1, "the Windows pair still fails: {stderr}");
    assert!(stderr.contains("1 failed pairs requeued"), "{stderr}");
    let s = status(&r).await;
    assert_eq!(s["pairs"]["succeeded"], 2);
    assert_eq!(s["pairs"]["failed"], 1);
    assert_eq!(
        s["failures_by_code"]["UnsupportedOperation.InstanceOsWindows"],
        1
    );
    let audit = assert_audit(&r, &fleet).await;
    assert_eq!(audit.succeeded, 2);
}
