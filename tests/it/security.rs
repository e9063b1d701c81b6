//! Security checks: the SecretKey never leaves the process (database, -wal, logs at
//! trace level, reports, error output); the simulator refuses a tampered or stale
//! request; the database and reports are readable by their owner only.
//!
//! Each test runs the real binary against an in-process simulator on 127.0.0.1 with a
//! SecretKey found nowhere else, and HOME in a temp dir so no real profile is read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyfleet::secret::Secret;
use keyfleet::sign::{RequestParts, sign};
use keyfleet::sim::{self, Fleet, Instance, SimConfig, SimHandle};
use serde_json::{Value, json};

use crate::support::{Cmd, Output, TempDb};

const GZ: &str = "ap-guangzhou";
/// The SecretKey under test: distinctive, so a match can only be a leak.
const SECRET_KEY: &str = "kfLEAKCANARY7q3z9x1w5v8u2t6s4r0p";
const SECRET_ID: &str = "AKIDkeyfleetSecurityTest0000000000001";
/// A wrong key that must not show up either.
const WRONG_KEY: &str = "kfWRONGCANARY0a9b8c7d6e5f4g3h2i1j";

async fn start_sim(latency: Duration, fleet: Fleet) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let config = SimConfig {
        secret_id: SECRET_ID.to_string(),
        secret_key: Secret::new(SECRET_KEY.to_string()),
        rate: 0,
        latency: (latency, latency),
        ..SimConfig::default()
    };
    sim::start(listener, config, fleet)
        .await
        .expect("start sim")
}

/// Six instances with different key sets, so the plan has several jobs; the input
/// asks to remove every binding.
fn fleet_and_input() -> (Fleet, String) {
    let mut fleet = Fleet::new();
    let mut csv = String::from("instance_id,key_id,region\n");
    for n in 1..=6u32 {
        let instance = format!("ins-0000000{n}");
        let keys: Vec<String> = (1..=n.min(3)).map(|k| format!("skey-0000000{k}")).collect();
        for key in &keys {
            csv.push_str(&format!("{instance},{key},{GZ}\n"));
        }
        fleet = fleet.with(Instance::new(instance, GZ).keys(keys));
    }
    (fleet, csv)
}

/// A `keyfleet` command with the credentials in the environment and HOME in `home`.
fn keyfleet(home: &Path, key: &str, args: &[&str]) -> Cmd {
    Cmd::new(args)
        .env("HOME", home)
        .env("TENCENTCLOUD_SECRET_ID", SECRET_ID)
        .env("TENCENTCLOUD_SECRET_KEY", key)
}

/// Fails if `needle` (or its hex form) occurs anywhere in `haystack`.
fn assert_absent(what: &str, haystack: &[u8], needle: &str) {
    for form in [needle.to_string(), hex::encode(needle)] {
        let found = haystack
            .windows(form.len())
            .any(|w| w.eq_ignore_ascii_case(form.as_bytes()));
        assert!(!found, "the SecretKey appears in {what}");
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_appears_nowhere_and_files_are_owner_only() {
    let (fleet, csv) = fleet_and_input();
    let before = fleet.bindings();
    let simulator = start_sim(Duration::from_millis(40), fleet).await;
    let db = TempDb::new();
    let home = db.dir.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, csv).expect("input");
    let report = db.dir.path().join("report.csv");
    let endpoint = simulator.endpoint();

    let db_path = db.path.clone();
    let (run, wal_mode) = {
        let home = home.clone();
        let input = input.clone();
        tokio::task::spawn_blocking(move || {
            let running = keyfleet(
                &home,
                SECRET_KEY,
                &[
                    "-vvv",
                    "--db",
                    db_path.to_str().unwrap(),
                    "--endpoint",
                    &endpoint,
                    "run",
                    input.to_str().unwrap(),
                    "--progress",
                    "none",
                    "--concurrency",
                    "1",
                ],
            )
            .env("RUST_LOG", "trace")
            .spawn();
            // The -wal exists while the run holds the database open: catch its mode then.
            let wal = PathBuf::from(format!("{}-wal", db_path.display()));
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut wal_mode = None;
            while wal_mode.is_none() && std::time::Instant::now() < deadline {
                if wal.exists() {
                    wal_mode = Some(mode(&wal));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (running.wait(), wal_mode)
        })
        .await
        .expect("run")
    };
    assert_eq!(run.code, Some(0), "{}", run.stderr_text());
    assert!(
        run.stderr_text().contains("TRACE"),
        "not the most verbose level: {}",
        run.stderr_text()
    );
    let after = simulator.fleet().bindings();
    assert!(
        after.is_empty() && !before.is_empty(),
        "left bound: {after:?}"
    );

    let db_arg = db.path.to_str().unwrap().to_string();
    let report_csv = keyfleet(
        &home,
        SECRET_KEY,
        &[
            "--db",
            &db_arg,
            "report",
            "--output",
            report.to_str().unwrap(),
        ],
    )
    .run();
    assert_eq!(report_csv.code, Some(0), "{}", report_csv.stderr_text());
    let mut outputs: Vec<(&str, &Output)> = vec![("the run", &run), ("report", &report_csv)];
    let others: Vec<(&str, Output)> = [
        ("report json", vec!["report", "--format", "json"]),
        ("status", vec!["status", "--json"]),
        ("runs", vec!["runs", "--json"]),
        ("resume", vec!["-vvv", "resume", "--progress", "none"]),
    ]
    .into_iter()
    .map(|(what, args)| {
        let mut all = vec!["--db", db_arg.as_str()];
        all.extend(args);
        (
            what,
            keyfleet(&home, SECRET_KEY, &all)
                .env("RUST_LOG", "trace")
                .run(),
        )
    })
    .collect();
    outputs.extend(others.iter().map(|(what, out)| (*what, out)));
    for (what, out) in outputs {
        assert_absent(&format!("stdout of {what}"), &out.stdout, SECRET_KEY);
        assert_absent(&format!("stderr of {what}"), &out.stderr, SECRET_KEY);
    }
    // Every byte of every file the runs left: the database, any -wal/-shm, the report, HOME.
    let files = files_under(db.dir.path());
    assert!(files.contains(&db.path) && files.contains(&report));
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        assert_absent(&file.display().to_string(), &bytes, SECRET_KEY);
    }

    #[cfg(unix)]
    {
        assert_eq!(mode(&db.path), 0o600, "database mode");
        assert_eq!(mode(&report), 0o600, "report mode");
        let wal_mode = wal_mode.expect("a -wal file while the run was open");
        assert_eq!(wal_mode, 0o600, "-wal mode while running");
        for suffix in ["-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", db.path.display()));
            if path.exists() {
                assert_eq!(mode(&path), 0o600, "{suffix} mode");
            }
        }
    }
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_names_auth_failure_but_not_the_key() {
    let (fleet, csv) = fleet_and_input();
    let before = fleet.bindings();
    let simulator = start_sim(Duration::ZERO, fleet).await;
    let db = TempDb::new();
    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, csv).expect("input");
    let endpoint = simulator.endpoint();
    let (home, db_arg) = (db.dir.path().to_path_buf(), db.path.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        keyfleet(
            &home,
            WRONG_KEY,
            &[
                "-vvv",
                "--db",
                &db_arg,
                "--endpoint",
                &endpoint,
                "run",
                input.to_str().unwrap(),
                "--progress",
                "none",
            ],
        )
        .env("RUST_LOG", "trace")
        .run()
    })
    .await
    .expect("run");
    let stderr = out.stderr_text();
    assert_eq!(
        out.code,
        Some(4),
        "a fatal error stops the run, resumable: {stderr}"
    );
    assert!(stderr.contains("AuthFailure"), "{stderr}");
    for key in [WRONG_KEY, SECRET_KEY] {
        assert_absent("stderr", &out.stderr, key);
        assert_absent("stdout", &out.stdout, key);
    }
    for file in files_under(db.dir.path()) {
        assert_absent(
            &file.display().to_string(),
            &std::fs::read(&file).unwrap(),
            WRONG_KEY,
        );
    }
    assert_eq!(simulator.fleet().bindings(), before, "nothing changed");
    simulator.shutdown().await;
}

/// A signed `DisassociateInstancesKeyPairs`, sent as given; `body` may differ from what was signed.
async fn send_signed(endpoint: &str, signed_body: &str, sent_body: &str, timestamp: i64) -> Value {
    let host = endpoint.trim_start_matches("http://").to_string();
    let headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("Host", host),
    ];
    let parts = RequestParts {
        method: "POST",
        path: "/",
        query: "",
        headers: headers.iter().map(|(n, v)| (*n, v.as_str())).collect(),
        payload: signed_body.as_bytes(),
    };
    let signature = sign(
        &parts,
        sim::SERVICE,
        timestamp,
        SECRET_ID,
        &Secret::new(SECRET_KEY.to_string()),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut request = client
        .post(format!("{endpoint}/"))
        .body(sent_body.to_string());
    for (name, value) in &headers {
        request = request.header(*name, value);
    }
    request
        .header("X-TC-Action", "DisassociateInstancesKeyPairs")
        .header("X-TC-Version", sim::API_VERSION)
        .header("X-TC-Region", GZ)
        .header("X-TC-Timestamp", timestamp.to_string())
        .header("Authorization", signature.authorization)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("JSON reply")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::test]
async fn the_simulator_refuses_a_changed_body_and_a_stale_timestamp() {
    let fleet = Fleet::new()
        .with(Instance::new("ins-00000001", GZ).keys(["skey-00000001"]))
        .with(Instance::new("ins-00000002", GZ).keys(["skey-00000001"]));
    let simulator = start_sim(Duration::ZERO, fleet).await;
    let endpoint = simulator.endpoint();
    let code = |reply: &Value| {
        reply["Response"]["Error"]["Code"]
            .as_str()
            .map(str::to_string)
    };
    let asked = json!({"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-00000001"]}).to_string();
    let swapped = json!({"InstanceIds": ["ins-00000002"], "KeyIds": ["skey-00000001"]}).to_string();

    // The same signature over another body: refused, and nothing applied.
    let replayed = send_signed(&endpoint, &asked, &swapped, now_secs()).await;
    assert_eq!(
        code(&replayed).as_deref(),
        Some("AuthFailure.SignatureFailure"),
        "{replayed}"
    );
    // Signed 400 s ago (the API allows 300): refused as expired.
    let stale = send_signed(&endpoint, &asked, &asked, now_secs() - 400).await;
    assert_eq!(
        code(&stale).as_deref(),
        Some("AuthFailure.SignatureExpire"),
        "{stale}"
    );
    let untouched: BTreeSet<_> = simulator.fleet().bindings();
    assert_eq!(untouched.len(), 2, "nothing applied: {untouched:?}");

    // The control: the very same request, fresh and untampered, is applied.
    let fresh = send_signed(&endpoint, &asked, &asked, now_secs()).await;
    assert_eq!(code(&fresh), None, "{fresh}");
    let left: Vec<_> = simulator.fleet().bindings().into_iter().collect();
    assert_eq!(
        left,
        [("ins-00000002".to_string(), "skey-00000001".to_string())]
    );
    simulator.shutdown().await;
}

#[test]
#[should_panic(expected = "the SecretKey appears in")]
fn the_leak_check_finds_a_key_in_hex() {
    let mut bytes = b"prefix ".to_vec();
    bytes.extend(hex::encode(SECRET_KEY).to_uppercase().into_bytes());
    assert_absent("a sample", &bytes, SECRET_KEY);
}
