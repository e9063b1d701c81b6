//! Observability: the journal, stats and state over HTTP and through the handle.

use super::*;

#[tokio::test]
async fn journal_stats_and_state_over_http_and_the_handle() {
    let config = SimConfig {
        rate: 0,
        ..SimConfig::default()
    };
    let sim = start(config, small_fleet()).await;
    let ok = Call::unbind(&["ins-00000001"], &["skey-0000000a"])
        .reply(&sim)
        .await;
    let bad = Call::unbind(&["ins-77777777"], &["skey-0000000a"])
        .reply(&sim)
        .await;
    let mut unsigned = Call::new("DescribeInstances", json!({}));
    unsigned.auth = Auth::Missing;
    unsigned.reply(&sim).await;

    let journal = sim.journal();
    assert_eq!(journal.len(), 3);
    assert_eq!(journal[0].action, DISASSOCIATE);
    assert_eq!(journal[0].region, GZ);
    assert_eq!(journal[0].instance_ids, ["ins-00000001"]);
    assert_eq!(journal[0].key_ids, ["skey-0000000a"]);
    assert_eq!(journal[0].code, None);
    assert_eq!(journal[0].request_id.as_deref(), Some(ok.request_id()));
    assert!(journal[0].applied);
    assert_eq!(
        journal[1].code.as_deref(),
        Some("InvalidInstanceId.NotFound")
    );
    assert_eq!(journal[1].request_id.as_deref(), Some(bad.request_id()));
    assert!(!journal[1].applied);
    assert_eq!(
        journal[2].code.as_deref(),
        Some("AuthFailure.InvalidAuthorization")
    );
    assert!(journal.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));

    let stats = sim.stats();
    assert_eq!(stats.requests[DISASSOCIATE]["Success"], 1);
    assert_eq!(
        stats.requests[DISASSOCIATE]["InvalidInstanceId.NotFound"],
        1
    );
    assert_eq!(
        stats.requests["DescribeInstances"]["AuthFailure.InvalidAuthorization"],
        1
    );
    assert_eq!(stats.admitted, 2, "auth failures never reach the limiter");
    assert_eq!(stats.throttled, 0);

    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("{}{path}", sim.endpoint());
        async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.headers()["content-type"], "application/json");
            response.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(
        get("/_sim/journal").await,
        serde_json::to_value(sim.journal_page(0, sim::MAX_PAGE_ENTRIES)).unwrap()
    );
    assert_eq!(
        get("/_sim/journal").await["entries"],
        serde_json::to_value(sim.journal()).unwrap(),
        "finished in arrival order here, so the page is the journal"
    );
    assert_eq!(
        get("/_sim/stats").await,
        serde_json::to_value(sim.stats()).unwrap()
    );
    let state: Fleet = serde_json::from_value(get("/_sim/state").await).unwrap();
    assert_eq!(state, sim.fleet());
    assert!(
        !state
            .bindings()
            .contains(&binding("ins-00000001", "skey-0000000a"))
    );
}

#[tokio::test]
async fn the_sample_fleet_loads_and_covers_every_state() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/fleet.json");
    let fleet = Fleet::load(path).expect("sample fleet");
    for state in InstanceState::ALL {
        assert!(
            fleet.instances().iter().any(|i| i.state == state),
            "{state:?} missing"
        );
    }
    assert!(fleet.instances().iter().any(|i| i.os == Os::Windows));
    let sim = start(quiet(), fleet).await;
    Call::unbind(&["ins-stop0001", "ins-stop0002"], &["skey-leak0001"])
        .reply(&sim)
        .await
        .assert_success();

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("fleet.json");
    std::fs::write(&bad, r#"{"instances": [], "instance": []}"#).unwrap();
    let err = Fleet::load(&bad).unwrap_err().to_string();
    assert!(err.contains("unknown field `instance`"), "{err}");
    assert!(err.contains("fleet.json"), "{err}");
}
