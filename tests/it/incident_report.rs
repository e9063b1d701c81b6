//! `keyfleet report --incident`: the record of a faulted rotation with its templates
//! and the key's retirement matches the database and the simulator's journal (requests
//! by API, every RequestId), in JSON and in Markdown with its CSV appendix.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keyfleet::sim::{Faults, SimConfig};

use crate::support::Rehearsal;
use crate::templates::{LEAKED, NEW, discover, estate};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_report_of_a_faulted_run_matches_the_database_and_the_journal() {
    let config = SimConfig {
        rate: 0,
        settle_after: Duration::from_millis(50),
        faults: Faults {
            mutex: 0.1,
            internal: 0.1,
            drop_after: 0.05,
            ..Faults::default()
        },
        seed: 22,
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, estate()).await;
    let (input, templates) = discover(&r, Some(NEW)).await;
    let before_run = r.sim.journal().len();
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                &input,
                "--templates",
                &templates,
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let run_journal: Vec<_> = r.sim.journal()[before_run..].to_vec();
    let (code, _, stderr) = r.run(&["retire", "--key", LEAKED], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let deletes: Vec<String> = r
        .sim
        .journal()
        .iter()
        .filter(|e| e.action == "DeleteKeyPairs" && e.code.is_none())
        .filter_map(|e| e.request_id.clone())
        .collect();
    assert_eq!(deletes.len(), 1, "one DeleteKeyPairs succeeded");

    // JSON: every request of the run is the journal's, by API and by RequestId.
    let (code, json, stderr) = r
        .run(&["report", "--incident", "--format", "json"], LIMIT)
        .await;
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let requests = report["requests"].as_array().unwrap();
    let run_ids: BTreeSet<String> = requests
        .iter()
        .filter(|q| q["action"] != "DeleteKeyPairs")
        .filter_map(|q| q["request_id"].as_str().map(str::to_string))
        .collect();
    let journal_ids: BTreeSet<String> = run_journal
        .iter()
        .filter_map(|e| e.request_id.clone())
        .collect();
    assert_eq!(
        run_ids, journal_ids,
        "the run's RequestIds are the journal's"
    );
    let mut journal_by_api: BTreeMap<String, i64> = BTreeMap::new();
    for e in &run_journal {
        *journal_by_api.entry(e.action.clone()).or_default() += 1;
    }
    // The retirement's reads are not stored; its successful DeleteKeyPairs is.
    journal_by_api.insert("DeleteKeyPairs".into(), 1);
    let report_by_api: BTreeMap<String, i64> = report["requests_by_api"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["sent"].as_i64().unwrap()))
        .collect();
    assert_eq!(report_by_api, journal_by_api);
    let faults = run_journal.iter().filter(|e| e.code.is_some()).count();
    assert!(faults > 0, "the run met faults");
    let delete_in_report: Vec<&str> = requests
        .iter()
        .filter(|q| q["action"] == "DeleteKeyPairs")
        .filter_map(|q| q["request_id"].as_str())
        .collect();
    assert_eq!(delete_in_report, deletes);

    // ... and the database's own counts.
    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let attempts: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.run_id = ?",
    )
    .bind(run_id)
    .fetch_one(store.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(requests.len() as i64, attempts + 1);
    let gone: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM items WHERE run_id = ? AND bind = 0 AND verified = 'gone'",
    )
    .bind(run_id)
    .fetch_one(store.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(report["run_details"][0]["facts"]["verdicts"]["gone"], gone);
    assert_eq!(report["templates"].as_array().unwrap().len(), 4);
    assert_eq!(report["key"]["key_ids"], serde_json::json!([LEAKED]));
    assert_eq!(report["key"]["names"][LEAKED], "deploy");
    // The fingerprint of the public key the simulator holds under that id, as the
    // retirement's listing read it.
    let fingerprint = keyfleet::sim::incident::derived_public_key(LEAKED)
        .fingerprint()
        .to_string();
    assert_eq!(report["key"]["fingerprint"], fingerprint.as_str());
    assert_eq!(report["retirements"][0]["retired"], true);

    // Markdown, with the RequestIds in a CSV beside it: the same requests.
    let md_path = r.dir.path().join("incident.md");
    let (code, _, stderr) = r
        .run(
            &[
                "report",
                "--incident",
                "--output",
                md_path.to_str().unwrap(),
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(
        md.starts_with(&format!("# Incident report: run {run_id}")),
        "{md}"
    );
    assert!(md.contains(&format!("`{LEAKED}` (deploy)")), "{md}");
    assert!(
        md.contains(&format!("**Fingerprint:** `{fingerprint}`")),
        "{md}"
    );
    assert!(md.contains("**Key pair:** retired"), "{md}");
    assert!(md.contains("**Templates:** 4 found; 4 changed"), "{md}");
    assert!(md.contains("incident.md.requests.csv"), "{md}");
    let csv = std::fs::read_to_string(r.dir.path().join("incident.md.requests.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let csv_ids: BTreeSet<String> = reader
        .records()
        .map(|row| row.unwrap()[6].to_string())
        .filter(|id| !id.is_empty())
        .collect();
    let json_ids: BTreeSet<String> = requests
        .iter()
        .filter_map(|q| q["request_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(csv_ids, json_ids);
    assert_eq!(csv.lines().count() - 1, requests.len());
    for (api, n) in &journal_by_api {
        assert!(md.contains(&format!("| {api} | {n} |")), "{api} {n}:\n{md}");
    }
}
