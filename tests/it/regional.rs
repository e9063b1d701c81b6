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
    let outcomes = store.pair_outcomes(run_id).await.unwrap();
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
