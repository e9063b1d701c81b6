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
    let outcomes = store.pair_outcomes(3).await.unwrap();
    // The rebuilt tables kept every reference whole.
    let broken: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    let jobs: Vec<(String, String)> =
        sqlx::query_as("SELECT action, state FROM jobs WHERE run_id = 4 ORDER BY id")
            .fetch_all(store.pool())
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
