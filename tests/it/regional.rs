//! Regional endpoints: a `{region}` endpoint template and `--resolve` bring three
//! access endpoints onto one loopback simulator, each with its own Host header (and so
//! its own rate limit), signed as sent.

use std::collections::BTreeSet;
use std::time::Duration;

use keyfleet::sim::{Fleet, Instance, SimConfig, audit};

use crate::support::{self, Rehearsal};

const REGIONS: [&str; 3] = ["ap-guangzhou", "ap-shanghai", "eu-frankfurt"];
const LIMIT: Duration = Duration::from_secs(60);

/// Three STOPPED instances per region, each holding key a (to remove) and key b (to keep).
fn fleet() -> Fleet {
    let mut fleet = Fleet::new();
    for (r, region) in REGIONS.iter().enumerate() {
        for n in 0..3 {
            fleet = fleet.with(
                Instance::new(support::ins(r * 10 + n), *region)
                    .keys([support::key(1), support::key(2)]),
            );
        }
    }
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_three_regions_reaches_three_access_endpoints() {
    let config = SimConfig {
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let before = fleet();
    let r = Rehearsal::start(config, before.clone()).await;
    let port = r.sim.local_addr().port();
    let rows: Vec<(String, String, String)> = before
        .instances()
        .iter()
        .map(|i| (i.instance_id.clone(), support::key(1), i.region.clone()))
        .collect();
    let input = r.input("rows.csv", &rows);
    let template = format!("http://cvm.{{region}}.sim.test:{port}");
    let output = tokio::time::timeout(
        LIMIT,
        r.command_at(&template, &["--resolve", "*.sim.test=127.0.0.1"])
            .args(["run", input.to_str().unwrap(), "--progress", "none"])
            .output(),
    )
    .await
    .expect("finished in time")
    .expect("run keyfleet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");

    // Each region's requests arrived at its own access endpoint, signed for it.
    let journal = r.sim.journal();
    assert!(journal.len() >= 3, "{journal:?}");
    for entry in &journal {
        assert_eq!(
            entry.host,
            format!("cvm.{}.sim.test:{port}", entry.region),
            "{entry:?}"
        );
        assert_eq!(entry.code, None, "signature and request valid: {entry:?}");
    }
    let stats = r.sim.stats();
    let hosts: BTreeSet<&String> = stats.max_in_any_second_by_host.keys().collect();
    let expected: Vec<String> = REGIONS
        .iter()
        .map(|region| format!("cvm.{region}.sim.test:{port}"))
        .collect();
    assert_eq!(hosts, expected.iter().collect(), "{stats:?}");

    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let outcomes = crate::support::audit_rows(store.pair_outcomes(run_id).await.unwrap());
    store.close().await;
    let result = audit::audit(
        &before.bindings(),
        &r.sim.fleet().bindings(),
        &outcomes,
        &journal,
    );
    assert!(result.is_clean(), "audit: {:#?}", result.violations);
    assert_eq!(result.succeeded, 9);
}

#[tokio::test]
async fn a_resolve_rule_that_is_not_host_equals_addr_is_a_usage_error() {
    let out = support::Cmd::new(["--resolve", "*.sim.test", "codes"]).run();
    assert_eq!(out.code, Some(2));
    let stderr = out.stderr_text();
    assert!(stderr.contains("HOST=ADDR"), "{stderr}");
}

/// A run over two regional endpoints against a simulator at 2/s with keyfleet at its
/// default 10/s: `status --json` reports each access endpoint's requests and its
/// throttles by code exactly as the simulator counted them, and the run summary
/// (stderr) shows the same two endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_rate_and_the_throttles_of_each_access_endpoint() {
    const TWO: [&str; 2] = ["ap-guangzhou", "ap-shanghai"];
    let mut before = Fleet::new();
    let mut rows = Vec::new();
    for (r, region) in TWO.iter().enumerate() {
        // Each instance holds a key of its own (one request each) and one to keep.
        for n in 0..5 {
            let own = support::key(100 + r * 10 + n);
            before = before.with(
                Instance::new(support::ins(r * 10 + n), *region)
                    .keys([own.clone(), support::key(1)]),
            );
            rows.push((support::ins(r * 10 + n), own, region.to_string()));
        }
    }
    let config = SimConfig {
        rate: 2,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, before.clone()).await;
    let port = r.sim.local_addr().port();
    let input = r.input("rows.csv", &rows);
    let template = format!("http://cvm.{{region}}.sim.test:{port}");
    let resolve = ["--resolve", "*.sim.test=127.0.0.1"];
    let output = tokio::time::timeout(
        LIMIT,
        r.command_at(&template, &resolve)
            .args([
                "run",
                input.to_str().unwrap(),
                "--progress",
                "none",
                "--no-verify",
            ])
            .output(),
    )
    .await
    .expect("finished in time")
    .expect("run keyfleet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");

    let journal = r.sim.journal();
    let stats = r.sim.stats();
    assert!(
        stats.throttled > 0,
        "keyfleet at 10/s meets the 2/s limit: {stats:?}"
    );
    let status = tokio::time::timeout(
        LIMIT,
        r.command_at(&template, &resolve)
            .args(["status", "--json"])
            .output(),
    )
    .await
    .expect("finished in time")
    .expect("run keyfleet");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let rates = status["rates"].as_array().expect("rates");
    assert_eq!(rates.len(), 2, "{rates:#?}");
    let mut throttled_total = 0;
    for (rate, region) in rates.iter().zip(TWO) {
        let host = format!("cvm.{region}.sim.test:{port}");
        assert_eq!(rate["action"], "DisassociateInstancesKeyPairs");
        assert_eq!(rate["endpoint"], format!("http://{host}/"), "{rate}");
        let arrived: Vec<_> = journal.iter().filter(|e| e.host == host).collect();
        assert_eq!(rate["requests"], arrived.len(), "{rate}");
        let mut by_code = serde_json::Map::new();
        for entry in &arrived {
            if let Some(code) = entry
                .code
                .as_deref()
                .filter(|c| c.starts_with("RequestLimit"))
            {
                let n = by_code.get(code).and_then(|n| n.as_i64()).unwrap_or(0);
                by_code.insert(code.to_string(), (n + 1).into());
            }
        }
        assert_eq!(
            rate["throttles_by_code"],
            serde_json::Value::Object(by_code),
            "{rate}"
        );
        throttled_total += rate["throttled"].as_u64().unwrap();
        let first = rate["first_sent_at"].as_i64().unwrap();
        let last = rate["last_sent_at"].as_i64().unwrap();
        let per_second = rate["per_second"].as_f64().unwrap();
        let expected = (arrived.len() - 1) as f64 * 1000.0 / (last - first) as f64;
        assert!((per_second - expected).abs() < 1e-9, "{rate}");
        // Keyfleet never sends faster than its --rate to one endpoint.
        assert!(per_second <= 10.0, "{rate}");
        assert!(
            stderr.contains(&format!(
                "DisassociateInstancesKeyPairs at http://{host}/: {} requests",
                arrived.len()
            )),
            "the run summary shows {host}:\n{stderr}"
        );
    }
    assert_eq!(throttled_total, stats.throttled);
}
