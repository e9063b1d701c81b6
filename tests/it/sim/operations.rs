//! Asynchronous operations: OPERATING, completion times, failures, pages, the audit of applied pairs.

use super::*;

/// The one instance `id` as DescribeInstances reports it, through the API client.
async fn described(client: &CvmClient, id: &str) -> keyfleet::api::InstanceInfo {
    let (mut found, _) = client
        .describe_instances(GZ, &[id.to_string()])
        .await
        .expect("DescribeInstances");
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

#[tokio::test]
async fn an_accepted_unbind_is_operating_and_refuses_more_until_it_completes() {
    let config = SimConfig {
        operation_time: Duration::from_secs(3600),
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let client = support::sim_client(&sim);
    let accepted = Call::unbind(&["ins-00000001"], &["skey-0000000a"])
        .reply(&sim)
        .await;
    accepted.assert_success();

    let info = described(&client, "ins-00000001").await;
    assert_eq!(
        info.latest_operation.as_deref(),
        Some("DisassociateInstancesKeyPairs")
    );
    assert_eq!(info.latest_operation_state.as_deref(), Some("OPERATING"));
    assert_eq!(
        info.latest_operation_request_id.as_deref(),
        Some(accepted.request_id())
    );
    assert_eq!(info.key_ids, ["skey-0000000a", "skey-0000000b"], "not yet");
    assert_eq!(info.zone.as_deref(), Some("ap-guangzhou-1"));
    // An instance nothing was done to reports no operation.
    let untouched = described(&client, "ins-00000002").await;
    assert_eq!(
        (
            untouched.latest_operation,
            untouched.latest_operation_state,
            untouched.latest_operation_request_id
        ),
        (None, None, None)
    );
    // While it operates, another Associate/Disassociate naming it is refused whole.
    for call in [
        Call::unbind(&["ins-00000002", "ins-00000001"], &["skey-0000000b"]),
        Call::new(
            ASSOCIATE,
            json!({"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-0000000c"]}),
        ),
    ] {
        call.reply(&sim)
            .await
            .assert_error("OperationDenied.InstanceOperationInProgress");
    }
    assert_eq!(
        sim.fleet().bindings(),
        small_fleet().bindings(),
        "nothing changed yet"
    );
    // An edit of the running fleet keeps the operation.
    sim.edit_fleet(|fleet| fleet.instances[1].state = InstanceState::Stopped)
        .unwrap();
    let kept = described(&client, "ins-00000001").await;
    assert_eq!(kept.latest_operation_state.as_deref(), Some("OPERATING"));
    Call::unbind(&["ins-00000001"], &["skey-0000000b"])
        .reply(&sim)
        .await
        .assert_error("OperationDenied.InstanceOperationInProgress");
    // The key is still bound, so DescribeKeyPairs still names the instance.
    let (keys, _) = client
        .describe_key_pairs(GZ, &["skey-0000000a".to_string()])
        .await
        .unwrap();
    assert_eq!(
        keys[0].associated_instance_ids,
        ["ins-00000001", "ins-00000002"]
    );
}

#[tokio::test]
async fn an_operation_completes_after_the_operation_time() {
    let config = SimConfig {
        operation_time: Duration::from_millis(200),
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let client = support::sim_client(&sim);
    let accepted = Call::unbind(&["ins-00000001"], &["skey-0000000a"])
        .reply(&sim)
        .await;
    accepted.assert_success();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let info = described(&client, "ins-00000001").await;
        assert_eq!(
            info.latest_operation_request_id.as_deref(),
            Some(accepted.request_id())
        );
        // At every look the keys agree with the state: changed exactly when completed.
        match info.latest_operation_state.as_deref() {
            Some("OPERATING") => {
                assert_eq!(info.key_ids, ["skey-0000000a", "skey-0000000b"]);
            }
            Some("SUCCESS") => {
                assert_eq!(info.key_ids, ["skey-0000000b"]);
                break;
            }
            other => panic!("unexpected LatestOperationState {other:?}"),
        }
        assert!(Instant::now() < deadline, "never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Completed: the instance takes the next operation.
    Call::unbind(&["ins-00000001"], &["skey-0000000b"])
        .reply(&sim)
        .await
        .assert_success();
}

#[tokio::test]
async fn with_no_operation_time_an_operation_succeeds_at_once() {
    let sim = start(quiet(), small_fleet()).await;
    let client = support::sim_client(&sim);
    let reply = Call::unbind(&["ins-00000002"], &["skey-0000000a"])
        .reply(&sim)
        .await;
    reply.assert_success();
    let info = described(&client, "ins-00000002").await;
    assert_eq!(info.latest_operation_state.as_deref(), Some("SUCCESS"));
    assert_eq!(
        info.latest_operation_request_id.as_deref(),
        Some(reply.request_id())
    );
    assert!(info.key_ids.is_empty());
    // Right away, a second operation is accepted.
    Call::new(
        ASSOCIATE,
        json!({"InstanceIds": ["ins-00000002"], "KeyIds": ["skey-0000000c"]}),
    )
    .reply(&sim)
    .await
    .assert_success();
}

/// Async-fail: the reply succeeds, the operation ends FAILED, the keys stay; which
/// requests fail follows the seed.
#[tokio::test]
async fn async_failures_leave_the_keys_and_follow_the_seed() {
    async fn run(seed: u64) -> Vec<bool> {
        let mut fleet = Fleet::new();
        for n in 0..24 {
            fleet = fleet.with(Instance::new(support::ins(n), GZ).keys(["skey-0000000a"]));
        }
        let config = SimConfig {
            seed,
            async_fail: 0.5,
            ..quiet()
        };
        let sim = start(config, fleet).await;
        let client = support::sim_client(&sim);
        let mut failed = Vec::new();
        for n in 0..24 {
            let id = support::ins(n);
            let reply = Call::unbind(&[&id], &["skey-0000000a"]).reply(&sim).await;
            reply.assert_success();
            let info = described(&client, &id).await;
            let state = info.latest_operation_state.as_deref().unwrap();
            assert_eq!(
                info.latest_operation_request_id.as_deref(),
                Some(reply.request_id())
            );
            match state {
                "FAILED" => assert_eq!(info.key_ids, ["skey-0000000a"], "{id}"),
                "SUCCESS" => assert!(info.key_ids.is_empty(), "{id}"),
                other => panic!("{id}: {other}"),
            }
            failed.push(state == "FAILED");
        }
        // The journal says the same: accepted, and which operations failed.
        let journal: Vec<bool> = sim
            .journal()
            .iter()
            .filter(|e| e.action == DISASSOCIATE)
            .inspect(|e| assert!(e.applied && e.code.is_none()))
            .map(|e| e.operation_failed)
            .collect();
        assert_eq!(journal, failed);
        failed
    }
    let first = run(21).await;
    assert_eq!(first, run(21).await, "same seed, same failures");
    let count = first.iter().filter(|f| **f).count();
    assert!((4..=20).contains(&count), "{count} of 24 failed at p = 0.5");
    assert_ne!(first, run(22).await, "another seed, other failures");
}

#[tokio::test]
async fn describe_regions_lists_the_fleets_regions_from_any_region() {
    let sim = start(quiet(), small_fleet()).await;
    let client = support::sim_client(&sim);
    for access in [GZ, "ap-tokyo"] {
        let (regions, request_id) = client.describe_regions(access).await.unwrap();
        assert!(!request_id.is_empty());
        let names: Vec<(&str, &str)> = regions
            .iter()
            .map(|r| (r.region.as_str(), r.region_state.as_str()))
            .collect();
        assert_eq!(names, [(GZ, "AVAILABLE"), (SH, "AVAILABLE")], "{access}");
        assert_eq!(regions[0].region_name, "South China(Guangzhou)");
    }
    let raw = Call::new("DescribeRegions", json!({})).reply(&sim).await;
    raw.assert_success();
    assert_eq!(raw.json["Response"]["TotalCount"], json!(2));
    Call::new("DescribeRegions", json!({"Limit": 1}))
        .reply(&sim)
        .await
        .assert_error("UnknownParameter");
}

/// Paging a region of 250 instances by 100 (and by 7) returns every one exactly once,
/// sorted by id, with TotalCount exact on every page.
#[tokio::test]
async fn describe_instances_pages_return_every_instance_once() {
    let mix = Mix {
        regions: vec![GZ.to_string(), SH.to_string()],
        ..Mix::default()
    };
    let fleet = Fleet::generate(400, 8, &mix);
    let mut expected: Vec<String> = fleet
        .instances()
        .iter()
        .filter(|i| i.region == GZ)
        .map(|i| i.instance_id.clone())
        .collect();
    expected.sort();
    let sim = start(quiet(), fleet).await;
    let client = support::sim_client(&sim);
    for limit in [100, 7] {
        let mut seen = Vec::new();
        let mut offset = Some(0);
        let mut pages = 0;
        while let Some(at) = offset {
            let (page, _) = client
                .describe_instances_page(GZ, &[], at, limit)
                .await
                .unwrap();
            assert_eq!(page.total_count, Some(expected.len() as u64));
            assert!(page.instances.len() as u64 <= limit);
            seen.extend(page.instances.into_iter().map(|i| i.instance_id));
            offset = page.next_offset;
            pages += 1;
            assert!(pages <= expected.len(), "paging does not end");
        }
        assert_eq!(seen, expected, "limit {limit}");
        assert_eq!(pages, expected.len().div_ceil(limit as usize));
    }
    // Past the end: an empty page, still the exact total.
    let (beyond, _) = client
        .describe_instances_page(GZ, &[], 10_000, 100)
        .await
        .unwrap();
    assert!(beyond.instances.is_empty());
    assert_eq!(beyond.total_count, Some(expected.len() as u64));
}

/// A run against a simulator whose operations all fail: every pair is reported
/// succeeded (each reply had a RequestId), and the audit names each as accepted but
/// not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_flags_pairs_accepted_but_not_applied() {
    let mut fleet = Fleet::new();
    let mut rows = Vec::new();
    for n in 0..6 {
        fleet =
            fleet.with(Instance::new(support::ins(n), GZ).keys([support::key(1), support::key(2)]));
        rows.push((support::ins(n), support::key(1), GZ.to_string()));
    }
    let config = SimConfig {
        async_fail: 1.0,
        ..quiet()
    };
    let r = support::Rehearsal::start(config, fleet.clone()).await;
    let input = r.input("rows.csv", &rows);
    let (code, _, stderr) = r
        .run(
            &["run", input.to_str().unwrap(), "--progress", "none"],
            DEADLINE,
        )
        .await;
    // Every request was accepted, none applied: the closing verification says so.
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("6 operation failed"), "{stderr}");
    let after = r.sim.fleet().bindings();
    assert_eq!(after, fleet.bindings(), "no operation was applied");

    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let outcomes = crate::support::audit_rows(store.pair_outcomes(run_id).await.unwrap());
    let audit = sim::audit::audit(&fleet.bindings(), &after, &outcomes, &r.sim.journal());
    assert_eq!(audit.succeeded, 6);
    let requested: Vec<(String, String)> = rows
        .iter()
        .map(|(i, k, _)| (i.clone(), k.clone()))
        .collect();
    assert_eq!(audit.accepted_not_applied, requested);
    assert_eq!(audit.removed_as_asked, 0);
    assert!(
        audit
            .violations
            .iter()
            .any(|v| v.contains("accepted but whose operation ended FAILED")),
        "{:#?}",
        audit.violations
    );
}
