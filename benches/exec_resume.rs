//! Resume to first request: a run of 1,000,000 pairs (1,000,000 instances losing
//! one shared key: 10,000 jobs of 100 x 1), left as a `kill -9` leaves it half
//! way: 5,000 jobs succeeded with their attempts, 20 jobs in flight with open
//! attempts, and the lease held by a process that no longer exists. Measures the
//! time until the first request leaves:
//!
//! - `in_process`: from `Store::open` to the executor's first call to the API
//!   (and to its arrival at the simulator);
//! - `binary`: from spawning `keyfleet resume` to the simulator's first arrival
//!   (process start, migrations check, input hash check, credentials, client, executor).
//!
//! Also times each step the executor takes before dispatching, and prints the
//! query plans of the queries involved.
//!
//! `cargo bench --bench exec_resume [-- --quick]`; `KEYFLEET_BENCH_PAIRS` (default
//! 1000000, quick 100000), `KEYFLEET_BENCH_REPEAT` (default 3).
//! Target (issue 5): the first request leaves within 1 s of start.

mod exec_common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exec_common as common;
use keyfleet::executor::{self, Api, Call, Counters, ExecConfig, Refused, Reply, StopSignal};
use keyfleet::sim::SimHandle;
use keyfleet::store::queue::{Applied, Finish, LEASE_STALE_AFTER, Lease, Outcome, Write};
use keyfleet::store::{Store, now_ms};
use sqlx::Row;

const TARGET: Duration = Duration::from_secs(1);
/// Jobs left with an open attempt, as a crash leaves the ones in flight.
const IN_FLIGHT_AT_CRASH: i64 = 20;

fn main() {
    let Some(opts) = common::opts("exec_resume") else {
        return;
    };
    common::header("exec_resume", &opts);
    let pairs: usize = common::env_number(
        "KEYFLEET_BENCH_PAIRS",
        if opts.quick { 100_000 } else { 1_000_000 },
    );
    let repeat: usize = common::env_number("KEYFLEET_BENCH_REPEAT", 3);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(resume(pairs, repeat));
}

/// The API client, noting when the first request leaves and then asking the run to stop.
struct FirstCall<A> {
    inner: A,
    first: Mutex<Option<Instant>>,
    stop: StopSignal,
}

impl<A: Api> Api for FirstCall<A> {
    async fn call(&self, call: &Call) -> Result<Reply, Refused> {
        {
            let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(Instant::now);
        }
        self.stop.stop();
        self.inner.call(call).await
    }

    fn endpoint(&self, region: &str) -> String {
        self.inner.endpoint(region)
    }

    fn secret_id(&self) -> String {
        self.inner.secret_id()
    }
}

async fn resume(pairs: usize, repeat: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.csv");
    let db = dir.path().join("keyfleet.db");
    common::write_shared_key_input(&input, pairs).expect("write the input");
    let started = Instant::now();
    let (store, run_id, jobs) = common::plan(&db, &input).await;
    println!(
        "exec_resume setup pairs={pairs} jobs={jobs} plan_s={:.1}",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    half_done(&store, run_id, jobs).await;
    crash(&store, run_id).await;
    println!(
        "exec_resume setup half_done_and_crashed_s={:.1}",
        started.elapsed().as_secs_f64()
    );
    query_plans(&store, run_id).await;
    store.close().await;

    let fleet = common::one_key_shared(pairs);
    let simulator = common::start_sim(
        common::sim_config(10, Duration::ZERO, (Duration::ZERO, Duration::ZERO)),
        fleet,
    )
    .await;
    let sim_started = sim_epoch(&simulator).await;

    steps(&db, run_id).await;
    for n in 0..repeat {
        in_process(&db, run_id, &simulator, sim_started, n).await;
    }
    for n in 0..repeat {
        binary(&db, run_id, &simulator, sim_started, n).await;
    }
    simulator.shutdown().await;
}

/// Marks the first half of the jobs succeeded, with one finished attempt each,
/// through the executor's own writes (attempt starts, then successes).
async fn half_done(store: &Store, run_id: i64, jobs: i64) {
    let now = now_ms();
    store.mark_running(run_id).await.expect("mark running");
    let done = store
        .due_jobs(run_id, None, now, jobs / 2)
        .await
        .expect("first half of the jobs");
    let starts: Vec<Write> = done
        .iter()
        .map(|job| Write::Start {
            job_id: job.id,
            started_at: now,
        })
        .collect();
    let started = store.apply(&starts).await.expect("start attempts");
    let finishes: Vec<Write> = done
        .iter()
        .zip(started)
        .map(|(job, applied)| {
            let Applied::Started { attempt_id, .. } = applied else {
                panic!("job {} did not start: {applied:?}", job.id);
            };
            let request_id = format!("prior-{}", job.id);
            Write::Finish(Box::new(Finish {
                kind: keyfleet::store::JobKind::Unbind,
                follow_up: keyfleet::store::queue::FollowUp::default(),
                attempt_id,
                job_id: job.id,
                finished_at: now,
                sent_at: now,
                latency_ms: 150,
                http_status: Some(200),
                request_id: Some(request_id.clone()),
                endpoint: None,
                outcome: Outcome::Succeeded { request_id },
            }))
        })
        .collect();
    store.apply(&finishes).await.expect("record successes");
}

/// Leaves the run as `kill -9` does: the next jobs in flight with open attempts, and
/// the lease held by a process that is gone (its heartbeat still fresh).
async fn crash(store: &Store, run_id: i64) {
    let next = store
        .due_jobs(run_id, None, now_ms(), IN_FLIGHT_AT_CRASH)
        .await
        .expect("next jobs");
    let starts: Vec<Write> = next
        .iter()
        .map(|job| Write::Start {
            job_id: job.id,
            started_at: now_ms(),
        })
        .collect();
    store.apply(&starts).await.expect("open attempts");
    let gone = Lease {
        token: "killed".to_string(),
        pid: dead_pid(),
        host: hostname(),
    };
    store
        .acquire_run(run_id, &gone, LEASE_STALE_AFTER)
        .await
        .expect("the dead process's lease");
}

/// A pid no process can have: one above the kernel's maximum.
fn dead_pid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(i32::MAX as u32, |max| max + 1)
}

/// The host name as the executor's lease records it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

async fn query_plans(store: &Store, run_id: i64) {
    for (name, sql) in [
        (
            "due_jobs",
            "SELECT id FROM jobs WHERE run_id = ?1 AND state = 'queued' AND next_attempt_at <= ?2 \
             ORDER BY next_attempt_at, id LIMIT 40",
        ),
        (
            "pair_counts",
            "SELECT status, COUNT(*) FROM items WHERE run_id = ?1 GROUP BY status",
        ),
        (
            "recover_in_flight",
            "UPDATE attempts SET outcome = 'lost' WHERE finished_at IS NULL \
             AND job_id IN (SELECT id FROM jobs WHERE run_id = ?1)",
        ),
    ] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .bind(run_id)
            .bind(now_ms())
            .fetch_all(store.pool_for_tests())
            .await
            .expect("explain");
        let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
        println!("exec_resume query_plan {name}: {}", plan.join(" | "));
    }
}

/// Times each step the executor takes before its first dispatch, on a fresh crash.
async fn steps(db: &Path, run_id: i64) {
    let t = Instant::now();
    let store = Store::open(db).await.expect("open");
    let open = t.elapsed();
    let t = Instant::now();
    let requeued = store.recover_in_flight(run_id).await.expect("recover");
    let recover = t.elapsed();
    let t = Instant::now();
    store.mark_running(run_id).await.expect("mark running");
    let mark = t.elapsed();
    let t = Instant::now();
    let counts = store.pair_counts(run_id).await.expect("pair counts");
    let count = t.elapsed();
    let t = Instant::now();
    let due = store
        .due_jobs(run_id, None, now_ms(), 40)
        .await
        .expect("due jobs");
    let due_time = t.elapsed();
    println!(
        "exec_resume steps open_ms={:.1} recover_in_flight_ms={:.1} (requeued {requeued}) mark_running_ms={:.1} \
         pair_counts_ms={:.1} (pending {} succeeded {}) due_jobs_ms={:.1} ({} jobs)",
        ms(open),
        ms(recover),
        ms(mark),
        ms(count),
        counts.pending,
        counts.succeeded,
        ms(due_time),
        due.len()
    );
    crash(&store, run_id).await;
    store.close().await;
}

/// `Store::open` then `execute`, as `keyfleet resume` does, until the first request leaves.
async fn in_process(
    db: &Path,
    run_id: i64,
    simulator: &SimHandle,
    sim_started: tokio::time::Instant,
    n: usize,
) {
    let seen = simulator.journal().len();
    let stop = StopSignal::default();
    let api = Arc::new(FirstCall {
        inner: common::client(simulator.endpoint()),
        first: Mutex::new(None),
        stop: stop.clone(),
    });
    let t0 = Instant::now();
    let t0_tokio = tokio::time::Instant::now();
    let store = Store::open(db).await.expect("open");
    let opened = t0.elapsed();
    let summary = executor::execute(
        &store,
        run_id,
        api.clone(),
        &ExecConfig::default(),
        Arc::new(Counters::default()),
        stop,
    )
    .await
    .expect("execute");
    let first = api
        .first
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .expect("a request was sent");
    let sent = first - t0;
    let arrived = arrival(simulator, seen, sim_started, t0_tokio).await;
    println!(
        "exec_resume in_process run={n} open_ms={:.1} first_request_sent_ms={:.1} first_arrival_ms={:.1} \
         requests={} target<={}ms {}",
        ms(opened),
        ms(sent),
        ms(arrived),
        summary.requests,
        TARGET.as_millis(),
        verdict(sent.max(arrived))
    );
    crash(&store, run_id).await;
    store.close().await;
}

/// Spawns `keyfleet resume` and waits for its first request to reach the simulator.
async fn binary(
    db: &Path,
    run_id: i64,
    simulator: &SimHandle,
    sim_started: tokio::time::Instant,
    n: usize,
) {
    let seen = simulator.journal().len();
    let t0 = tokio::time::Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
        .arg("--db")
        .arg(db)
        .arg("--endpoint")
        .arg(simulator.endpoint())
        .args(["resume", &run_id.to_string(), "--progress", "none"])
        .env("TENCENTCLOUD_SECRET_ID", keyfleet::sim::TEST_SECRET_ID)
        .env("TENCENTCLOUD_SECRET_KEY", keyfleet::sim::TEST_SECRET_KEY)
        .env_remove("TENCENTCLOUD_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn keyfleet");
    let arrived = arrival(simulator, seen, sim_started, t0).await;
    // A kill -9, as the next measurement expects to find it.
    let _ = child.kill().await;
    println!(
        "exec_resume binary run={n} first_arrival_ms={:.1} target<={}ms {}",
        ms(arrived),
        TARGET.as_millis(),
        verdict(arrived)
    );
    let store = Store::open(db).await.expect("open");
    crash(&store, run_id).await;
    store.close().await;
}

/// The simulator's clock origin (`JournalEntry::at_ms` counts from it), found with a
/// probe request: it starts after the fleet is loaded, which takes a while for a
/// million instances.
async fn sim_epoch(simulator: &SimHandle) -> tokio::time::Instant {
    let client = common::client(simulator.endpoint());
    let seen = simulator.journal().len();
    let sent = tokio::time::Instant::now();
    client
        .describe_key_pairs(common::REGION, &[common::key_id(0)])
        .await
        .expect("probe the simulator");
    let at_ms = simulator.journal()[seen].at_ms;
    // The probe arrived a fraction of a millisecond after it was sent; at_ms is truncated to
    // whole milliseconds, so arrivals measured from this origin are at most 1 ms early.
    sent - Duration::from_millis(at_ms.max(0) as u64)
}

/// Time from `t0` to the arrival of the first request after the first `seen` ones.
async fn arrival(
    simulator: &SimHandle,
    seen: usize,
    sim_started: tokio::time::Instant,
    t0: tokio::time::Instant,
) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(entry) = simulator.journal().get(seen) {
            let at = sim_started + Duration::from_millis(entry.at_ms.max(0) as u64);
            return at.saturating_duration_since(t0);
        }
        assert!(Instant::now() < deadline, "no request within 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(d: Duration) -> &'static str {
    if d <= TARGET { "MET" } else { "MISSED" }
}
