//! Faults: error replies, dropped connections, and a seed that reproduces a run.

use super::*;

fn only(faults: Faults) -> SimConfig {
    SimConfig { faults, ..quiet() }
}

#[tokio::test]
async fn error_faults_change_nothing() {
    let kinds = [
        (
            Faults {
                mutex: 1.0,
                ..Faults::default()
            },
            "MutexOperation.TaskRunning",
        ),
        (
            Faults {
                in_progress: 1.0,
                ..Faults::default()
            },
            "OperationDenied.InstanceOperationInProgress",
        ),
        (
            Faults {
                internal: 1.0,
                ..Faults::default()
            },
            "InternalServerError",
        ),
    ];
    for (faults, code) in kinds {
        let sim = start(only(faults), small_fleet()).await;
        let before = sim.fleet().bindings();
        Call::unbind(&["ins-00000001"], &["skey-0000000a"])
            .reply(&sim)
            .await
            .assert_error(code);
        assert_eq!(sim.fleet().bindings(), before, "{code}");
        let entry = sim.journal().pop().unwrap();
        assert_eq!(entry.code.as_deref(), Some(code));
        assert!(!entry.applied);
        // Validation still comes first.
        Call::unbind(&["ins-1122"], &["skey-0000000a"])
            .reply(&sim)
            .await
            .assert_error("InvalidInstanceId.Malformed");
    }
}

#[tokio::test]
async fn drop_before_closes_the_connection_and_applies_nothing() {
    let sim = start(
        only(Faults {
            drop_before: 1.0,
            ..Faults::default()
        }),
        small_fleet(),
    )
    .await;
    let before = sim.fleet().bindings();
    let err = Call::unbind(&["ins-00000001"], &["skey-0000000a"])
        .send(&sim)
        .await
        .expect_err("no reply");
    assert!(!err.is_timeout(), "{err}");
    assert_eq!(sim.fleet().bindings(), before);
    let entry = sim.journal().pop().unwrap();
    assert_eq!(entry.code.as_deref(), Some(DROPPED_BEFORE_APPLY));
    assert_eq!(entry.request_id, None);
    assert!(entry.dropped && !entry.applied);
    assert_eq!(sim.stats().requests[DISASSOCIATE][DROPPED_BEFORE_APPLY], 1);
}

#[tokio::test]
async fn drop_after_applies_and_closes_the_connection() {
    let sim = start(
        only(Faults {
            drop_after: 1.0,
            ..Faults::default()
        }),
        small_fleet(),
    )
    .await;
    let err = Call::unbind(&["ins-00000001"], &["skey-0000000a"])
        .send(&sim)
        .await
        .expect_err("no reply");
    assert!(!err.is_timeout(), "{err}");
    assert!(
        !sim.fleet()
            .bindings()
            .contains(&binding("ins-00000001", "skey-0000000a")),
        "the change was made"
    );
    let entry = sim.journal().pop().unwrap();
    assert_eq!(entry.code, None);
    assert_eq!(entry.request_id, None);
    assert!(entry.dropped && entry.applied);
    assert_eq!(sim.stats().requests[DISASSOCIATE][DROPPED_AFTER_APPLY], 1);
    assert_eq!(sim.stats().dropped, 1);
}

/// Signs a request by hand and reads the raw socket: not one byte comes back.
#[tokio::test]
async fn a_dropped_connection_sends_no_http_at_all() {
    let sim = start(
        only(Faults {
            drop_after: 1.0,
            ..Faults::default()
        }),
        small_fleet(),
    )
    .await;
    let addr = sim.local_addr();
    let body = json!({"InstanceIds": ["ins-00000002"], "KeyIds": ["skey-0000000a"]}).to_string();
    let host = addr.to_string();
    let timestamp = now_secs();
    let parts = RequestParts {
        method: "POST",
        path: "/",
        query: "",
        headers: vec![("Content-Type", "application/json"), ("Host", &host)],
        payload: body.as_bytes(),
    };
    let auth = sign(
        &parts,
        "cvm",
        timestamp,
        sim::TEST_SECRET_ID,
        &Secret::new(sim::TEST_SECRET_KEY),
    )
    .authorization;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         X-TC-Action: {DISASSOCIATE}\r\nX-TC-Version: 2017-03-12\r\nX-TC-Region: {GZ}\r\n\
         X-TC-Timestamp: {timestamp}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let received = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        received
    })
    .await
    .unwrap();
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        sim.fleet()
            .instance("ins-00000002")
            .unwrap()
            .key_ids
            .is_empty()
    );
}

/// Same seed and same requests: same outcomes, same final fleet; another seed differs.
#[tokio::test]
async fn the_same_seed_reproduces_a_run() {
    async fn run(seed: u64) -> (Vec<String>, Fleet) {
        let config = SimConfig {
            seed,
            faults: Faults {
                mutex: 0.1,
                in_progress: 0.1,
                internal: 0.1,
                drop_before: 0.1,
                drop_after: 0.1,
            },
            ..quiet()
        };
        // No settling or busy windows: those follow the clock, not the seed.
        let mix = Mix {
            settling: 0.0,
            busy: 0.0,
            ..Mix::default()
        };
        let fleet = Fleet::generate(60, 11, &mix);
        let targets: Vec<(String, String, String)> = fleet
            .instances()
            .iter()
            .map(|i| {
                (
                    i.instance_id.clone(),
                    i.region.clone(),
                    i.key_ids[0].clone(),
                )
            })
            .collect();
        let sim = start(config, fleet).await;
        let mut outcomes = Vec::new();
        for (instance, region, key) in &targets {
            let outcome = match Call::unbind(&[instance], &[key])
                .region(region)
                .send(&sim)
                .await
            {
                Ok(reply) => reply.code().unwrap_or("Success").to_string(),
                Err(_) => "dropped".to_string(),
            };
            outcomes.push(outcome);
        }
        let journal: Vec<String> = sim
            .journal()
            .iter()
            .map(|e| format!("{:?}", (&e.code, e.applied, e.dropped)))
            .collect();
        assert_eq!(journal.len(), outcomes.len());
        (outcomes, sim.fleet())
    }
    let (first, first_fleet) = run(5).await;
    let (second, second_fleet) = run(5).await;
    assert_eq!(first, second);
    assert_eq!(first_fleet.bindings(), second_fleet.bindings());
    let kinds: BTreeSet<&str> = first.iter().map(String::as_str).collect();
    assert!(
        kinds.contains("dropped") && kinds.contains("Success"),
        "{kinds:?}"
    );
    let (other, _) = run(6).await;
    assert_ne!(first, other);
}
