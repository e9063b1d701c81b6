//! Many accounts (issue 23): three accounts, one region each, behind one simulator
//! port (`sim::accounts`): `main` signed with the base credentials, `prod` and `dev`
//! through roles assumed with them (STS AssumeRole, temporary credentials). One run
//! over the three: one input whose `account` column names each row's account, one
//! plan, one execution through `accounts::estate::Estate`, each job signed as its
//! account and paced under that account's identity (account and role, not the
//! temporary SecretId).
//! Each account's simulator limits it to 10 requests in any sliding second, with
//! 20 ms of jitter and 100-300 ms of latency, as `exec_rate`.
//!
//! Measures: requests admitted per second together, up to the moment the first
//! account's last request arrived; each account's most requests in any sliding
//! second; throttles. Target: >= 28/s together, each account <= 10 in every sliding
//! second, no RequestLimitExceeded.
//!
//! `cargo bench --bench exec_accounts [-- --quick]`: 300 one-pair jobs per account
//! (quick: 100); `KEYFLEET_BENCH_ACCOUNT_JOBS=N` sets it.

mod exec_common;

use std::sync::Arc;
use std::time::Duration;

use exec_common as common;
use keyfleet::accounts::Accounts;
use keyfleet::accounts::estate::Estate;
use keyfleet::accounts::session::AccountClient;
use keyfleet::executor::ExecConfig;
use keyfleet::secret::Secret;
use keyfleet::sim::accounts::{SimAccount, SimRole, start_accounts};
use keyfleet::sim::{Fleet, Instance, SimConfig};

const JITTER: Duration = Duration::from_millis(20);
const LATENCY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_millis(300));
const TARGET_TOGETHER_PER_SECOND: f64 = 28.0;
const LIMIT_PER_ACCOUNT: usize = 10;
/// (name, UIN, region).
const ACCOUNTS: [(&str, &str, &str); 3] = [
    ("main", "100000000001", "ap-guangzhou"),
    ("prod", "200000000002", "eu-frankfurt"),
    ("dev", "200000000003", "ap-singapore"),
];
const ACCOUNTS_FILE: &str = r#"
[accounts.main]
[accounts.prod]
role_arn = "qcs::cam::uin/200000000002:roleName/KeyRotation"
[accounts.dev]
role_arn = "qcs::cam::uin/200000000003:roleName/KeyRotation"
"#;

fn main() {
    let Some(opts) = common::opts("exec_accounts") else {
        return;
    };
    common::header("exec_accounts", &opts);
    let jobs = common::env_number(
        "KEYFLEET_BENCH_ACCOUNT_JOBS",
        if opts.quick { 100 } else { 300 },
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(three_accounts(jobs));
}

fn secret_id(name: &str) -> String {
    format!("AKIDbench{name}{:0>24}", 1)
}

fn secret_key(name: &str) -> String {
    format!("bench{name}Key{:0>20}", 2)
}

/// Account `index`'s fleet: `jobs` instances holding one key each (one job each).
fn fleet(index: usize, jobs: usize) -> Fleet {
    let region = ACCOUNTS[index].2;
    let mut fleet = Fleet::new();
    for n in 0..jobs {
        let i = index * jobs + n;
        fleet = fleet.with(Instance::new(common::instance_id(i), region).keys([common::key_id(i)]));
    }
    fleet
}

async fn three_accounts(jobs: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("keyfleet.db");
    let mut sims = Vec::new();
    let mut csv = String::from("instance_id,key_id,region,account\n");
    for (index, (name, uin, _)) in ACCOUNTS.iter().enumerate() {
        let fleet = fleet(index, jobs);
        for instance in fleet.instances() {
            for key in &instance.key_ids {
                csv.push_str(&format!(
                    "{},{key},{},{name}\n",
                    instance.instance_id, instance.region
                ));
            }
        }
        sims.push(SimAccount {
            name: name.to_string(),
            uin: uin.to_string(),
            config: SimConfig {
                secret_id: secret_id(name),
                secret_key: Secret::new(secret_key(name)),
                ..common::sim_config(LIMIT_PER_ACCOUNT as u32, JITTER, LATENCY)
            },
            fleet,
            roles: vec![SimRole {
                name: "KeyRotation".into(),
                trusted: vec![ACCOUNTS[0].1.to_string()],
            }],
        });
    }
    let input = dir.path().join("estate.csv");
    std::fs::write(&input, csv).expect("write the input");
    let (store, run_id, _) = common::plan(&db, &input).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let estate = start_accounts(listener, sims, Some("main"))
        .await
        .expect("start the estate");
    let base = keyfleet::api::CvmClient::new(keyfleet::api::ClientConfig::new(
        estate.endpoint(),
        keyfleet::credentials::Credentials {
            secret_id: secret_id("main"),
            secret_key: Secret::new(secret_key("main")),
            token: None,
            source: "benchmark".into(),
        },
    ))
    .expect("build the client");
    let accounts = Accounts::parse(std::path::Path::new("bench.toml"), ACCOUNTS_FILE)
        .expect("the accounts file");
    let config = ExecConfig {
        rate: 10.0,
        concurrency: 20,
        isolate_accounts: true,
        ..ExecConfig::default()
    };
    let named = ACCOUNTS
        .iter()
        .map(|(name, ..)| {
            let account = accounts.get(name, "the benchmark").expect("an account");
            let client = AccountClient::new(account, &base, &|_| Err("no profiles".into()))
                .expect("the account's client");
            (name.to_string(), client.into_client())
        })
        .collect();
    let api = Arc::new(Estate::new(base.clone(), named));
    let started = std::time::Instant::now();
    let summary = common::execute(&store, run_id, api, &config).await;
    let elapsed = started.elapsed().as_secs_f64();
    // Each account's admitted arrivals, from its own simulator's journal.
    let mut arrivals: Vec<Vec<i64>> = Vec::new();
    let mut throttled = 0;
    for (name, ..) in ACCOUNTS {
        let sim = estate.account(name).expect("the account's simulator");
        throttled += sim.stats().throttled;
        let mut at: Vec<i64> = sim
            .journal()
            .iter()
            .filter(|e| common::admitted(e))
            .map(|e| e.at_ms)
            .collect();
        at.sort_unstable();
        arrivals.push(at);
    }
    // Each simulator counts at_ms from its own start; they start within milliseconds
    // of one another, before any request, so the spans compare.
    let first = arrivals
        .iter()
        .filter_map(|a| a.first())
        .copied()
        .min()
        .unwrap_or(0);
    let together_end = arrivals
        .iter()
        .filter_map(|a| a.last())
        .copied()
        .min()
        .unwrap_or(first);
    let admitted_together = arrivals
        .iter()
        .flatten()
        .filter(|&&at| at <= together_end)
        .count() as f64;
    let together = admitted_together / ((together_end - first).max(1) as f64 / 1000.0);
    let max_per_account: Vec<usize> = arrivals.iter().map(|a| max_in_any_second(a)).collect();
    let finished = summary.stopped.is_none() && summary.pairs.succeeded as usize == 3 * jobs;
    let met = together >= TARGET_TOGETHER_PER_SECOND
        && max_per_account.iter().all(|&m| m <= LIMIT_PER_ACCOUNT)
        && throttled == 0
        && finished;
    let assumed = estate.assumed().len();
    println!(
        "exec_accounts case=three_accounts jobs={jobs}x3 sim_rate=10 per account keyfleet_rate=10 \
         concurrency=20 finished={finished} elapsed_s={elapsed:.1} assume_role_calls={assumed} \
         max_in_any_second_per_account={max_per_account:?} sim_throttled={throttled} \
         together_per_s={together:.3} target>=28 {}",
        if met { "MET" } else { "MISSED" }
    );
    store.close().await;
    estate.shutdown().await;
}

/// The most arrivals (sorted, ms) within any window of 1000 ms.
fn max_in_any_second(sorted: &[i64]) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= 1000 {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}
