//! A database made by keyfleet 0.1.0 (the first release: schema `0001_init` only),
//! committed in `tests/data/v0_1_0/`, opened by this version: it migrates forward, its
//! runs report as they did (every column 0.1.0 wrote keeps its value), and a run it
//! planned but never executed resumes to completion.
//!
//! The fixture holds four runs made against `samples/fleet-small.json`: 1 finished (7
//! pairs succeeded), 2 planned with rejected rows and a duplicate, 3 planned and never
//! started, 4 finished with two failures (RUNNING, Windows) after an isolation split.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyfleet::sim::{Fleet, SimConfig, audit};

use crate::support::Rehearsal;

const LIMIT: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/v0_1_0")
        .join(name)
}

async fn rehearsal_on_fixture() -> (Rehearsal, Fleet) {
    let fleet = Fleet::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/fleet-small.json"))
        .expect("sample fleet");
    let config = SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, fleet.clone()).await;
    std::fs::copy(fixture("keyfleet.db"), &r.db).expect("copy fixture");
    (r, fleet)
}

/// Every field 0.1.0 wrote in `old` has the same value in `new` (new fields may be added).
fn assert_superset(old: &serde_json::Value, new: &serde_json::Value, what: &str) {
    match (old, new) {
        (serde_json::Value::Object(old), serde_json::Value::Object(new)) => {
            for (key, value) in old {
                let Some(now) = new.get(key) else {
                    panic!("{what}: field {key:?} is gone");
                };
                assert_superset(value, now, &format!("{what}.{key}"));
            }
        }
        (serde_json::Value::Array(old), serde_json::Value::Array(new)) => {
            assert_eq!(old.len(), new.len(), "{what}: length");
            for (n, (a, b)) in old.iter().zip(new).enumerate() {
                assert_superset(a, b, &format!("{what}[{n}]"));
            }
        }
        _ => assert_eq!(old, new, "{what}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_0_database_migrates_reports_and_resumes() {
    let (r, fleet) = rehearsal_on_fixture().await;

    let (code, listing, stderr) = r.run(&["runs"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    for run in 1..=4 {
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&run.to_string())),
            "run {run} listed:\n{listing}"
        );
    }

    for run in ["1", "2", "3", "4"] {
        let (code, report, stderr) = r.run(&["report", run, "--format", "json"], LIMIT).await;
        assert_eq!(code, 0, "report {run}: {stderr}");
        let old: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("report-{run}.json"))).unwrap(),
        )
        .unwrap();
        let new: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_superset(&old, &new, &format!("report {run}"));
    }
    let (code, status, stderr) = r.run(&["status", "4", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("status-4.json")).unwrap()).unwrap();
    let mut new: serde_json::Value = serde_json::from_str(&status).unwrap();
    // Not a fact of the database: `elapsed_ms` of a finished run is fixed, the rest too.
    new.as_object_mut().unwrap().remove("verification");
    assert_superset(&old, &new, "status 4");
    // Attempts 0.1.0 recorded name no endpoint (migration 0006): an unknown one, sent
    // at their `started_at`.
    let rates = new["rates"].as_array().expect("rates");
    assert_eq!(rates.len(), 1, "{rates:#?}");
    assert_eq!(rates[0]["endpoint"], serde_json::Value::Null);
    assert_eq!(rates[0]["requests"], old["requests"]);

    // Run 3 was planned by 0.1.0 and never started: this version executes it.
    let (code, _, stderr) = r.run(&["resume", "3", "--progress", "none"], LIMIT).await;
    assert_eq!(code, 0, "resume 3: {stderr}");
    let (code, status, stderr) = r.run(&["status", "3", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let endpoints: Vec<&str> = status["rates"]
        .as_array()
        .expect("rates")
        .iter()
        .filter_map(|rate| rate["endpoint"].as_str())
        .collect();
    assert!(
        !endpoints.is_empty() && endpoints.iter().all(|e| e.starts_with(&r.sim.endpoint())),
        "the new attempts name their endpoint: {status}"
    );
    let store = r.store().await;
    let outcomes = crate::support::audit_rows(store.pair_outcomes(3).await.unwrap());
    // The rebuilt tables kept every reference whole.
    let broken: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    let jobs: Vec<(String, String)> =
        sqlx::query_as("SELECT action, state FROM jobs WHERE run_id = 4 ORDER BY id")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert!(
        jobs.iter()
            .all(|(a, _)| a == "DisassociateInstancesKeyPairs"),
        "{jobs:?}"
    );
    store.close().await;
    assert_eq!(outcomes.len(), 2);
    assert!(
        outcomes.iter().all(|o| o.status == "succeeded"),
        "{outcomes:?}"
    );
    let result = audit::audit(
        &fleet.bindings(),
        &r.sim.fleet().bindings(),
        &outcomes,
        &r.sim.journal(),
    );
    assert!(result.is_clean(), "audit: {:#?}", result.violations);
    assert!(
        !r.sim
            .fleet()
            .bindings()
            .contains(&("ins-00000001".to_string(), "skey-00000009".to_string()))
    );
}

/// A database made by the version before rotation (schema up to 0004: actions,
/// verification, the pacer), with a verified run and a planned one, is opened by this
/// version: migration 0005 rebuilds `items` keeping every value, the verified run
/// reports as it was, and the planned run resumes to completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_version_before_rotation_migrates_reports_and_resumes() {
    use std::borrow::Cow;
    let (r, fleet) = rehearsal_on_fixture().await;
    std::fs::remove_file(&r.db).unwrap();
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&r.db)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let mut migrator =
            sqlx::migrate::Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
                .await
                .unwrap();
        migrator.migrations = Cow::Owned(
            migrator
                .migrations
                .iter()
                .filter(|m| m.version < 5)
                .cloned()
                .collect(),
        );
        migrator.run(&pool).await.unwrap();
        for sql in [
            "INSERT INTO runs (id, created_at, input_path, input_sha256, options, rows_read, pairs,
                               duplicates, rejected, instances, keys, regions, state, finished_at)
             VALUES (1, 1, '/in/a.csv', 'aa', '{}', 2, 1, 0, 1, 1, 1, 1, 'finished', 5),
                    (2, 2, '/in/b.csv', 'bb', '{}', 1, 1, 0, 0, 1, 1, 1, 'planned', NULL)",
            "INSERT INTO jobs (id, run_id, action, region, instance_ids, key_ids, pair_count, state,
                               request_id, created_at, finished_at)
             VALUES (1, 1, 'DisassociateInstancesKeyPairs', 'ap-guangzhou', '[\"ins-00000002\"]',
                     '[\"skey-00000003\"]', 1, 'succeeded', 'req-1', 1, 3),
                    (2, 2, 'DisassociateInstancesKeyPairs', 'ap-guangzhou', '[\"ins-00000001\"]',
                     '[\"skey-00000009\"]', 1, 'queued', NULL, 2, NULL)",
            "INSERT INTO attempts (id, job_id, number, started_at, finished_at, sent_at, outcome, request_id)
             VALUES (1, 1, 1, 2, 3, 2, 'succeeded', 'req-1')",
            "INSERT INTO items (id, run_id, position, region, instance_id, key_id, status, reason,
                                job_id, request_id, verified, verified_at, verify_request_id)
             VALUES (1, 1, 'line 2', 'ap-guangzhou', 'ins-00000002', 'skey-00000003', 'succeeded',
                     NULL, 1, 'req-1', 'gone', 4, 'req-v'),
                    (2, 1, 'line 3', NULL, 'ins-x', 'skey-00000003', 'rejected',
                     'instance id \"ins-x\" is not ins- and 8 characters', NULL, NULL, NULL, NULL, NULL),
                    (3, 2, 'line 2', 'ap-guangzhou', 'ins-00000001', 'skey-00000009', 'pending',
                     NULL, 2, NULL, NULL, NULL, NULL)",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }

    let (code, report, stderr) = r.run(&["report", "1", "--format", "json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{report}");
    assert_eq!(rows[0]["status"], "succeeded");
    assert_eq!(rows[0]["request_id"], "req-1");
    assert_eq!(rows[0]["verified"], "gone");
    assert_eq!(rows[0]["attempts"], 1);
    assert_eq!(rows[1]["status"], "rejected");
    assert!(rows[0]["new_key_id"].is_null());
    let (code, status, stderr) = r.run(&["status", "1", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pairs"]["succeeded"], 1, "{status}");
    assert_eq!(status["verification"]["gone"], 1, "{status}");
    assert_eq!(status["held"], 0, "{status}");

    let (code, _, stderr) = r.run(&["resume", "2", "--progress", "none"], LIMIT).await;
    assert_eq!(code, 0, "resume 2: {stderr}");
    assert!(
        !r.sim
            .fleet()
            .bindings()
            .contains(&("ins-00000001".to_string(), "skey-00000009".to_string()))
    );
    assert!(
        fleet
            .bindings()
            .contains(&("ins-00000001".to_string(), "skey-00000009".to_string()))
    );
    let store = r.store().await;
    let broken: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    store.close().await;
}
