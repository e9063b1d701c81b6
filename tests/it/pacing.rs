//! One limit shared through the database: a run killed and started again at once,
//! and two runs of different inputs started together, never put more than the
//! limit into any sliding second at the simulator.

use std::time::Duration;

use keyfleet::sim::{Fleet, Instance, SimConfig};

use crate::support::{Rehearsal, ins, key};

const GZ: &str = "ap-guangzhou";
const LIMIT: Duration = Duration::from_secs(120);

/// `n` STOPPED instances from `from`, each holding its own key.
fn fleet(from: usize, n: usize) -> Fleet {
    (from..from + n).fold(Fleet::new(), |fleet, i| {
        fleet.with(Instance::new(ins(i), GZ).keys([key(1000 + i)]))
    })
}

fn rows(from: usize, n: usize) -> Vec<(String, String, String)> {
    (from..from + n)
        .map(|i| (ins(i), key(1000 + i), GZ.to_string()))
        .collect()
}

/// The simulator counts for itself but limits nothing: what arrives is what keyfleet sent.
fn counting_sim() -> SimConfig {
    SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    }
}

/// The most admitted requests of one action in any sliding second of the journal.
fn max_in_any_second(r: &Rehearsal, action: &str) -> usize {
    let times: Vec<i64> = r
        .sim
        .journal()
        .iter()
        .filter(|e| e.action == action && e.code.is_none())
        .map(|e| e.at_ms)
        .collect();
    times
        .iter()
        .enumerate()
        .map(|(i, &t)| times[i..].iter().take_while(|&&u| u < t + 1000).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_at_once_no_second_holds_more_than_the_rate() {
    let r = Rehearsal::start(counting_sim(), fleet(0, 40)).await;
    let input = r.input("in.csv", &rows(0, 40));
    let args = [
        "run",
        input.to_str().unwrap(),
        "--rate",
        "10",
        "--progress",
        "none",
    ];
    let mut child = r.command(&args).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while r.sim.journal().len() < 15 {
        assert!(tokio::time::Instant::now() < deadline, "the run never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // kill -9, and the same command again at once.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let most = max_in_any_second(&r, "DisassociateInstancesKeyPairs");
    assert!(
        most <= 10,
        "{most} in one sliding second across the restart"
    );
    assert!(most >= 9, "and it still went as fast as allowed: {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_started_together_on_one_database_share_the_limit() {
    let mut both = fleet(0, 25);
    for instance in fleet(25, 25).instances {
        both = both.with(instance);
    }
    let r = Rehearsal::start(
        SimConfig {
            rate: 10,
            ..counting_sim()
        },
        both,
    )
    .await;
    let a = r.input("a.csv", &rows(0, 25));
    let b = r.input("b.csv", &rows(25, 25));
    let run = |input: &std::path::Path| {
        let args = [
            "run",
            input.to_str().unwrap(),
            "--rate",
            "10",
            "--progress",
            "none",
        ];
        r.command(&args).output()
    };
    // Both open a new database at the same moment, too.
    let (out_a, out_b) = tokio::time::timeout(LIMIT, async { tokio::join!(run(&a), run(&b)) })
        .await
        .expect("both runs end in time");
    let (out_a, out_b) = (out_a.unwrap(), out_b.unwrap());
    assert!(
        out_a.status.success(),
        "{}",
        String::from_utf8_lossy(&out_a.stderr)
    );
    assert!(
        out_b.status.success(),
        "{}",
        String::from_utf8_lossy(&out_b.stderr)
    );
    let stats = r.sim.stats();
    assert_eq!(stats.throttled, 0, "no throttle");
    for action in ["DisassociateInstancesKeyPairs", "DescribeInstances"] {
        let most = max_in_any_second(&r, action);
        assert!(most <= 10, "{most} {action} in one sliding second");
    }
}
