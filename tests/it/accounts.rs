//! Many accounts (issue 23): three simulated accounts behind one port, one leaked
//! public key imported under a different id in each. The operator's base
//! credentials are the `main` account's; `prod` and `dev` are reached by assuming a
//! role in each (STS AssumeRole), with temporary credentials that expire.

use std::sync::Arc;
use std::time::Duration;

use keyfleet::accounts::session::{AccountClient, TOKEN_FAILURE};
use keyfleet::accounts::{Accounts, Member};
use keyfleet::api::{ClientConfig, CvmClient};
use keyfleet::credentials::Credentials;
use keyfleet::cvm::Action;
use keyfleet::executor::{Api, Call, ExecConfig, StopSignal};
use keyfleet::lifecycle::{Lifecycle, Unobserved};
use keyfleet::plan::{PlanOptions, plan_input};
use keyfleet::secret::Secret;
use keyfleet::sim::accounts::{MultiSimHandle, SimAccount, SimRole, start_accounts};
use keyfleet::sim::{Fleet, Instance, KeyPair, SimConfig};
use keyfleet::store::Store;
use serde_json::json;

use crate::support::{ins, key};

pub(crate) const LEAKED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g leaked@laptop";
pub(crate) const MAIN_UIN: &str = "100000000001";
pub(crate) const ROLE: &str = "KeyRotation";

/// The estate: (name, UIN, region, the leaked key's id there, instances).
pub(crate) const ACCOUNTS: [(&str, &str, &str, usize, usize); 3] = [
    ("main", MAIN_UIN, "ap-guangzhou", 0xa001, 4),
    ("prod", "200000000002", "eu-frankfurt", 0xb001, 5),
    ("dev", "200000000003", "ap-singapore", 0xc001, 3),
];

pub(crate) fn secret_id(name: &str) -> String {
    format!("AKID{name}{:0>32}", name.len())
}

pub(crate) fn secret_key(name: &str) -> String {
    format!("{name}SimulatorKey{:0>20}", 7)
}

/// Each account: instances holding its id of the leaked key and one innocent key.
pub(crate) fn sim_account(index: usize) -> SimAccount {
    let (name, uin, region, leaked, count) = ACCOUNTS[index];
    let innocent = key(0x1000 + index);
    let mut fleet = Fleet::new();
    for n in 0..count {
        let mut instance = Instance::new(ins(index * 0x100 + n), region);
        instance.key_ids = vec![key(leaked), innocent.clone()];
        fleet.instances.push(instance);
    }
    fleet.key_pairs.push(KeyPair {
        key_id: key(leaked),
        name: "laptop".into(),
        public_key: LEAKED.into(),
        image_ids: Vec::new(),
    });
    let config = SimConfig {
        secret_id: secret_id(name),
        secret_key: Secret::new(secret_key(name)),
        seed: index as u64,
        ..SimConfig::default()
    };
    let trusted = vec![MAIN_UIN.to_string()];
    SimAccount {
        name: name.into(),
        uin: uin.into(),
        config,
        fleet,
        roles: vec![
            SimRole {
                name: ROLE.into(),
                trusted: trusted.clone(),
            },
            SimRole {
                name: keyfleet::accounts::DEFAULT_MEMBER_ROLE.into(),
                trusted,
            },
        ],
    }
}

async fn estate() -> MultiSimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_accounts(listener, (0..3).map(sim_account).collect(), Some("main"))
        .await
        .expect("start the estate")
}

/// The operator's client: the base credentials are `main`'s.
fn base_client(sim: &MultiSimHandle) -> CvmClient {
    let credentials = Credentials {
        secret_id: secret_id("main"),
        secret_key: Secret::new(secret_key("main")),
        token: None,
        source: "test".into(),
    };
    let mut config = ClientConfig::new(sim.endpoint(), credentials);
    config.request_timeout = Duration::from_secs(10);
    CvmClient::new(config).unwrap()
}

pub(crate) const ACCOUNTS_FILE: &str = r#"
[accounts.main]
[accounts.prod]
role_arn = "qcs::cam::uin/200000000002:roleName/KeyRotation"
regions = ["eu-frankfurt"]
[accounts.dev]
role_arn = "qcs::cam::uin/200000000003:roleName/KeyRotation"
session_name = "incident-42"
duration = "1h"
[accounts.staging]
role_arn = "qcs::cam::uin/200000000002:roleName/NoSuchRole"
"#;

fn clients(base: &CvmClient) -> Vec<AccountClient> {
    let accounts = Accounts::parse(std::path::Path::new("accounts.toml"), ACCOUNTS_FILE).unwrap();
    accounts
        .iter()
        .map(|account| {
            AccountClient::new(account, base, &|_| Err("no profiles here".into())).unwrap()
        })
        .collect()
}

fn client<'a>(clients: &'a [AccountClient], name: &str) -> &'a AccountClient {
    clients.iter().find(|c| c.name() == name).unwrap()
}

fn describe(region: &str) -> Call {
    Call {
        action: Action::DescribeInstances,
        region: region.into(),
        body: json!({ "Limit": 100 }),
    }
}

fn instance_ids(reply: &keyfleet::executor::Reply) -> Vec<String> {
    let mut ids: Vec<String> = reply.response["InstanceSet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn each_account_sees_its_own_fleet_through_its_role() {
    let sim = estate().await;
    let base = base_client(&sim);
    let clients = clients(&base);
    for (index, (name, _, region, _, count)) in ACCOUNTS.iter().enumerate() {
        let reply = client(&clients, name)
            .call(&describe(region))
            .await
            .unwrap();
        let want: Vec<String> = (0..*count).map(|n| ins(index * 0x100 + n)).collect();
        assert_eq!(instance_ids(&reply), want, "{name}");
    }
    // The roles were assumed with main's credentials, once each; main signs itself.
    let assumed = sim.assumed();
    assert_eq!(assumed.len(), 2, "{assumed:?}");
    assert!(
        assumed
            .iter()
            .all(|a| a.caller == "main" && a.outcome.is_ok())
    );
    assert_eq!(sim.forwarded_temporary("prod"), 1);
    assert_eq!(sim.forwarded_temporary("main"), 0);
    // The limiter identity is the account and its role, not a temporary SecretId.
    let prod = client(&clients, "prod");
    assert_eq!(
        prod.secret_id(),
        "account prod (role qcs::cam::uin/200000000002:roleName/KeyRotation)"
    );
    assert!(!client(&clients, "dev").secret_id().contains("AKIDtmp"));
    sim.shutdown().await;
}

#[tokio::test]
async fn an_account_whose_role_is_missing_is_refused_alone() {
    let sim = estate().await;
    let base = base_client(&sim);
    let clients = clients(&base);
    let refused = client(&clients, "staging")
        .call(&describe("eu-frankfurt"))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "ResourceNotFound.RoleNotFound");
    assert!(refused.request_id.is_some(), "{refused:?}");
    for name in ["main", "prod", "dev"] {
        let region = ACCOUNTS.iter().find(|a| a.0 == name).unwrap().2;
        client(&clients, name)
            .call(&describe(region))
            .await
            .unwrap_or_else(|r| panic!("{name}: {r:?}"));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn temporary_credentials_expire_and_are_refreshed_without_a_failed_request() {
    let sim = estate().await;
    sim.set_credential_lifetime(Some(Duration::from_secs(2)));
    let base = base_client(&sim);
    let clients = clients(&base);
    let prod = client(&clients, "prod");
    // The client of the first credentials, kept past their expiry: refused.
    let first = prod.client().await.unwrap();
    // 4.5 s of calls, one every 150 ms: the 2 s credentials are replaced at 1 s.
    let started = tokio::time::Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        prod.call(&describe("eu-frankfurt"))
            .await
            .unwrap_or_else(|r| panic!("call {calls} failed: {r:?}"));
        calls += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(calls >= 20, "{calls}");
    let assumed = sim.assumed().len();
    assert!(
        (3..=6).contains(&assumed),
        "refreshed at half of each 2 s lifetime: {assumed} AssumeRoles"
    );
    let stale = first
        .call_action(
            Action::DescribeInstances,
            "eu-frankfurt",
            &json!({"Limit": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(stale.code(), TOKEN_FAILURE);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_organization_lists_its_members_and_each_is_reached_by_its_role() {
    let sim = estate().await;
    let base = base_client(&sim);
    let members: Vec<Member> = keyfleet::accounts::session::organization_members(&base)
        .await
        .unwrap();
    let uins: Vec<&str> = members.iter().map(|m| m.uin.as_str()).collect();
    assert_eq!(uins, ["200000000002", "200000000003"]);
    let accounts =
        Accounts::from_members(&members, keyfleet::accounts::DEFAULT_MEMBER_ROLE).unwrap();
    for account in accounts.iter() {
        let member = AccountClient::new(account, &base, &|_| Err(String::new())).unwrap();
        let region = if account.name == "200000000002" {
            "eu-frankfurt"
        } else {
            "ap-singapore"
        };
        let reply = member.call(&describe(region)).await.unwrap();
        assert!(!instance_ids(&reply).is_empty(), "{}", account.name);
    }
    sim.shutdown().await;
}

/// One run per account, executed side by side in one process, each under its own
/// credentials and limiter identity: exact per account, and no credential of any
/// kind in the database.
#[tokio::test]
async fn a_run_per_account_unbinds_exactly_that_accounts_key_and_stores_no_secret() {
    let sim = estate().await;
    sim.set_credential_lifetime(Some(Duration::from_secs(3)));
    let base = base_client(&sim);
    let clients = clients(&base);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyfleet.db");
    let store = Store::open(&db).await.unwrap();
    let mut runs = Vec::new();
    for (index, (name, _, region, leaked, count)) in ACCOUNTS.iter().enumerate() {
        let mut csv = String::from("instance_id,key_id,region\n");
        for n in 0..*count {
            csv.push_str(&format!(
                "{},{},{region}\n",
                ins(index * 0x100 + n),
                key(*leaked)
            ));
        }
        let path = dir.path().join(format!("{name}.csv"));
        std::fs::write(&path, csv).unwrap();
        let planned = plan_input(&store, &path, &PlanOptions::default())
            .await
            .unwrap();
        runs.push((name.to_string(), planned.summary.run_id));
    }
    let observer = Unobserved;
    let mut tasks = Vec::new();
    for (name, run_id) in &runs {
        let api = Arc::new(client(&clients, name).clone());
        let lifecycle = Lifecycle {
            store: &store,
            api,
            config: ExecConfig::default(),
            verify_wait: Duration::from_secs(5),
            stop: StopSignal::default(),
            observer: &observer,
        };
        let run_id = *run_id;
        tasks.push(async move { lifecycle.run_to_verified(run_id, true).await });
    }
    let outcomes = futures_join(tasks).await;
    for ((name, _), outcome) in runs.iter().zip(outcomes) {
        let outcome = outcome.unwrap();
        assert_eq!(outcome.summary.stopped, None, "{name}");
        assert!(outcome.verification.unwrap().all_gone(), "{name}");
    }
    for (index, (name, _, _, leaked, count)) in ACCOUNTS.iter().enumerate() {
        let fleet = sim.account(name).unwrap().fleet();
        assert_eq!(fleet.instances.len(), *count);
        for instance in &fleet.instances {
            assert_eq!(instance.key_ids, vec![key(0x1000 + index)], "{name}");
            assert!(!instance.key_ids.contains(&key(*leaked)));
        }
        // Every request of the account reached its own simulator.
        assert!(!sim.account(name).unwrap().journal().is_empty(), "{name}");
    }
    store.close().await;
    let mut bytes = std::fs::read(&db).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("keyfleet.db-wal")) {
        bytes.extend(wal);
    }
    let text = String::from_utf8_lossy(&bytes);
    for (id, secret, token) in sim.issued() {
        assert!(
            !text.contains(&id),
            "a temporary SecretId is in the database"
        );
        assert!(
            !text.contains(secret.expose()),
            "a temporary SecretKey is in the database"
        );
        assert!(!text.contains(token.expose()), "a token is in the database");
    }
    for (name, ..) in ACCOUNTS {
        assert!(!text.contains(&secret_key(name)));
    }
    sim.shutdown().await;
}

/// Runs the futures side by side (the test crate has no `futures` dependency).
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

/// The binary, working as one account at a time (`--accounts FILE --account NAME`):
/// each account's run changes that account's fleet only; the account whose role is
/// missing stops (resumable) naming the account and AssumeRole's code; no temporary
/// credential reaches the database, the log file or the report.
#[tokio::test]
async fn the_binary_works_as_each_account_of_the_file() {
    let sim = estate().await;
    sim.set_credential_lifetime(Some(Duration::from_secs(3)));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyfleet.db");
    let log = dir.path().join("keyfleet.log");
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(&accounts, ACCOUNTS_FILE).unwrap();
    let keyfleet = |account: &str, args: &[&str]| {
        let mut command = tokio::process::Command::new(crate::support::keyfleet_bin());
        command
            .arg("--db")
            .arg(&db)
            .arg("--endpoint")
            .arg(sim.endpoint())
            .arg("--accounts")
            .arg(&accounts)
            .args(["--account", account, "--log-file"])
            .arg(&log)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("TENCENTCLOUD_SECRET_ID", secret_id("main"))
            .env("TENCENTCLOUD_SECRET_KEY", secret_key("main"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        async move {
            let output = tokio::time::timeout(Duration::from_secs(120), command.output())
                .await
                .expect("keyfleet finished in time")
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(!stderr.contains("panicked"), "{stderr}");
            (output.status.code().unwrap_or(-1), stderr)
        }
    };
    let mut inputs = Vec::new();
    for (index, (name, _, region, leaked, count)) in ACCOUNTS.iter().enumerate() {
        let mut csv = String::from("instance_id,key_id,region\n");
        for n in 0..*count {
            csv.push_str(&format!(
                "{},{},{region}\n",
                ins(index * 0x100 + n),
                key(*leaked)
            ));
        }
        let path = dir.path().join(format!("{name}.csv"));
        std::fs::write(&path, csv).unwrap();
        inputs.push(path);
    }
    // The missing role first: prod's rows, as staging. Stopped (4), nothing sent.
    let prod_input = inputs[1].to_str().unwrap();
    let (code, stderr) = keyfleet("staging", &["run", prod_input, "--progress", "none"]).await;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("ResourceNotFound.RoleNotFound"), "{stderr}");
    assert!(stderr.contains("account staging"), "{stderr}");
    assert!(sim.account("prod").unwrap().journal().is_empty());
    // An account the file lacks: a usage error naming the file.
    let (code, stderr) = keyfleet("nosuch", &["run", prod_input, "--progress", "none"]).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("accounts.toml has no [accounts.nosuch]"),
        "{stderr}"
    );
    for ((name, ..), input) in ACCOUNTS.iter().zip(&inputs) {
        let (code, stderr) = keyfleet(
            name,
            &["run", input.to_str().unwrap(), "--progress", "none"],
        )
        .await;
        assert_eq!(code, 0, "{name}: {stderr}");
    }
    for (index, (name, ..)) in ACCOUNTS.iter().enumerate() {
        for instance in sim.account(name).unwrap().fleet().instances {
            assert_eq!(instance.key_ids, vec![key(0x1000 + index)], "{name}");
        }
    }
    // A run is worked on only as the account it was planned for (the newest: dev's).
    let (code, stderr) = keyfleet("prod", &["verify"]).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("was planned for account dev, not prod"),
        "{stderr}"
    );
    let (code, stderr) = keyfleet("dev", &["verify"]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, report) = {
        let mut command = tokio::process::Command::new(crate::support::keyfleet_bin());
        let output = command
            .arg("--db")
            .arg(&db)
            .args(["report", "--format", "json"])
            .env_clear()
            .env("HOME", dir.path())
            .output()
            .await
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    let mut haystack = std::fs::read(&db).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("keyfleet.db-wal")) {
        haystack.extend(wal);
    }
    haystack.extend(std::fs::read(&log).unwrap());
    haystack.extend(report.as_bytes());
    let haystack = String::from_utf8_lossy(&haystack);
    assert_no_temporary_credential(&sim, &haystack, 2);
    assert!(!haystack.contains(&secret_key("main")));
    sim.shutdown().await;
}

/// kill -9 in the middle of one account's run, then `resume` as the same account:
/// the role is assumed again (nothing of the credentials was stored) and the run
/// finishes, every pair of that account and no other account's touched.
#[tokio::test]
async fn kill_9_mid_run_and_resume_as_the_account() {
    const JOBS: usize = 40;
    let mut prod = sim_account(1);
    prod.fleet = Fleet::new();
    for n in 0..JOBS {
        let mut instance = Instance::new(ins(0x4000 + n), "eu-frankfurt");
        instance.key_ids = vec![key(0x4000 + n), key(0x1001)];
        prod.fleet.instances.push(instance);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = start_accounts(listener, vec![sim_account(0), prod], Some("main"))
        .await
        .unwrap();
    sim.set_credential_lifetime(Some(Duration::from_secs(2)));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyfleet.db");
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(&accounts, ACCOUNTS_FILE).unwrap();
    let input = dir.path().join("prod.csv");
    let mut csv = String::from("instance_id,key_id,region\n");
    for n in 0..JOBS {
        csv.push_str(&format!(
            "{},{},eu-frankfurt\n",
            ins(0x4000 + n),
            key(0x4000 + n)
        ));
    }
    std::fs::write(&input, csv).unwrap();
    let command = |args: &[&str]| {
        let mut command = tokio::process::Command::new(crate::support::keyfleet_bin());
        command
            .arg("--db")
            .arg(&db)
            .arg("--endpoint")
            .arg(sim.endpoint())
            .arg("--accounts")
            .arg(&accounts)
            .args(["--account", "prod"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("TENCENTCLOUD_SECRET_ID", secret_id("main"))
            .env("TENCENTCLOUD_SECRET_KEY", secret_key("main"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    };
    let mut child = command(&["run", input.to_str().unwrap(), "--progress", "none"])
        .spawn()
        .unwrap();
    let prod = sim.account("prod").unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while prod.journal().len() < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the run never got going");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let before = prod
        .fleet()
        .instances
        .iter()
        .filter(|i| i.key_ids.len() == 2)
        .count();
    assert!(before > 0, "the kill came after the last unbind");
    let status = tokio::time::timeout(
        Duration::from_secs(120),
        command(&["resume", "--progress", "none"]).status(),
    )
    .await
    .expect("resume finished in time")
    .unwrap();
    assert_eq!(status.code(), Some(0));
    for instance in prod.fleet().instances {
        assert_eq!(
            instance.key_ids,
            vec![key(0x1001)],
            "{}",
            instance.instance_id
        );
    }
    // main's fleet untouched: its journal holds no request.
    assert!(sim.account("main").unwrap().journal().is_empty());
    let assumed = sim.assumed();
    assert!(
        assumed.len() >= 2,
        "the resume assumed the role again: {assumed:?}"
    );
    sim.shutdown().await;
}

/// `--organization --account UIN`: the member is found in the Organization's list and
/// reached through the preset member-access role.
#[tokio::test]
async fn the_binary_works_as_an_organization_member() {
    let sim = estate().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("dev.csv");
    let mut csv = String::from("instance_id,key_id,region\n");
    for n in 0..3 {
        csv.push_str(&format!(
            "{},{},ap-singapore\n",
            ins(0x200 + n),
            key(0xc001)
        ));
    }
    std::fs::write(&input, csv).unwrap();
    let output = tokio::process::Command::new(crate::support::keyfleet_bin())
        .arg("--db")
        .arg(dir.path().join("keyfleet.db"))
        .arg("--endpoint")
        .arg(sim.endpoint())
        .args(["--organization", "--account", "200000000003", "run"])
        .arg(&input)
        .args(["--progress", "none"])
        .env_clear()
        .env("HOME", dir.path())
        .env("TENCENTCLOUD_SECRET_ID", secret_id("main"))
        .env("TENCENTCLOUD_SECRET_KEY", secret_key("main"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for instance in sim.account("dev").unwrap().fleet().instances {
        assert_eq!(instance.key_ids, vec![key(0x1002)]);
    }
    let assumed = sim.assumed();
    assert_eq!(assumed.len(), 1, "{assumed:?}");
    assert_eq!(
        assumed[0].role_arn,
        "qcs::cam::uin/200000000003:roleName/OrganizationAccessControlRole"
    );
    assert!(sim.account("prod").unwrap().journal().is_empty());
    sim.shutdown().await;
}

/// `keyfleet sim --add-account`: the command-line simulator of several accounts, and
/// `call` working as one of them through its role.
#[tokio::test]
async fn keyfleet_sim_serves_several_accounts_from_the_command_line() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let fleet_file = dir.path().join("prod.json");
    let prod_fleet = Fleet::new().with(Instance::new(ins(0x77), "eu-frankfurt").keys([key(0x77)]));
    std::fs::write(&fleet_file, prod_fleet.to_json_pretty()).unwrap();
    let mut sim = tokio::process::Command::new(crate::support::keyfleet_bin())
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--generate",
            "2",
            "--seed",
            "1",
        ])
        .arg("--add-account")
        .arg(format!("prod=200000000002:{}", fleet_file.display()))
        .env_clear()
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = sim.stdout.take().unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("the simulator printed its line")
    .unwrap();
    let printed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(printed["accounts"][0]["name"], "prod");
    assert_eq!(
        printed["accounts"][0]["roles"][0],
        "qcs::cam::uin/200000000002:roleName/KeyRotation"
    );
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        "[accounts.prod]\nrole_arn = \"qcs::cam::uin/200000000002:roleName/KeyRotation\"\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(crate::support::keyfleet_bin())
        .arg("--endpoint")
        .arg(printed["endpoint"].as_str().unwrap())
        .arg("--accounts")
        .arg(&accounts)
        .args([
            "--account",
            "prod",
            "--region",
            "eu-frankfurt",
            "call",
            "describe",
        ])
        .args(["--instance", &ins(0x77)])
        .env_clear()
        .env("HOME", dir.path())
        .env(
            "TENCENTCLOUD_SECRET_ID",
            printed["secret_id"].as_str().unwrap(),
        )
        .env(
            "TENCENTCLOUD_SECRET_KEY",
            printed["secret_key"].as_str().unwrap(),
        )
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&key(0x77)), "{stdout}");
    sim.start_kill().unwrap();
    sim.wait().await.unwrap();
}

/// None of the (at least `issued`) temporary credentials the simulator handed out,
/// SecretId, SecretKey or token, is in `haystack` (a database, logs, reports).
pub(crate) fn assert_no_temporary_credential(sim: &MultiSimHandle, haystack: &str, issued: usize) {
    let credentials = sim.issued();
    assert!(credentials.len() >= issued, "{} issued", credentials.len());
    for (id, secret, token) in credentials {
        assert!(!haystack.contains(&id), "a temporary SecretId was written");
        assert!(
            !haystack.contains(secret.expose()),
            "a temporary SecretKey was written"
        );
        assert!(!haystack.contains(token.expose()), "a token was written");
    }
}
