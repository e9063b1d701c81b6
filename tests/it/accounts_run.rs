//! One run over many accounts (issue 23): rows carry an `account` column; the run
//! signs each job as its account and paces it under that account's limit; an account
//! whose role cannot be assumed is INCOMPLETE while the others finish; `resume`
//! retries it; kill -9 and resume across accounts; no temporary credential is
//! written anywhere.

use std::collections::BTreeSet;
use std::time::Duration;

use keyfleet::sim::accounts::{MultiSimHandle, SimAccount, start_accounts};
use keyfleet::sim::audit;
use keyfleet::sim::{Fleet, Instance};
use keyfleet::store::Store;

use crate::accounts::{assert_no_temporary_credential, secret_id, secret_key, sim_account};
use crate::support::{Cmd, Output, audit_rows, ins, key};

/// prod's many instances, each holding a key of its own and prod's innocent key:
/// one job each, so prod's part of the run takes seconds at its 10 requests/s.
const PROD_INSTANCES: usize = 40;
/// dev's instances that the `staging` rows name (dev's account, another role).
const STAGING: [usize; 2] = [0x300, 0x301];

fn accounts_file(staging_role: &str) -> String {
    format!(
        r#"
[accounts.main]
[accounts.prod]
role_arn = "qcs::cam::uin/200000000002:roleName/KeyRotation"
[accounts.dev]
role_arn = "qcs::cam::uin/200000000003:roleName/KeyRotation"
[accounts.staging]
role_arn = "qcs::cam::uin/200000000003:roleName/{staging_role}"
"#
    )
}

/// main (4 instances, the leaked key 0xa001), prod (PROD_INSTANCES, a key each) and dev
/// (3 + the two staging instances, the leaked key 0xc001).
fn prod_account(first: usize, count: usize) -> SimAccount {
    let mut prod = sim_account(1);
    prod.fleet = Fleet::new();
    for n in 0..count {
        let mut instance = Instance::new(ins(first + n), "eu-frankfurt");
        instance.key_ids = vec![key(first + n), key(0x1001)];
        prod.fleet.instances.push(instance);
    }
    prod
}

async fn start(accounts: Vec<SimAccount>) -> MultiSimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_accounts(listener, accounts, Some("main"))
        .await
        .expect("start the estate")
}

/// The rows of the whole estate: (instance, key, region, account).
fn rows(prod_first: usize, prod_count: usize, staging: bool) -> String {
    let mut csv = String::from("instance_id,key_id,region,account\n");
    for n in 0..4 {
        csv.push_str(&format!("{},{},ap-guangzhou,main\n", ins(n), key(0xa001)));
    }
    for n in 0..prod_count {
        let id = prod_first + n;
        csv.push_str(&format!("{},{},eu-frankfurt,prod\n", ins(id), key(id)));
    }
    for n in 0..3 {
        csv.push_str(&format!(
            "{},{},ap-singapore,dev\n",
            ins(0x200 + n),
            key(0xc001)
        ));
    }
    if staging {
        for n in STAGING {
            csv.push_str(&format!(
                "{},{},ap-singapore,staging\n",
                ins(n),
                key(0xc001)
            ));
        }
    }
    csv
}

fn keyfleet(sim: &MultiSimHandle, dir: &std::path::Path, args: &[&str]) -> Cmd {
    Cmd::new(["--db"])
        .args([dir.join("keyfleet.db")])
        .args(["--endpoint", &sim.endpoint(), "--accounts"])
        .args([dir.join("accounts.toml")])
        .args(["--log-file"])
        .args([dir.join("keyfleet.log")])
        .args(args)
        .env("TENCENTCLOUD_SECRET_ID", secret_id("main"))
        .env("TENCENTCLOUD_SECRET_KEY", secret_key("main"))
        .home(dir)
        .timeout(Duration::from_secs(120))
}

async fn run(cmd: Cmd) -> Output {
    tokio::task::spawn_blocking(move || cmd.run())
        .await
        .expect("keyfleet ran")
}

/// Each account was paced under a limiter of its own: the shared pacer (the database's
/// `pacer` table) holds one DisassociateInstancesKeyPairs row per account scope, not
/// one for all. (How fast each went is the benchmark's measure,
/// `benches/exec_accounts.rs`: 10 in any sliding second each, about 29/s together.)
async fn assert_paced_per_account(store: &Store, accounts: i64) {
    let scopes: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT account) FROM pacer WHERE action = 'DisassociateInstancesKeyPairs'",
    )
    .fetch_one(store.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(scopes, accounts, "one limiter per account");
}

/// A fleet's (instance, key) bindings.
type Bindings = BTreeSet<(String, String)>;

/// Each account's pairs of run 1, audited against that account's simulator (from
/// its fleet `before` the run): every promise kept, and something removed.
async fn assert_audited(
    store: &Store,
    sim: &MultiSimHandle,
    accounts: &[(&[&str], &str, &Bindings)],
) {
    for (names, simulator, before) in accounts {
        let outcomes: Vec<_> = store
            .pair_outcomes(1)
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.account.as_deref().is_some_and(|a| names.contains(&a)))
            .collect();
        assert!(!outcomes.is_empty(), "{names:?} have pairs");
        let sim = sim.account(simulator).unwrap();
        let found = audit::audit(
            before,
            &sim.fleet().bindings(),
            &audit_rows(outcomes),
            &sim.journal(),
        );
        assert!(found.is_clean(), "{names:?}: {:#?}", found.violations);
        assert!(found.removed_as_asked > 0, "{names:?}");
    }
}

/// `keyfleet --accounts FILE run rows.csv`: main, prod and dev finish, exactly (each
/// account's simulator audited against that account's pairs), each paced at its own
/// 10/s, prod's temporary credentials refreshed mid-run without a refused request;
/// staging (its role missing) is INCOMPLETE and the run resumable; with the role
/// fixed, `resume` finishes staging. No temporary credential reaches the database,
/// the log or the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_over_several_accounts_isolates_the_refused_one_and_resumes_it() {
    let mut dev = sim_account(2);
    for n in STAGING {
        let mut instance = Instance::new(ins(n), "ap-singapore");
        instance.key_ids = vec![key(0xc001), key(0x1002)];
        dev.fleet.instances.push(instance);
    }
    let sim = start(vec![
        sim_account(0),
        prod_account(0x4000, PROD_INSTANCES),
        dev,
    ])
    .await;
    // prod's part takes about 4 s: its 2 s credentials are refreshed on the way.
    sim.set_credential_lifetime(Some(Duration::from_secs(2)));
    let before: Vec<BTreeSet<(String, String)>> = ["main", "prod", "dev"]
        .iter()
        .map(|name| sim.account(name).unwrap().fleet().bindings())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("accounts.toml"),
        accounts_file("NoSuchRole"),
    )
    .unwrap();
    let input = dir.path().join("estate.csv");
    std::fs::write(&input, rows(0x4000, PROD_INSTANCES, true)).unwrap();

    let first = run(keyfleet(
        &sim,
        dir.path(),
        &["run", input.to_str().unwrap(), "--progress", "none"],
    ))
    .await;
    let stderr = first.stderr_text();
    assert_eq!(first.code, Some(4), "{stderr}");
    assert!(
        stderr.contains("INCOMPLETE: account staging: ResourceNotFound.RoleNotFound"),
        "{stderr}"
    );
    assert!(stderr.contains("by account:"), "{stderr}");
    // Rates per API, endpoint and account: each account's is under its own limit.
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("DisassociateInstancesKeyPairs at")
                && l.contains("as account prod:")),
        "{stderr}"
    );
    // The other accounts were verified: prod's every pair gone.
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("account prod ") && l.contains(&format!("{PROD_INSTANCES} gone"))),
        "{stderr}"
    );
    for (index, name) in ["main", "prod", "dev"].iter().enumerate() {
        let account = sim.account(name).unwrap();
        for instance in account.fleet().instances {
            let staging = STAGING.iter().any(|&n| instance.instance_id == ins(n));
            let expected = if staging {
                vec![key(0xc001), key(0x1002)]
            } else {
                vec![key(0x1000 + index)]
            };
            assert_eq!(
                instance.key_ids, expected,
                "{name} {}",
                instance.instance_id
            );
        }
    }
    // prod's 2 s credentials were assumed again during its 4 s, each time before they
    // expired: no request was refused for them (the front answers those itself).
    let prod_assumed = sim
        .assumed()
        .iter()
        .filter(|a| a.role_arn.contains("200000000002"))
        .count();
    assert!(
        prod_assumed >= 2,
        "prod's credentials were refreshed mid-run"
    );
    assert_eq!(
        sim.token_failures(),
        0,
        "a request went with expired credentials"
    );
    let store = Store::open(&dir.path().join("keyfleet.db")).await.unwrap();
    assert_audited(
        &store,
        &sim,
        &[
            (&["main"], "main", &before[0]),
            (&["prod"], "prod", &before[1]),
        ],
    )
    .await;
    // main, prod, dev, and staging's one refused attempt: four scopes.
    assert_paced_per_account(&store, 4).await;
    let counts = store.account_counts(1).await.unwrap();
    let staging = counts
        .iter()
        .find(|c| c.account.as_deref() == Some("staging"))
        .expect("staging's counts");
    assert_eq!((staging.pairs.pending, staging.pairs.failed), (2, 0));
    drop(store);
    // status and the incident report group by account; each request names its own.
    let status = run(keyfleet(&sim, dir.path(), &["status"])).await;
    let text = status.stdout_text() + &status.stderr_text();
    for name in ["main", "prod", "dev", "staging"] {
        assert!(text.contains(&format!("account {name} ")), "{text}");
    }
    let report = run(keyfleet(&sim, dir.path(), &["report", "--format", "json"])).await;
    let rows = report.json();
    let prod_rows = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["account"] == "prod")
        .count();
    assert_eq!(
        prod_rows, PROD_INSTANCES,
        "the pair report names each row's account"
    );
    let incident = run(keyfleet(
        &sim,
        dir.path(),
        &["report", "--incident", "--format", "json"],
    ))
    .await;
    let incident = incident.json();
    let accounts = incident["run_details"][0]["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 4, "{accounts:?}");
    let requests = incident["requests"].as_array().unwrap();
    let prod_requests = requests.iter().filter(|r| r["account"] == "prod").count();
    assert!(prod_requests >= PROD_INSTANCES, "{prod_requests}");
    assert!(requests.iter().all(|r| r["account"].is_string()));

    // The role fixed, the run resumed: staging's rows go through dev's account.
    std::fs::write(
        dir.path().join("accounts.toml"),
        accounts_file("KeyRotation"),
    )
    .unwrap();
    let second = run(keyfleet(
        &sim,
        dir.path(),
        &["resume", "--progress", "none"],
    ))
    .await;
    assert_eq!(second.code, Some(0), "{}", second.stderr_text());
    for instance in sim.account("dev").unwrap().fleet().instances {
        assert_eq!(
            instance.key_ids,
            vec![key(0x1002)],
            "{}",
            instance.instance_id
        );
    }
    let store = Store::open(&dir.path().join("keyfleet.db")).await.unwrap();
    assert_audited(&store, &sim, &[(&["dev", "staging"], "dev", &before[2])]).await;

    // Nothing of the temporary credentials was written.
    let mut haystack = std::fs::read(dir.path().join("keyfleet.db")).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("keyfleet.db-wal")) {
        haystack.extend(wal);
    }
    haystack.extend(std::fs::read(dir.path().join("keyfleet.log")).unwrap());
    haystack.extend(first.stderr);
    haystack.extend(second.stderr);
    let haystack = String::from_utf8_lossy(&haystack);
    assert_no_temporary_credential(&sim, &haystack, 3);
    sim.shutdown().await;
}

/// kill -9 in the middle of a run over two accounts, then `resume`: every pair of each
/// account done exactly once more where needed, audited per account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_over_accounts_and_resume() {
    const EACH: usize = 30;
    let mut dev = prod_account(0x6000, EACH);
    dev.name = "dev".into();
    dev.uin = "200000000003".into();
    dev.config.secret_id = secret_id("dev");
    dev.config.secret_key = keyfleet::secret::Secret::new(secret_key("dev"));
    for instance in &mut dev.fleet.instances {
        instance.region = "ap-singapore".into();
    }
    let sim = start(vec![sim_account(0), prod_account(0x4000, EACH), dev]).await;
    let before = [
        sim.account("prod").unwrap().fleet().bindings(),
        sim.account("dev").unwrap().fleet().bindings(),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("accounts.toml"),
        accounts_file("KeyRotation"),
    )
    .unwrap();
    let mut csv = String::from("instance_id,key_id,region,account\n");
    for n in 0..EACH {
        csv.push_str(&format!(
            "{},{},eu-frankfurt,prod\n",
            ins(0x4000 + n),
            key(0x4000 + n)
        ));
        csv.push_str(&format!(
            "{},{},ap-singapore,dev\n",
            ins(0x6000 + n),
            key(0x6000 + n)
        ));
    }
    let input = dir.path().join("two.csv");
    std::fs::write(&input, csv).unwrap();
    let running = keyfleet(
        &sim,
        dir.path(),
        &["run", input.to_str().unwrap(), "--progress", "none"],
    )
    .spawn();
    let (prod, dev) = (sim.account("prod").unwrap(), sim.account("dev").unwrap());
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while prod.journal().len() < 8 || dev.journal().len() < 8 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the run never got going in both accounts");
    // SIGKILL: no chance to record anything more.
    let status = std::process::Command::new("kill")
        .args(["-9", &running.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed = tokio::task::spawn_blocking(move || running.wait())
        .await
        .unwrap();
    assert_eq!(killed.code, None, "killed by the signal");
    let left = prod
        .fleet()
        .instances
        .iter()
        .chain(dev.fleet().instances.iter())
        .filter(|i| i.key_ids.len() == 2)
        .count();
    assert!(left > 0, "the kill came after the last unbind");
    let resumed = run(keyfleet(
        &sim,
        dir.path(),
        &["resume", "--progress", "none"],
    ))
    .await;
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr_text());
    for (name, innocent) in [("prod", key(0x1001)), ("dev", key(0x1001))] {
        for instance in sim.account(name).unwrap().fleet().instances {
            assert_eq!(
                instance.key_ids,
                vec![innocent.clone()],
                "{name} {}",
                instance.instance_id
            );
        }
    }
    let store = Store::open(&dir.path().join("keyfleet.db")).await.unwrap();
    assert_audited(
        &store,
        &sim,
        &[
            (&["prod"], "prod", &before[0]),
            (&["dev"], "dev", &before[1]),
        ],
    )
    .await;
    assert_paced_per_account(&store, 2).await;
    assert!(sim.account("main").unwrap().journal().is_empty());
    sim.shutdown().await;
}

/// A live run over two accounts (`--running stop-start --max-down 2`): each account's
/// RUNNING instances are stopped and started in jobs of their own account, the one
/// budget holds in each account's power timeline, every instance is back RUNNING
/// with its leaked key gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_over_two_accounts_keeps_its_budget_and_brings_every_instance_back() {
    use keyfleet::sim::audit::{PowerRules, audit_power_of};
    use keyfleet::sim::{InstanceState, Power};
    const EACH: usize = 5;
    let live = |mut account: SimAccount, region: &str, first: usize| {
        account.config.settle_after = Duration::from_secs(3600);
        account.config.operation_time = Duration::from_millis(50);
        account.config.power = Power {
            stop_time: Duration::from_millis(150),
            start_time: Duration::from_millis(200),
            ..Power::default()
        };
        account.fleet = (0..EACH).fold(Fleet::new(), |fleet, n| {
            fleet.with(
                Instance::new(ins(first + n), region)
                    .state(InstanceState::Running)
                    .keys([key(0xbad1), key(0x600d)]),
            )
        });
        account
    };
    let prod = live(sim_account(1), "eu-frankfurt", 0x4000);
    let dev = live(sim_account(2), "ap-singapore", 0x6000);
    let before = [prod.fleet.clone(), dev.fleet.clone()];
    let sim = start(vec![sim_account(0), prod, dev]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("accounts.toml"),
        accounts_file("KeyRotation"),
    )
    .unwrap();
    let mut csv = String::from("instance_id,key_id,region,account\n");
    for n in 0..EACH {
        csv.push_str(&format!(
            "{},{},eu-frankfurt,prod\n",
            ins(0x4000 + n),
            key(0xbad1)
        ));
        csv.push_str(&format!(
            "{},{},ap-singapore,dev\n",
            ins(0x6000 + n),
            key(0xbad1)
        ));
    }
    let input = dir.path().join("live.csv");
    std::fs::write(&input, csv).unwrap();
    let output = run(keyfleet(
        &sim,
        dir.path(),
        &[
            "run",
            input.to_str().unwrap(),
            "--running",
            "stop-start",
            "--max-down",
            "2",
            "--progress",
            "none",
        ],
    ))
    .await;
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    let rules = PowerRules {
        max_down: 2,
        ..PowerRules::default()
    };
    for (name, before) in ["prod", "dev"].iter().zip(&before) {
        let account = sim.account(name).unwrap();
        let power = audit_power_of(account, before, &rules);
        assert!(power.is_clean(), "{name}: {:#?}", power.violations);
        assert_eq!(power.taken_down, EACH, "{name}: every instance, once");
        for instance in account.fleet().instances {
            assert_eq!(instance.state, InstanceState::Running, "{name}");
            assert_eq!(instance.key_ids, vec![key(0x600d)], "{name}");
        }
    }
    assert!(sim.account("main").unwrap().journal().is_empty());
    sim.shutdown().await;
}
