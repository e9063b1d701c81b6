//! Replies and batches: what each action returns and does, all or nothing.

use super::*;

#[tokio::test]
async fn unbinds_every_listed_key_from_every_listed_instance() {
    let sim = start(quiet(), small_fleet()).await;
    let reply = Call::unbind(
        &["ins-00000001", "ins-00000002"],
        &["skey-0000000a", "skey-0000000c"],
    )
    .reply(&sim)
    .await;
    reply.assert_success();
    assert_eq!(
        reply.json["Response"].as_object().unwrap().len(),
        1,
        "only RequestId"
    );
    let expected: BTreeSet<_> = [
        binding("ins-00000001", "skey-0000000b"),
        binding("ins-00000003", "skey-0000000b"),
        binding("ins-00000009", "skey-0000000a"),
    ]
    .into();
    assert_eq!(sim.fleet().bindings(), expected);

    // Again: nothing left to unbind, still a success with a fresh RequestId.
    let again = Call::unbind(&["ins-00000001"], &["skey-0000000a"])
        .reply(&sim)
        .await;
    again.assert_success();
    assert_ne!(again.request_id(), reply.request_id());
    assert_eq!(sim.fleet().bindings(), expected);
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let fleet = small_fleet()
        .with(Instance::new("ins-0000000r", GZ).state(InstanceState::Running))
        .with(Instance::new("ins-0000000w", GZ).os(Os::Windows));
    let sim = start(quiet(), fleet).await;
    let before = sim.fleet().bindings();
    let reply = Call::unbind(
        &[
            "ins-00000001",
            "ins-0000000r",
            "ins-00000002",
            "ins-0000000w",
        ],
        &["skey-0000000a"],
    )
    .reply(&sim)
    .await;
    // The first blocked instance in request order decides the code.
    reply.assert_error("UnsupportedOperation.InstanceStateRunning");
    assert_eq!(sim.fleet().bindings(), before);
    let entry = sim.journal().pop().unwrap();
    assert!(!entry.applied);
    assert_eq!(
        entry.code.as_deref(),
        Some("UnsupportedOperation.InstanceStateRunning")
    );
}

#[tokio::test]
async fn force_stop_lets_running_instances_through() {
    let fleet = Fleet::new()
        .with(
            Instance::new("ins-0000000r", GZ)
                .state(InstanceState::Running)
                .keys(["skey-0000000a"]),
        )
        .with(Instance::new("ins-0000000w", GZ).os(Os::Windows));
    let sim = start(quiet(), fleet).await;
    let call = Call::new(
        DISASSOCIATE,
        json!({"InstanceIds": ["ins-0000000r"], "KeyIds": ["skey-0000000a"], "ForceStop": true}),
    );
    call.reply(&sim).await.assert_success();
    let fleet = sim.fleet();
    let instance = fleet.instance("ins-0000000r").unwrap();
    assert_eq!(instance.state, InstanceState::Running, "started again");
    assert!(instance.key_ids.is_empty());
    assert!(sim.journal()[0].force_stop);

    // ForceStop does not help a Windows instance.
    Call::new(
        DISASSOCIATE,
        json!({"InstanceIds": ["ins-0000000w"], "KeyIds": ["skey-0000000a"], "ForceStop": true}),
    )
    .reply(&sim)
    .await
    .assert_error("UnsupportedOperation.InstanceOsWindows");
}

#[tokio::test]
async fn each_instance_condition_has_its_documented_code() {
    use InstanceState::*;
    let cases: Vec<(Instance, &str)> = vec![
        (
            Instance::new("ins-0000win0", GZ).os(Os::Windows),
            "UnsupportedOperation.InstanceOsWindows",
        ),
        (
            Instance::new("ins-0000run0", GZ).state(Running),
            "UnsupportedOperation.InstanceStateRunning",
        ),
        (
            Instance::new("ins-000pend0", GZ).state(Pending),
            "UnsupportedOperation.InstanceStatePending",
        ),
        (
            Instance::new("ins-000fail0", GZ).state(LaunchFailed),
            "InvalidInstance.NotSupported",
        ),
        (
            Instance::new("ins-000strt0", GZ).state(Starting),
            "UnsupportedOperation.InstanceStateStarting",
        ),
        (
            Instance::new("ins-000stpg0", GZ).state(Stopping),
            "UnsupportedOperation.InstanceStateStopping",
        ),
        (
            Instance::new("ins-000rebo0", GZ).state(Rebooting),
            "UnsupportedOperation.InstanceStateRebooting",
        ),
        (
            Instance::new("ins-000shut0", GZ).state(Shutdown),
            "UnsupportedOperation.InstanceStateShutdown",
        ),
        (
            Instance::new("ins-000term0", GZ).state(Terminating),
            "UnsupportedOperation.InstanceStateTerminating",
        ),
        (
            Instance::new("ins-000ersc0", GZ).state(EnterRescueMode),
            "UnsupportedOperation.InstanceStateEnterRescueMode",
        ),
        (
            Instance::new("ins-000resc0", GZ).state(RescueMode),
            "UnsupportedOperation.InstanceStateRescueMode",
        ),
        (
            Instance::new("ins-000xrsc0", GZ).state(ExitRescueMode),
            "OperationDenied.InstanceOperationInProgress",
        ),
        (
            Instance::new("ins-0000slm0", GZ).state(ServiceLiveMigrate),
            "OperationDenied.InstanceOperationInProgress",
        ),
        (
            Instance::new("ins-000ban00", GZ).banned(),
            "UnsupportedOperation.InstanceStateBanning",
        ),
        (
            Instance::new("ins-000frz00", GZ).frozen(),
            "UnsupportedOperation.InstanceStateFreezing",
        ),
        (
            Instance::new("ins-000chrg0", GZ).stop_charging(),
            "UnsupportedOperation.StoppedModeStopCharging",
        ),
        (
            Instance::new("ins-000busy0", GZ).busy_for(Duration::from_secs(3600)),
            "OperationDenied.InstanceOperationInProgress",
        ),
    ];
    let fleet = cases.iter().fold(
        Fleet::new().with_keys(["skey-0000000a"]),
        |fleet, (instance, _)| fleet.with(instance.clone().keys(["skey-0000000a"])),
    );
    let sim = start(quiet(), fleet).await;
    for (instance, code) in &cases {
        let id = instance.instance_id.as_str();
        let reply = Call::unbind(&[id], &["skey-0000000a"]).reply(&sim).await;
        reply.assert_error(code);
        // Only the Windows message names the instance; a client cannot count on finding it.
        let names_id = reply.message().contains(id);
        assert_eq!(
            names_id,
            instance.os == Os::Windows,
            "{id}: {}",
            reply.message()
        );
    }
    assert_eq!(
        Call::unbind(&["ins-0000win0"], &["skey-0000000a"])
            .reply(&sim)
            .await
            .message(),
        "The instance ins-0000win0 with the Windows Server 2019 DataCenter 64bit Chinese Version \
         operating system does not support this operation."
    );
    assert_eq!(
        Call::unbind(&["ins-0000run0"], &["skey-0000000a"])
            .reply(&sim)
            .await
            .message(),
        "Running instances do not support this operation."
    );
    assert!(
        sim.fleet()
            .instances()
            .iter()
            .all(|i| i.key_ids == ["skey-0000000a"]),
        "nothing changed"
    );
}

#[tokio::test]
async fn transitional_states_settle_so_a_retry_succeeds() {
    let fleet = Fleet::new()
        .with(
            Instance::new("ins-0000stpg", GZ)
                .state(InstanceState::Stopping)
                .keys(["skey-0000000a"])
                .settles(InstanceState::Stopped, Duration::from_millis(300)),
        )
        // No explicit target: REBOOTING settles into RUNNING after the config's settle_after.
        .with(Instance::new("ins-0000rebo", GZ).state(InstanceState::Rebooting));
    let config = SimConfig {
        settle_after: Duration::from_millis(200),
        ..quiet()
    };
    let sim = start(config, fleet).await;
    let call = Call::unbind(&["ins-0000stpg"], &["skey-0000000a"]);
    call.reply(&sim)
        .await
        .assert_error("UnsupportedOperation.InstanceStateStopping");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = call.reply(&sim).await;
        if reply.code().is_none() {
            break;
        }
        reply.assert_error("UnsupportedOperation.InstanceStateStopping");
        assert!(Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fleet = sim.fleet();
    assert_eq!(
        fleet.instance("ins-0000stpg").unwrap().state,
        InstanceState::Stopped
    );
    assert!(fleet.instance("ins-0000stpg").unwrap().key_ids.is_empty());
    assert_eq!(
        fleet.instance("ins-0000rebo").unwrap().state,
        InstanceState::Running
    );
}

#[tokio::test]
async fn busy_windows_deny_until_they_end() {
    let fleet = Fleet::new().with(
        Instance::new("ins-0000busy", GZ)
            .keys(["skey-0000000a"])
            .busy_for(Duration::from_millis(300)),
    );
    let sim = start(quiet(), fleet).await;
    let call = Call::unbind(&["ins-0000busy"], &["skey-0000000a"]);
    call.reply(&sim)
        .await
        .assert_error("OperationDenied.InstanceOperationInProgress");
    let deadline = Instant::now() + DEADLINE;
    while call.reply(&sim).await.code().is_some() {
        assert!(Instant::now() < deadline, "still busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sim.fleet().bindings().is_empty());
}

#[tokio::test]
async fn the_fleet_can_change_mid_run() {
    let fleet = Fleet::new().with(
        Instance::new("ins-0000000r", GZ)
            .state(InstanceState::Running)
            .keys(["skey-0000000a"]),
    );
    let sim = start(quiet(), fleet).await;
    let call = Call::unbind(&["ins-0000000r"], &["skey-0000000a"]);
    call.reply(&sim)
        .await
        .assert_error("UnsupportedOperation.InstanceStateRunning");
    // An operator stops the instance.
    sim.edit_fleet(|fleet| fleet.instances[0].state = InstanceState::Stopped)
        .unwrap();
    call.reply(&sim).await.assert_success();
    let err = sim
        .edit_fleet(|fleet| fleet.instances[0].instance_id = "bad".into())
        .unwrap_err();
    assert!(err.to_string().contains("instance_id"), "{err}");
    assert_eq!(sim.fleet().instances()[0].instance_id, "ins-0000000r");
}

/// Associate adds keys and never removes one: keyfleet must never rely on it to
/// remove a key (the reference leaves which holds unverified).
#[tokio::test]
async fn associate_adds_keys_and_removes_none() {
    let sim = start(quiet(), small_fleet()).await;
    Call::new(
        ASSOCIATE,
        json!({"InstanceIds": ["ins-00000001", "ins-00000002"], "KeyIds": ["skey-0000000c", "skey-0000000a"]}),
    )
    .reply(&sim)
    .await
    .assert_success();
    let fleet = sim.fleet();
    assert_eq!(
        fleet.instance("ins-00000001").unwrap().key_ids,
        ["skey-0000000a", "skey-0000000b", "skey-0000000c"]
    );
    assert_eq!(
        fleet.instance("ins-00000002").unwrap().key_ids,
        ["skey-0000000a", "skey-0000000c"]
    );
    Call::new(
        ASSOCIATE,
        json!({"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-99999999"]}),
    )
    .reply(&sim)
    .await
    .assert_error("InvalidKeyPairId.NotFound");
}
