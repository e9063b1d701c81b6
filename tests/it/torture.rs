//! Proof under stress: the binary killed with SIGKILL at random moments and run
//! again until it finishes, and a long soak with every fault kind at once. Both end
//! with the simulator's fleet compared to the exact expected fleet.
//!
//! CI runs short versions. Longer ones:
//! `KEYFLEET_TORTURE_KILLS=300 cargo test --release --test it torture -- --nocapture`
//! and `KEYFLEET_SOAK_INSTANCES=20000 cargo test --release --test it soak -- --nocapture`.

use std::collections::BTreeSet;
use std::time::Duration;

use keyfleet::sim::{Faults, Fleet, Instance, InstanceState, Mix, SimConfig, audit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{Rehearsal, ins, key};

const GZ: &str = "ap-guangzhou";
const MAX_ATTEMPTS: i64 = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn every_fault(total: f64) -> Faults {
    Faults {
        mutex: total * 0.3,
        in_progress: total * 0.25,
        internal: total * 0.15,
        drop_before: total * 0.15,
        drop_after: total * 0.15,
    }
}

/// Checks the promises at the end of a run: the fleet is exactly the expected one,
/// every row has a final status, every success is proven, no job overspent.
async fn assert_exact_outcome(
    r: &Rehearsal,
    before: &Fleet,
    requested: &BTreeSet<(String, String)>,
    rows: usize,
) {
    let after = r.sim.fleet().bindings();
    let expected: BTreeSet<_> = before.bindings().difference(requested).cloned().collect();
    let missing: Vec<_> = expected.difference(&after).take(5).collect();
    let extra: Vec<_> = after.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "fleet differs: lost {missing:?}, still bound {extra:?}"
    );

    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let outcomes = crate::support::audit_rows(store.pair_outcomes(run_id).await.unwrap());
    let result = audit::audit(&before.bindings(), &after, &outcomes, &r.sim.journal());
    assert!(result.is_clean(), "{:#?}", result.violations);
    assert_eq!(result.succeeded, requested.len());

    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM items WHERE run_id = ? GROUP BY status")
            .bind(run_id)
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert_eq!(
        statuses,
        vec![("succeeded".to_string(), rows as i64)],
        "every row final and succeeded"
    );
    let max_attempts: i64 = sqlx::query_scalar("SELECT MAX(attempts) FROM jobs")
        .fetch_one(store.pool_for_tests())
        .await
        .unwrap();
    assert!(
        max_attempts <= MAX_ATTEMPTS,
        "a job spent {max_attempts} attempts"
    );
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE finished_at IS NULL")
        .fetch_one(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(open, 0);
    store.close().await;

    let (code, report, _) = r.run(&["report"], Duration::from_secs(60)).await;
    assert_eq!(code, 0);
    assert_eq!(
        report.lines().count(),
        rows + 1,
        "the report accounts for every input row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_sigkill_at_random_moments() {
    let kills = env_usize("KEYFLEET_TORTURE_KILLS", 10);
    let n = (kills * 15).max(150);
    // Instance i holds a shared key (never asked for), its own key and one of seven.
    let mut fleet = Fleet::new();
    let mut rows = Vec::new();
    for i in 0..n {
        let (own, group) = (key(100_000 + i), key(200_000 + i % 7));
        fleet = fleet.with(Instance::new(ins(i), GZ).keys([key(0), own.clone(), group.clone()]));
        rows.push((ins(i), own, GZ.to_string()));
        rows.push((ins(i), group, GZ.to_string()));
    }
    let requested: BTreeSet<_> = rows
        .iter()
        .map(|(i, k, _)| (i.clone(), k.clone()))
        .collect();
    let config = SimConfig {
        rate: 0,
        faults: every_fault(0.2),
        latency: (Duration::from_millis(5), Duration::from_millis(40)),
        seed: 2026,
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, fleet.clone()).await;
    let input = r.input("rotation.csv", &rows);
    let args = [
        "run",
        input.to_str().unwrap(),
        "--rate",
        "100",
        "--concurrency",
        "16",
        "--progress",
        "none",
    ];

    let mut rng = StdRng::seed_from_u64(7);
    let mut killed = 0;
    while killed < kills {
        let mut child = r
            .command(&args)
            .stderr(std::fs::File::create(r.dir.path().join("stderr.txt")).unwrap())
            .spawn()
            .unwrap();
        let moment = Duration::from_millis(rng.random_range(30..400));
        tokio::select! {
            status = child.wait() => {
                let status = status.unwrap();
                let stderr = std::fs::read_to_string(r.dir.path().join("stderr.txt")).unwrap_or_default();
                assert!(status.success(), "finished early with {status}: {stderr}");
                break;
            }
            _ = tokio::time::sleep(moment) => {
                child.start_kill().unwrap();
                child.wait().await.unwrap();
                killed += 1;
            }
        }
    }
    let (code, _, stderr) = r.run(&args, Duration::from_secs(300)).await;
    assert_eq!(code, 0, "{stderr}");
    eprintln!(
        "torture: {killed} kills, {} requests",
        r.sim.journal().len()
    );
    assert!(
        killed >= kills.min(3),
        "the run was killed mid-way ({killed} times)"
    );
    assert_exact_outcome(&r, &fleet, &requested, rows.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_fault_kind_with_settling_instances() {
    let instances = env_usize("KEYFLEET_SOAK_INSTANCES", 1500);
    let mix = Mix {
        windows: 0.0,
        running: 0.0,
        shutdown: 0.0,
        stop_charging: 0.0,
        banned: 0.0,
        frozen: 0.0,
        settling: 0.05,
        busy: 0.05,
        busy_for: Duration::from_secs(2),
        settle_after: Duration::from_millis(1500),
        ..Mix::default()
    };
    let fleet = Fleet::generate(instances, 99, &mix);
    assert!(
        fleet
            .instances()
            .iter()
            .any(|i| i.state == InstanceState::Stopping || i.state == InstanceState::Rebooting)
    );
    // Remove every key but the last of each instance: many distinct key sets, many jobs.
    let mut rows = Vec::new();
    for instance in fleet.instances() {
        for k in &instance.key_ids[..instance.key_ids.len().saturating_sub(1).max(1)] {
            rows.push((
                instance.instance_id.clone(),
                k.clone(),
                instance.region.clone(),
            ));
        }
    }
    let requested: BTreeSet<_> = rows
        .iter()
        .map(|(i, k, _)| (i.clone(), k.clone()))
        .collect();
    let config = SimConfig {
        rate: 0,
        faults: every_fault(0.25),
        latency: (Duration::ZERO, Duration::from_millis(20)),
        jitter: Duration::from_millis(5),
        seed: 5,
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, fleet.clone()).await;
    let input = r.input("soak.csv", &rows);
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                input.to_str().unwrap(),
                "--rate",
                "400",
                "--concurrency",
                "32",
                "--progress",
                "none",
            ],
            Duration::from_secs(600),
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let stats = r.sim.stats();
    eprintln!(
        "soak: {} pairs, {} requests, {:?}",
        rows.len(),
        r.sim.journal().len(),
        stats.requests
    );
    let outcomes = &stats.requests["DisassociateInstancesKeyPairs"];
    for fault in [
        "MutexOperation.TaskRunning",
        "OperationDenied.InstanceOperationInProgress",
        "InternalServerError",
        keyfleet::sim::DROPPED_BEFORE_APPLY,
    ] {
        assert!(
            outcomes.get(fault).copied().unwrap_or(0) > 0,
            "no {fault} met: {outcomes:?}"
        );
    }
    assert!(stats.dropped > 0);
    assert_exact_outcome(&r, &fleet, &requested, rows.len()).await;
}
