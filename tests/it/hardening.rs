//! The 2026-12-07 audit's findings, each reproduction turned into a test (issue 26):
//! M1, `discover` is complete or says it is not (a fake endpoint whose listing
//! changes mid-walk, and the simulator's changing fleet); L1, `--resolve` decides
//! what is loopback; L2, region names from DescribeRegions; L3, a token alone;
//! L4, the migration lock file; L5, job rows checked against the plan.
//!
//! The fake endpoint here is a few lines of std networking on 127.0.0.1 that answer
//! each action with what the test's handler says; it checks no signature.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use keyfleet::sim::{Churn, Fleet, Instance, SimConfig};

use crate::support::{Cmd, Rehearsal, TempDb, ins, key};

const GZ: &str = "ap-guangzhou";
const LEAKED: &str = "skey-leak0001";
const LIMIT: Duration = Duration::from_secs(60);

/// What the fake endpoint was asked: (action, region, body).
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A CVM stand-in on 127.0.0.1: `handler(action, region, body)` gives the
/// `Response` object (a RequestId is added). Each connection gets one reply.
struct FakeCvm {
    endpoint: String,
    port: u16,
    seen: Seen,
}

impl FakeCvm {
    fn start(handler: impl Fn(&str, &str, &Value) -> Value + Send + Sync + 'static) -> FakeCvm {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("address").port();
        let seen: Seen = Arc::default();
        let (log, handler) = (seen.clone(), Arc::new(handler));
        // Detached: it ends with the test binary; each connection has a read timeout.
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (log, handler) = (log.clone(), handler.clone());
                std::thread::spawn(move || serve_one(stream, n, &log, &*handler));
            }
        });
        FakeCvm {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            seen,
        }
    }

    fn seen(&self) -> Vec<(String, String, Value)> {
        self.seen.lock().expect("log").clone()
    }
}

fn serve_one(
    mut stream: std::net::TcpStream,
    n: usize,
    log: &Seen,
    handler: &(dyn Fn(&str, &str, &Value) -> Value + Send + Sync),
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let (mut bytes, mut buf) = (Vec::new(), [0u8; 8192]);
    let head_end = loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => bytes.extend_from_slice(&buf[..k]),
        }
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let length: usize = header("content-length:").parse().unwrap_or(0);
    while bytes.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => bytes.extend_from_slice(&buf[..k]),
        }
    }
    // Header names are lowercased with the head; the values we need are ids anyway.
    let (action, region) = (header("x-tc-action:"), header("x-tc-region:"));
    let action = canonical_action(&action);
    let body: Value = serde_json::from_slice(&bytes[head_end..]).unwrap_or(Value::Null);
    log.lock()
        .expect("log")
        .push((action.clone(), region.clone(), body.clone()));
    let mut response = handler(&action, &region, &body);
    response["RequestId"] = json!(format!("fake-{n}"));
    let text = json!({ "Response": response }).to_string();
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        )
        .as_bytes(),
    );
}

fn canonical_action(lower: &str) -> String {
    [
        "DescribeInstances",
        "DescribeKeyPairs",
        "DescribeRegions",
        "DisassociateInstancesKeyPairs",
        "AssociateInstancesKeyPairs",
        "DescribeLaunchTemplates",
        "DescribeLaunchConfigurations",
    ]
    .into_iter()
    .find(|a| a.eq_ignore_ascii_case(lower))
    .unwrap_or(lower)
    .to_string()
}

/// An instance item as DescribeInstances gives it.
fn instance_item(id: &str, keys: &[&str]) -> Value {
    json!({
        "InstanceId": id, "InstanceState": "STOPPED", "OsName": "Ubuntu Server 22.04 LTS 64bit",
        "LoginSettings": { "KeyIds": keys },
    })
}

/// A DescribeInstances page of `ids` (listing or lookup), `holder` holding the key.
fn instances_reply(ids: &[String], body: &Value, holder: &str) -> Value {
    let item = |id: &String| {
        if id == holder {
            instance_item(id, &[LEAKED])
        } else {
            instance_item(id, &[])
        }
    };
    if let Some(asked) = body.get("InstanceIds").and_then(Value::as_array) {
        let set: Vec<Value> = ids
            .iter()
            .filter(|id| asked.iter().any(|a| a == *id))
            .map(item)
            .collect();
        return json!({ "TotalCount": set.len(), "InstanceSet": set });
    }
    let offset = body["Offset"].as_u64().unwrap_or(0) as usize;
    let limit = body["Limit"].as_u64().unwrap_or(20) as usize;
    let set: Vec<Value> = ids.iter().skip(offset).take(limit).map(item).collect();
    json!({ "TotalCount": ids.len(), "InstanceSet": set })
}

fn key_pairs_reply(holders: &[&str]) -> Value {
    json!({ "TotalCount": 1, "KeyPairSet": [{
        "KeyId": LEAKED, "KeyName": "leak", "AssociatedInstanceIds": holders,
    }]})
}

/// What the fake account answers to anything else: no launch template nor launch
/// configuration (discover lists them too), and `InvalidAction` for the rest.
fn other_reply(action: &str) -> Value {
    match action {
        "DescribeLaunchTemplates" => json!({ "TotalCount": 0, "LaunchTemplateSet": [] }),
        "DescribeLaunchConfigurations" => json!({ "TotalCount": 0, "LaunchConfigurationSet": [] }),
        _ => json!({ "Error": { "Code": "InvalidAction", "Message": "not here" } }),
    }
}

fn regions_reply(regions: &[&str]) -> Value {
    let set: Vec<Value> = regions
        .iter()
        .map(|r| json!({ "Region": r, "RegionName": r, "RegionState": "AVAILABLE" }))
        .collect();
    json!({ "TotalCount": set.len(), "RegionSet": set })
}

/// `keyfleet --db DB --endpoint ENDPOINT ARGS` with fake credentials and no HOME.
fn keyfleet(db: &TempDb, endpoint: &str, args: &[&str]) -> Cmd {
    let mut all = vec!["--db", db.path.to_str().unwrap(), "--endpoint", endpoint];
    all.extend_from_slice(args);
    Cmd::new(all)
        .env("TENCENTCLOUD_SECRET_ID", keyfleet::sim::TEST_SECRET_ID)
        .env("TENCENTCLOUD_SECRET_KEY", keyfleet::sim::TEST_SECRET_KEY)
        .timeout(LIMIT)
}

/// `ins-00000000` .. : the review's decimal ids.
fn decimal_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ins-{i:08}")).collect()
}

/// The instance ids of a discover CSV on stdout.
fn found_ids(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap_or_default().to_string())
        .collect()
}

// ---------------------------------------------------------------- M1: discover

/// The audit's M1 reproduction: 201 instances, only `ins-00000100` holding the key,
/// and `ins-00000005` terminated after the page at offset 0 was served. On the old
/// walk this gave exit 0, "200 instances scanned in 3 requests, 0 matching pairs"
/// and "no instance holds skey-leak0001". The pages' TotalCounts disagree (201, 200),
/// so the region is walked again, and the holder is found.
#[test]
fn discover_walks_again_when_the_listing_changes_and_finds_the_holder() {
    let fleet = Arc::new(Mutex::new(decimal_ids(201)));
    let state = fleet.clone();
    let fake = FakeCvm::start(move |action, _region, body| {
        let mut ids = state.lock().unwrap();
        match action {
            "DescribeKeyPairs" => key_pairs_reply(&["ins-00000100"]),
            "DescribeRegions" => regions_reply(&[GZ]),
            "DescribeInstances" => {
                let reply = instances_reply(&ids, body, "ins-00000100");
                if body.get("Offset").and_then(Value::as_u64) == Some(0) {
                    ids.retain(|id| id != "ins-00000005");
                }
                reply
            }
            other => other_reply(other),
        }
    });
    let db = TempDb::new();
    let out = keyfleet(
        &db,
        &fake.endpoint,
        &["discover", "--key", LEAKED, "--regions", GZ],
    )
    .run();
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(0), "{stderr}");
    assert_eq!(
        found_ids(&out.stdout_text()),
        BTreeSet::from(["ins-00000100".to_string()]),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "ap-guangzhou: 200 instances scanned in 5 requests, 1 matching pairs (walked 2 times"
        ),
        "{stderr}"
    );
    let listings = fake
        .seen()
        .iter()
        .filter(|(a, _, b)| a == "DescribeInstances" && b.get("Offset").is_some())
        .count();
    assert_eq!(listings, 5, "3 pages, then 2 once ins-00000005 was gone");
}

/// An instance the listing never shows (a page boundary skipped it on every walk)
/// that DescribeKeyPairs names is looked up by id and added; when the lookup finds
/// it nowhere, discover says so and exits 1.
#[test]
fn a_holder_the_key_pair_names_is_looked_up_by_id_or_reported_missing() {
    for answers_lookup in [true, false] {
        let ids = decimal_ids(150);
        let fake = FakeCvm::start(move |action, _region, body| match action {
            "DescribeKeyPairs" => key_pairs_reply(&["ins-00000100", "ins-00000000"]),
            "DescribeRegions" => regions_reply(&[GZ]),
            "DescribeInstances" if body.get("InstanceIds").is_some() => {
                if answers_lookup {
                    instances_reply(&ids, body, "ins-00000100")
                } else {
                    json!({ "TotalCount": 0, "InstanceSet": [] })
                }
            }
            "DescribeInstances" => {
                // Consistent pages that lack the holder: no count can show the miss.
                let listed: Vec<String> = ids
                    .iter()
                    .filter(|id| *id != "ins-00000100")
                    .cloned()
                    .collect();
                instances_reply(&listed, body, "")
            }
            other => other_reply(other),
        });
        let db = TempDb::new();
        let out = keyfleet(
            &db,
            &fake.endpoint,
            &["discover", "--key", LEAKED, "--regions", GZ],
        )
        .run();
        let stderr = out.stderr_text();
        let lookups: Vec<Value> = fake
            .seen()
            .into_iter()
            .filter(|(a, _, b)| a == "DescribeInstances" && b.get("InstanceIds").is_some())
            .map(|(_, _, b)| b["InstanceIds"].clone())
            .collect();
        assert_eq!(
            lookups,
            [json!(["ins-00000100"])],
            "only the missed holder is looked up (ins-00000000 was listed): {stderr}"
        );
        if answers_lookup {
            assert_eq!(out.code, Some(0), "{stderr}");
            assert_eq!(
                found_ids(&out.stdout_text()),
                BTreeSet::from(["ins-00000100".to_string()])
            );
            assert!(
                stderr.contains("150 instances scanned in 3 requests")
                    && stderr.contains(
                        "1 instances DescribeKeyPairs named were missed by the walk and found by id"
                    ),
                "{stderr}"
            );
        } else {
            assert_eq!(out.code, Some(1), "{stderr}");
            assert!(
                stderr.contains(
                    "INCOMPLETE: DescribeKeyPairs says skey-leak0001 is bound to ins-00000100, which is in none of the regions scanned"
                ) && !stderr.contains("no instance holds"),
                "{stderr}"
            );
        }
    }
}

/// Holders of the leaked key in a simulated fleet: every other instance.
fn churning_fleet(n: usize) -> Fleet {
    (0..n).fold(Fleet::new().with_keys([LEAKED]), |fleet, i| {
        let keys = if i % 2 == 0 {
            vec![key(i % 5), LEAKED.to_string()]
        } else {
            vec![key(i % 5)]
        };
        fleet.with(Instance::new(ins(i), GZ).keys(keys))
    })
}

fn holders_of(fleet: &Fleet) -> BTreeSet<String> {
    fleet
        .instances()
        .iter()
        .filter(|i| i.key_ids.iter().any(|k| k == LEAKED))
        .map(|i| i.instance_id.clone())
        .collect()
}

/// The simulator's changing fleet (`--churn-every`): instances created (with a
/// neighbour's keys, so some hold the leaked key) and terminated while discover
/// walks. Whatever the schedule, discover finds every holder the fleet has when it
/// ends, or exits 1 saying INCOMPLETE. A schedule that stops changing lets a later
/// walk succeed; one that never stops makes every walk fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_finds_every_holder_of_a_changing_fleet_or_exits_1() {
    let schedules = [
        // (every, limit, seed, the exit code this schedule must give)
        (2, Some(3), 1, Some(0)),
        (3, Some(2), 2, Some(0)),
        (1, None, 3, Some(1)),
        (4, Some(6), 4, None),
        (5, Some(8), 5, None),
    ];
    for (every, limit, seed, expected) in schedules {
        let config = SimConfig {
            rate: 0,
            settle_after: Duration::from_secs(3600),
            seed,
            churn: Some(Churn { every, limit }),
            ..SimConfig::default()
        };
        let r = Rehearsal::start(config, churning_fleet(640)).await;
        let (code, stdout, stderr) = r
            .run(&["discover", "--key", LEAKED, "--regions", GZ], LIMIT)
            .await;
        let changes = r.sim.fleet_changes();
        assert!(!changes.is_empty(), "the fleet changed during the walk");
        let found = found_ids(&stdout);
        let holders = holders_of(&r.sim.fleet());
        let label = format!("every {every}, limit {limit:?}, seed {seed}: {changes:?}\n{stderr}");
        match code {
            0 => {
                assert_eq!(found, holders, "exit 0 means every holder: {label}");
                assert!(
                    stderr.contains("walked 2 times") || stderr.contains("walked 3 times"),
                    "{label}"
                );
            }
            1 => assert!(stderr.contains("INCOMPLETE"), "{label}"),
            other => panic!("exit {other}: {label}"),
        }
        if let Some(expected) = expected {
            assert_eq!(Some(code), Some(expected), "{label}");
        }
    }
}

/// The flag that turns the changing fleet on, as an operator would use it.
#[test]
fn the_sim_command_takes_the_churn_flags() {
    let out = Cmd::new(["sim", "--churn-every", "0"]).run();
    assert_eq!(out.code, Some(2), "{}", out.stderr_text());
    let out = Cmd::new(["sim", "--churn-limit", "3"]).run();
    assert_eq!(out.code, Some(2), "--churn-limit needs --churn-every");
    assert!(
        out.stderr_text().contains("--churn-every"),
        "{}",
        out.stderr_text()
    );
    let help = Cmd::new(["sim", "--help"]).run().stdout_text();
    assert!(
        help.contains("--churn-every") && help.contains("--churn-limit"),
        "{help}"
    );
}

// ---------------------------------------------------------------- L2: region names

/// The audit's L2: DescribeRegions listing a region named with an OSC title, a clear
/// screen and a colour reached the terminal raw. Now a name that is not a region
/// name is never walked (no request carries it) and is shown escaped, as a region
/// not walked: discover exits 1.
#[test]
fn a_hostile_region_name_is_not_walked_and_reaches_the_terminal_escaped() {
    const HOSTILE: &str = "ap-x\u{1b}]0;PWNED-TITLE\u{7}\u{1b}[2J\u{1b}[31mRED";
    let fake = FakeCvm::start(|action, _region, body| match action {
        "DescribeKeyPairs" => key_pairs_reply(&[]),
        "DescribeRegions" => regions_reply(&[GZ, HOSTILE]),
        "DescribeInstances" => instances_reply(&decimal_ids(3), body, ""),
        other => other_reply(other),
    });
    let db = TempDb::new();
    let out = keyfleet(
        &db,
        &fake.endpoint,
        &["discover", "--key", LEAKED, "--all-regions"],
    )
    .run();
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(1), "{stderr}");
    let controls: Vec<char> = stderr
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert_eq!(controls, Vec::<char>::new(), "{stderr}");
    assert!(
        stderr.contains("ap-x\\u{1b}]0;PWNED-TITLE") && stderr.contains("KeyFleet.MalformedRegion"),
        "{stderr}"
    );
    let regions: BTreeSet<String> = fake.seen().into_iter().map(|(_, r, _)| r).collect();
    assert_eq!(
        regions,
        BTreeSet::from([GZ.to_string()]),
        "only the real region was asked"
    );
}

// ---------------------------------------------------------------- L1: --resolve and http

/// The audit's L1: `--endpoint http://localhost:P --resolve localhost=0.0.0.0:P` sent
/// the Authorization header and the token in clear to 0.0.0.0 (standing in for a
/// remote address) with no warning, because `localhost` was local by name. Now the
/// rule's address decides: refused like any http endpoint on another host, nothing
/// sent; a rule to 127.0.0.1 still goes out.
#[test]
fn a_resolve_rule_sending_localhost_elsewhere_gets_the_http_refusal() {
    let fake = FakeCvm::start(|_, _, _| json!({ "TotalCount": 0, "InstanceSet": [] }));
    let db = TempDb::new();
    let endpoint = format!("http://localhost:{}", fake.port);
    let describe = [
        "call",
        "describe",
        "--instance",
        "ins-00000001",
        "--region",
        GZ,
    ];
    let away = format!("localhost=0.0.0.0:{}", fake.port);
    let args = [&["--resolve", away.as_str()][..], &describe].concat();
    let out = keyfleet(&db, &endpoint, &args)
        .env("TENCENTCLOUD_TOKEN", "tokSECRETtoken")
        .run();
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(2), "{stderr}");
    assert!(
        stderr.contains("uses http:// to a host that is not this machine"),
        "{stderr}"
    );
    assert!(fake.seen().is_empty(), "bytes were sent: {:?}", fake.seen());

    let here = format!("localhost=127.0.0.1:{}", fake.port);
    let args = [&["--resolve", here.as_str()][..], &describe].concat();
    let out = keyfleet(&db, &endpoint, &args).run();
    let stderr = out.stderr_text();
    assert!(!stderr.contains("not this machine"), "{stderr}");
    assert_eq!(fake.seen().len(), 1, "{stderr}");
}

// ---------------------------------------------------------------- L3: a token alone

/// The audit's L3: `TENCENTCLOUD_TOKEN` alone was ignored, and the request went out
/// signed with the profile's long-term key. Now it is an error naming the variables,
/// and nothing is sent.
#[test]
fn a_token_without_its_key_pair_stops_before_anything_is_sent() {
    let fake = FakeCvm::start(|_, _, _| json!({ "TotalCount": 0, "InstanceSet": [] }));
    let home = tempfile::tempdir().unwrap();
    let tccli = home.path().join(".tccli");
    std::fs::create_dir(&tccli).unwrap();
    let profile = tccli.join("default.credential");
    std::fs::write(
        &profile,
        r#"{"secretId": "AKIDlongterm", "secretKey": "longtermSecretKey000000000000000"}"#,
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = Cmd::new([
        "--endpoint",
        &fake.endpoint,
        "call",
        "describe",
        "--instance",
        "ins-00000001",
        "--region",
        GZ,
    ])
    .env("HOME", home.path())
    .env("TENCENTCLOUD_TOKEN", "tokTEMPORARY")
    .run();
    let stderr = out.stderr_text();
    assert_ne!(out.code, Some(0), "{stderr}");
    assert!(
        stderr.contains("TENCENTCLOUD_TOKEN is set but TENCENTCLOUD_SECRET_ID"),
        "{stderr}"
    );
    assert!(!stderr.contains("tokTEMPORARY"), "{stderr}");
    assert!(
        fake.seen().is_empty(),
        "a request went out: {:?}",
        fake.seen()
    );
}

// ---------------------------------------------------------------- L4: the migration lock

/// The audit's L4 reproduction: `x.db-migrate.lock` owned by nobody, mode 0666, and
/// locked: `keyfleet --db x.db runs` hung silently. Now the lock file is checked like
/// the database and refused at once, naming it and its owner (tests run as root, so
/// the file can be given to nobody, uid 65534). The wait for a lock that is ours is
/// bounded too (`store::tests::a_held_migration_lock_ends_the_wait_naming_its_holder`).
#[cfg(unix)]
#[test]
fn a_migration_lock_file_of_another_user_is_refused_not_waited_for() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let lock = dir.path().join("x.db-migrate.lock");
    let held = std::fs::File::create(&lock).unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&lock, Some(65534), None).expect("chown (tests run as root)");
    held.lock().unwrap();
    let out = Cmd::new(["--db", db.to_str().unwrap(), "runs"])
        .timeout(Duration::from_secs(15))
        .run();
    let stderr = out.stderr_text();
    assert_ne!(out.code, Some(0), "{stderr}");
    assert!(
        stderr.contains("x.db-migrate.lock is owned by uid 65534"),
        "{stderr}"
    );
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
}

// ---------------------------------------------------------------- L5: jobs checked against the plan

/// The audit's L5 reproduction: after `plan c.csv` (one pair), an edit set the job to
/// two keys with ForceStop, and `resume` sent both keys with ForceStop; both were
/// removed while `report` showed the one planned pair. Now the job fails with
/// `KeyFleet.NotPlanned` and nothing is sent for it; a job of the same run that
/// was not changed is sent as planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_row_changed_after_planning_is_not_sent() {
    let fleet = Fleet::new()
        .with(Instance::new("ins-aaaaaaa1", GZ).keys(["skey-aaaaaaa1", "skey-aaaaaaa2"]))
        .with(Instance::new("ins-aaaaaaa2", GZ).keys(["skey-bbbbbbb1", "skey-bbbbbbb2"]));
    let config = SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, fleet).await;
    let rows = [
        ("ins-aaaaaaa1", "skey-aaaaaaa1"),
        ("ins-aaaaaaa2", "skey-bbbbbbb1"),
    ]
    .map(|(i, k)| (i.to_string(), k.to_string(), GZ.to_string()));
    let input = r.input("c.csv", &rows);
    let (code, _, stderr) = r.run(&["plan", input.to_str().unwrap()], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let store = r.store().await;
    let edited = sqlx::query(
        "UPDATE jobs SET key_ids = '[\"skey-aaaaaaa1\",\"skey-aaaaaaa2\"]', force_stop = 1, \
         pair_count = 2 WHERE instance_ids = '[\"ins-aaaaaaa1\"]'",
    )
    .execute(store.pool_for_tests())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(edited, 1);
    store.close().await;

    let (code, _, stderr) = r.run(&["resume", "--progress", "none"], LIMIT).await;
    assert_eq!(code, 1, "a pair failed: {stderr}");
    let sent: Vec<Vec<String>> = r
        .sim
        .journal()
        .iter()
        .filter(|e| e.action == "DisassociateInstancesKeyPairs")
        .map(|e| e.instance_ids.clone())
        .collect();
    assert_eq!(
        sent,
        [vec!["ins-aaaaaaa2".to_string()]],
        "only the unchanged job"
    );
    let fleet = r.sim.fleet();
    assert_eq!(
        fleet.instance("ins-aaaaaaa1").unwrap().key_ids,
        ["skey-aaaaaaa1", "skey-aaaaaaa2"],
        "nothing removed from the changed job's instance"
    );
    assert_eq!(
        fleet.instance("ins-aaaaaaa2").unwrap().key_ids,
        ["skey-bbbbbbb2"]
    );

    let db = r.db.to_str().unwrap();
    let report = Cmd::new(["--db", db, "report", "--format", "json"]).run();
    let rows = report.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let changed = rows
        .iter()
        .find(|row| row["instance_id"] == "ins-aaaaaaa1")
        .unwrap();
    assert_eq!(changed["status"], "failed", "{changed}");
    assert_eq!(changed["error_code"], "KeyFleet.NotPlanned", "{changed}");
    // `resume` again sends nothing either: the job is final.
    let (_, _, stderr) = r.run(&["resume", "--progress", "none"], LIMIT).await;
    let again = r
        .sim
        .journal()
        .iter()
        .filter(|e| e.action == "DisassociateInstancesKeyPairs")
        .count();
    assert_eq!(again, 1, "{stderr}");
}

/// ForceStop alone set on a job of a run planned without `--force-stop` is refused
/// the same way: a RUNNING instance is not stopped because a row says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_stop_a_run_was_not_planned_with_is_not_sent() {
    use keyfleet::sim::InstanceState;
    let fleet = Fleet::new().with(
        Instance::new("ins-aaaaaaa1", GZ)
            .state(InstanceState::Running)
            .keys(["skey-aaaaaaa1", "skey-aaaaaaa2"]),
    );
    let config = SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, fleet).await;
    let rows = [(
        "ins-aaaaaaa1".to_string(),
        "skey-aaaaaaa1".to_string(),
        GZ.to_string(),
    )];
    let input = r.input("c.csv", &rows);
    let (code, _, stderr) = r.run(&["plan", input.to_str().unwrap()], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let store = r.store().await;
    sqlx::query("UPDATE jobs SET force_stop = 1")
        .execute(store.pool_for_tests())
        .await
        .unwrap();
    store.close().await;
    let (code, _, stderr) = r.run(&["resume", "--progress", "none"], LIMIT).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        r.sim
            .journal()
            .iter()
            .filter(|e| e.action == "DisassociateInstancesKeyPairs")
            .count(),
        0,
        "nothing sent: {stderr}"
    );
    let instance = r.sim.fleet().instance("ins-aaaaaaa1").unwrap().clone();
    assert_eq!(instance.state, InstanceState::Running);
    assert_eq!(instance.key_ids, ["skey-aaaaaaa1", "skey-aaaaaaa2"]);
}
