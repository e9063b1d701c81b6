//! Key rotation against the simulator: the new key is bound and confirmed (by the
//! cloud's own DescribeInstances) before the old one is unbound, instance by instance;
//! an instance whose new key cannot be bound keeps its old one; kill -9 in any phase
//! and the same command end with the same fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use keyfleet::sim::{Fleet, Instance, Os, SimConfig, audit};

use crate::support::{Rehearsal, ins};

const LIMIT: Duration = Duration::from_secs(120);
const GZ: &str = "ap-guangzhou";
const OLD: &str = "skey-0001d000";
const NEW: &str = "skey-00new000";
const OTHER: &str = "skey-0other00";
/// New keys for a rotation in groups (one Associate job per new key).
const NEWS: [&str; 4] = [
    "skey-00new001",
    "skey-00new002",
    "skey-00new003",
    "skey-00new004",
];

fn sim(operation_ms: u64, async_fail: f64, seed: u64) -> SimConfig {
    SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        operation_time: Duration::from_millis(operation_ms),
        async_fail,
        seed,
        ..SimConfig::default()
    }
}

/// `n` instances holding OLD; every tenth is Windows (no key operations), every
/// seventh also holds OTHER.
fn fleet(n: usize) -> Fleet {
    let mut fleet = Fleet::new().with_keys([NEW, OTHER]).with_keys(NEWS);
    for i in 0..n {
        let mut instance = Instance::new(ins(i), GZ);
        instance = if i % 7 == 0 {
            instance.keys([OLD, OTHER])
        } else {
            instance.keys([OLD])
        };
        if i % 10 == 3 {
            instance = instance.os(Os::Windows);
        }
        fleet = fleet.with(instance);
    }
    fleet
}

/// A rotation input: `instance_id,key_id,region,new_key_id`.
fn rotation_csv(r: &Rehearsal, name: &str, rows: &[(String, &str, &str)]) -> PathBuf {
    let mut text = String::from("instance_id,key_id,region,new_key_id\n");
    for (instance, old, new) in rows {
        text.push_str(&format!("{instance},{old},{GZ},{new}\n"));
    }
    let path = r.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `keyfleet run INPUT --progress none EXTRA...`: its exit code and stderr.
async fn run_quietly(r: &Rehearsal, input: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["run", input.to_str().unwrap(), "--progress", "none"];
    args.extend_from_slice(extra);
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    (code, stderr)
}

fn keys_of(fleet: &Fleet) -> BTreeMap<String, BTreeSet<String>> {
    fleet
        .instances()
        .iter()
        .map(|i| {
            (
                i.instance_id.clone(),
                i.key_ids.iter().cloned().collect::<BTreeSet<_>>(),
            )
        })
        .collect()
}

/// The simulator's audit of the newest run: nothing removed that was not asked for,
/// nothing gained but the new keys, every success proven, every rotated instance bound
/// and confirmed before it was unbound, none left keyless.
async fn assert_audit_clean(r: &Rehearsal, before: &Fleet) {
    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let outcomes = crate::support::audit_rows(store.pair_outcomes(run_id).await.unwrap());
    let binds = crate::support::audit_rows(store.bind_outcomes(run_id).await.unwrap());
    store.close().await;
    let result = audit::audit_rotation(
        &before.bindings(),
        &r.sim.fleet().bindings(),
        &outcomes,
        &binds,
        &r.sim.journal(),
    );
    assert!(result.is_clean(), "{:#?}", result.violations);
}

fn report_rows(r: &Rehearsal, csv: &str) -> Vec<BTreeMap<String, String>> {
    let _ = r;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|rec| {
            headers
                .iter()
                .zip(rec.unwrap().iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_binds_confirms_then_unbinds_and_keeps_the_old_key_where_it_cannot_bind() {
    let n = 60;
    let r = Rehearsal::start(sim(150, 0.3, 1), fleet(n)).await;
    let rows: Vec<(String, &str, &str)> = (0..n).map(|i| (ins(i), OLD, NEWS[i % 4])).collect();
    let input = rotation_csv(&r, "rotate.csv", &rows);
    let (code, stderr) = run_quietly(&r, &input, &[]).await;
    // Windows instances cannot be rotated: the run ends with them skipped (exit 1).
    assert_eq!(code, 1, "{stderr}");
    let after = keys_of(&r.sim.fleet());
    for i in 0..n {
        let id = ins(i);
        let mut expected: BTreeSet<String> = BTreeSet::new();
        if i % 10 == 3 {
            expected.insert(OLD.into());
        } else {
            expected.insert(NEWS[i % 4].into());
        }
        if i % 7 == 0 {
            expected.insert(OTHER.into());
        }
        assert_eq!(after[&id], expected, "{id}: {stderr}");
    }
    assert_audit_clean(&r, &fleet(n)).await;
    let journal = r.sim.journal();
    assert!(
        journal
            .iter()
            .any(|e| e.action == "AssociateInstancesKeyPairs" && e.operation_failed),
        "the seed makes some Associate fail after acceptance"
    );

    // The report: one row per input row, both halves.
    let (code, report, stderr) = r.run(&["report", "--format", "csv"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let rows = report_rows(&r, &report);
    assert_eq!(rows.len(), n, "{report}");
    for row in &rows {
        let i = usize::from_str_radix(&row["instance_id"][4..], 16).unwrap();
        let new = NEWS[i % 4];
        assert_eq!(row["new_key_id"], new);
        if i % 10 == 3 {
            assert_eq!(row["status"], "skipped", "{row:?}");
            assert_eq!(row["associate_status"], "failed", "{row:?}");
            assert!(
                row["error_message"].contains(&format!(
                    "new key {new} not bound: UnsupportedOperation.InstanceOsWindows"
                )),
                "{row:?}"
            );
        } else {
            assert_eq!(row["status"], "succeeded", "{row:?}");
            assert_eq!(row["associate_status"], "succeeded", "{row:?}");
            assert!(!row["associate_request_id"].is_empty(), "{row:?}");
            assert!(!row["request_id"].is_empty(), "{row:?}");
            assert_eq!(row["verified"], "gone", "{row:?}");
            assert_eq!(row["associate_verified"], "bound", "{row:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_that_does_not_exist_stops_its_rotation_and_unbinds_nothing() {
    let n = 30;
    let before = fleet(n);
    let r = Rehearsal::start(sim(0, 0.0, 1), before.clone()).await;
    // Half the fleet to a key that exists, half to one that does not.
    let missing = "skey-n0texist";
    let rows: Vec<(String, &str, &str)> = (0..n)
        .map(|i| (ins(i), OLD, if i < n / 2 { NEW } else { missing }))
        .collect();
    let input = rotation_csv(&r, "rotate.csv", &rows);
    let (code, stderr) = run_quietly(&r, &input, &[]).await;
    assert_eq!(code, 1, "{stderr}");
    let after = keys_of(&r.sim.fleet());
    for i in n / 2..n {
        assert!(after[&ins(i)].contains(OLD), "{}: {stderr}", ins(i));
    }
    let (_, report, _) = r.run(&["report", "--format", "csv"], LIMIT).await;
    for row in report_rows(&r, &report) {
        if row["new_key_id"] == missing {
            assert_eq!(row["status"], "skipped", "{row:?}");
            assert!(
                row["error_message"].contains("InvalidKeyPairId.NotFound"),
                "{row:?}"
            );
        }
    }
    // No Disassociate ever named an instance rotated to the missing key.
    let doomed: BTreeSet<String> = (n / 2..n).map(ins).collect();
    assert!(r.sim.journal().iter().all(|e| {
        e.action != "DisassociateInstancesKeyPairs"
            || e.instance_ids.iter().all(|i| !doomed.contains(i))
    }));

    // The key is created: `retry` takes the rotation up again and completes it.
    r.sim
        .edit_fleet(|fleet| fleet.keys.push(missing.to_string()))
        .unwrap();
    let (code, _, stderr) = r.run(&["retry", "--progress", "none"], LIMIT).await;
    let after = keys_of(&r.sim.fleet());
    assert_eq!(
        code, 1,
        "Windows instances still keep their old key: {stderr}"
    );
    for i in 0..n {
        let new = if i < n / 2 { NEW } else { missing };
        let kept = if i % 10 == 3 { OLD } else { new };
        assert!(after[&ins(i)].contains(kept), "{}: {stderr}", ins(i));
        assert_eq!(after[&ins(i)].contains(OLD), i % 10 == 3, "{}", ins(i));
    }
    assert_audit_clean(&r, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rotation_rows_are_rejected_with_their_place() {
    let r = Rehearsal::start(sim(0, 0.0, 1), fleet(4)).await;
    let path = r.dir.path().join("bad.csv");
    std::fs::write(
        &path,
        format!(
            "instance_id,key_id,region,new_key_id\n\
             {a},{OLD},{GZ},skey-12\n\
             {b},{OLD},{GZ},{OLD}\n\
             {c},{OLD},{GZ},{NEW}\n\
             {c},{OLD},{GZ},{OTHER}\n\
             {d},{OLD},{GZ},\n",
            a = ins(0),
            b = ins(1),
            c = ins(2),
            d = ins(3),
        ),
    )
    .unwrap();
    let (code, _, stderr) = r
        .run(&["plan", path.to_str().unwrap(), "--json"], LIMIT)
        .await;
    assert_eq!(code, 0, "{stderr}");
    let (_, report, _) = r
        .run(&["report", "--only", "rejected", "--format", "csv"], LIMIT)
        .await;
    let rows = report_rows(&r, &report);
    let reasons: Vec<(String, String)> = rows
        .iter()
        .map(|row| (row["position"].clone(), row["error_message"].clone()))
        .collect();
    assert_eq!(reasons.len(), 4, "{report}");
    assert!(
        reasons[0].0 == "line 2" && reasons[0].1.contains("new_key_id"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0 == "line 3" && reasons[1].1.contains("is the key_id itself"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].0 == "line 5" && reasons[2].1.contains("conflicts with line 4"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].0 == "line 6" && reasons[3].1.contains("new_key_id (column 4) is empty"),
        "{reasons:?}"
    );
}

/// kill -9 at seeded moments in every phase (binding, confirming, unbinding), then
/// the same command until it finishes: the fleet is exactly as asked, every unbound
/// instance was bound and confirmed first, nothing is left uncertain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_any_phase_then_the_same_command_ends_with_the_same_fleet() {
    use rand::{Rng, SeedableRng};
    let n = 120;
    let mut config = sim(200, 0.15, 11);
    config.faults = keyfleet::sim::Faults {
        mutex: 0.05,
        drop_after: 0.05,
        ..Default::default()
    };
    config.latency = (Duration::from_millis(5), Duration::from_millis(30));
    // Groups of three instances per new key: many small Associate jobs, so kills land
    // while some instances bind, others are confirmed and others unbound.
    let news: Vec<String> = (0..n / 3).map(|g| format!("skey-9{g:07}")).collect();
    let before = fleet(n).with_keys(news.iter().cloned());
    let r = Rehearsal::start(config, before.clone()).await;
    let rows: Vec<(String, &str, &str)> = (0..n)
        .map(|i| (ins(i), OLD, news[i / 3].as_str()))
        .collect();
    let input = rotation_csv(&r, "rotate.csv", &rows);
    let args = [
        "run",
        input.to_str().unwrap(),
        "--rate",
        "40",
        "--progress",
        "none",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut kills = 0;
    let mut finished = None;
    for _ in 0..40 {
        let mut child = r
            .command(&args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let moment = Duration::from_millis(rng.random_range(150..900));
        tokio::select! {
            status = child.wait() => { finished = Some(status.unwrap()); break; }
            _ = tokio::time::sleep(moment) => {
                child.start_kill().unwrap();
                child.wait().await.unwrap();
                kills += 1;
            }
        }
        if kills >= 6 {
            break;
        }
    }
    let code = match finished {
        Some(status) => status.code().unwrap_or(-1),
        None => r.run(&args, LIMIT).await.0,
    };
    assert_eq!(code, 1, "Windows instances keep their old key: exit 1");
    assert!(kills >= 3, "killed only {kills} times");
    let after = keys_of(&r.sim.fleet());
    for i in 0..n {
        let mut expected: BTreeSet<String> = BTreeSet::new();
        expected.insert(if i % 10 == 3 {
            OLD.to_string()
        } else {
            news[i / 3].clone()
        });
        if i % 7 == 0 {
            expected.insert(OTHER.into());
        }
        assert_eq!(after[&ins(i)], expected, "{} after {kills} kills", ins(i));
    }
    assert_audit_clean(&r, &before).await;
    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let pairs = store.pair_counts(run_id).await.unwrap();
    assert_eq!(pairs.pending, 0, "{pairs:?}");
    assert_eq!(pairs.succeeded as usize, n - n / 10, "{pairs:?}");
    assert_eq!(pairs.skipped as usize, n / 10, "{pairs:?}");
    store.close().await;
}

/// `--keep-one-key`: instances are looked at before anything is unbound; a pair whose
/// removal would leave its instance with no key is skipped with the reason; the
/// others go. Without the flag the last key goes (a leaked key must).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_one_key_skips_the_last_key_and_unbinds_the_rest() {
    let n = 40;
    let r = Rehearsal::start(sim(0, 0.0, 3), fleet(n)).await;
    let rows: Vec<(String, String, String)> = (0..n)
        .filter(|i| i % 10 != 3)
        .map(|i| (ins(i), OLD.to_string(), GZ.to_string()))
        .collect();
    let input = r.input("unbind.csv", &rows);
    let (code, stderr) = run_quietly(&r, &input, &["--keep-one-key"]).await;
    assert_eq!(code, 1, "{stderr}");
    let after = keys_of(&r.sim.fleet());
    for i in (0..n).filter(|i| i % 10 != 3) {
        let expected: BTreeSet<String> = if i % 7 == 0 {
            [OTHER.to_string()].into()
        } else {
            [OLD.to_string()].into()
        };
        assert_eq!(after[&ins(i)], expected, "{}", ins(i));
    }
    let (_, report, _) = r.run(&["report", "--format", "csv"], LIMIT).await;
    let mut skipped = 0;
    for row in report_rows(&r, &report) {
        let i = usize::from_str_radix(&row["instance_id"][4..], 16).unwrap();
        if i % 7 == 0 {
            assert_eq!(row["status"], "succeeded", "{row:?}");
        } else {
            skipped += 1;
            assert_eq!(row["status"], "skipped", "{row:?}");
            assert_eq!(row["error_code"], "KeepOneKey.LastKey", "{row:?}");
            assert!(row["error_message"].contains("no key"), "{row:?}");
        }
    }
    assert!(skipped > 20, "{report}");
    // One look per 100 instances, before any Disassociate.
    let journal = r.sim.journal();
    let first_unbind = journal
        .iter()
        .position(|e| e.action == "DisassociateInstancesKeyPairs")
        .unwrap();
    assert!(
        journal[..first_unbind]
            .iter()
            .any(|e| e.action == "DescribeInstances")
    );

    // A second key is bound meanwhile: `retry` looks again and unbinds.
    let spare = ins(1);
    r.sim
        .edit_fleet(|fleet| {
            let i = fleet
                .instances
                .iter_mut()
                .find(|i| i.instance_id == spare)
                .unwrap();
            i.key_ids.push(NEW.to_string());
        })
        .unwrap();
    let (code, _, stderr) = r.run(&["retry", "--progress", "none"], LIMIT).await;
    assert_eq!(
        code, 1,
        "the others still hold only their last key: {stderr}"
    );
    let after = keys_of(&r.sim.fleet());
    assert_eq!(after[&ins(1)], [NEW.to_string()].into(), "{stderr}");
    assert_eq!(after[&ins(2)], [OLD.to_string()].into(), "{stderr}");
    let mut before = fleet(n);
    before.instances[1].key_ids.push(NEW.to_string());
    assert_audit_clean(&r, &before).await;
}

/// `keyfleet demo --rotate` rehearses a rotation with faults, asynchronous failures
/// and instances that cannot be rotated, and ends with a clean rotation audit.
#[test]
fn the_rotation_demo_ends_clean() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::support::Cmd::new([
        "demo",
        "--rotate",
        "--instances",
        "300",
        "--progress",
        "none",
        "--dir",
        dir.path().to_str().unwrap(),
    ])
    .timeout(LIMIT)
    .run();
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(0), "{stderr}");
    assert!(stderr.contains("audit:    clean"), "{stderr}");
    assert!(stderr.contains("none left without a key"), "{stderr}");
    assert!(stderr.contains("--rotate-to skey-r0tate0n"), "{stderr}");
}

/// `plan` says how many instances the unbind would leave keyless when the input
/// carries `discover`'s `keys_after` column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_counts_the_instances_a_plain_unbind_leaves_keyless() {
    let r = Rehearsal::start(sim(0, 0.0, 1), fleet(3)).await;
    let path = r.dir.path().join("found.csv");
    std::fs::write(
        &path,
        format!(
            "instance_id,key_id,region,instance_state,os_name,keys_after\n\
             {a},{OLD},{GZ},STOPPED,Linux,0\n\
             {b},{OLD},{GZ},STOPPED,Linux,1\n\
             {c},{OLD},{GZ},STOPPED,Linux,0\n",
            a = ins(0),
            b = ins(1),
            c = ins(2),
        ),
    )
    .unwrap();
    let (code, json, stderr) = r
        .run(&["plan", path.to_str().unwrap(), "--json"], LIMIT)
        .await;
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["keyless_after"], 2, "{json}");
    let (_, _, stderr) = r.run(&["plan", path.to_str().unwrap()], LIMIT).await;
    assert!(stderr.contains("keyless      2 instances"), "{stderr}");
}
