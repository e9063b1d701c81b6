//! The simulator over real HTTP on 127.0.0.1: signatures, validation, batch
//! semantics, instance states, faults, the rate limit, observability, the CLI.
//! Requests are signed here with `keyfleet::sign` so these tests need no API client.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use keyfleet::api::CvmClient;
use keyfleet::secret::Secret;
use keyfleet::sign::{RequestParts, sign};
use keyfleet::sim::{
    self, DROPPED_AFTER_APPLY, DROPPED_BEFORE_APPLY, Faults, Fleet, Instance, InstanceState, Mix,
    Os, SimConfig, SimHandle,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::support;

const GZ: &str = "ap-guangzhou";
const SH: &str = "ap-shanghai";
const DISASSOCIATE: &str = "DisassociateInstancesKeyPairs";
const ASSOCIATE: &str = "AssociateInstancesKeyPairs";
/// Upper bound for anything the tests wait for; the waits are usually far shorter.
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fixtures

async fn start(config: SimConfig, fleet: Fleet) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    sim::start(listener, config, fleet)
        .await
        .expect("start sim")
}

/// Settling switched off unless a test asks, and no rate limit to trip over.
fn quiet() -> SimConfig {
    SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    }
}

/// Three STOPPED Linux instances in Guangzhou holding keys a and b, one in Shanghai.
fn small_fleet() -> Fleet {
    Fleet::new()
        .with_keys(["skey-0000000c"])
        .with(Instance::new("ins-00000001", GZ).keys(["skey-0000000a", "skey-0000000b"]))
        .with(Instance::new("ins-00000002", GZ).keys(["skey-0000000a"]))
        .with(Instance::new("ins-00000003", GZ).keys(["skey-0000000b"]))
        .with(Instance::new("ins-00000009", SH).keys(["skey-0000000a"]))
}

fn binding(instance: &str, key: &str) -> (String, String) {
    (instance.to_string(), key.to_string())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

thread_local! {
    /// One client per test (each test runs on its own thread and runtime); building one
    /// loads the TLS roots, which is slow. No idle connections are kept, so every request
    /// gets its own connection and a dropped one cannot be retried behind the test's back.
    static HTTP: reqwest::Client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(DEADLINE)
        .build()
        .expect("HTTP client");
}

/// How to sign (or mis-sign) a request.
#[derive(Clone)]
enum Auth {
    Signed,
    Missing,
    Literal(String),
}

/// One API call, built up and then sent over HTTP with a TC3 signature.
#[derive(Clone)]
struct Call {
    action: Option<String>,
    version: String,
    region: Option<String>,
    body: String,
    /// `Some(query)` sends a GET with this query string instead of a POST.
    get_query: Option<String>,
    host: Option<String>,
    timestamp_offset: i64,
    secret_id: String,
    secret_key: String,
    /// Headers to sign besides content-type and host.
    extra_signed: Vec<&'static str>,
    auth: Auth,
    /// Replaces the body after signing.
    tampered_body: Option<String>,
}

impl Call {
    fn new(action: &str, body: Value) -> Call {
        Call {
            action: Some(action.to_string()),
            version: "2017-03-12".to_string(),
            region: Some(GZ.to_string()),
            body: body.to_string(),
            get_query: None,
            host: None,
            timestamp_offset: 0,
            secret_id: sim::TEST_SECRET_ID.to_string(),
            secret_key: sim::TEST_SECRET_KEY.to_string(),
            extra_signed: Vec::new(),
            auth: Auth::Signed,
            tampered_body: None,
        }
    }

    fn unbind(instances: &[&str], keys: &[&str]) -> Call {
        Call::new(
            DISASSOCIATE,
            json!({"InstanceIds": instances, "KeyIds": keys}),
        )
    }

    fn get(action: &str, query: &str) -> Call {
        let mut call = Call::new(action, json!({}));
        call.body = String::new();
        call.get_query = Some(query.to_string());
        call
    }

    fn region(mut self, region: &str) -> Call {
        self.region = Some(region.to_string());
        self
    }

    async fn send(&self, sim: &SimHandle) -> Result<Reply, reqwest::Error> {
        self.send_to(&sim.endpoint()).await
    }

    async fn send_to(&self, endpoint: &str) -> Result<Reply, reqwest::Error> {
        let host = self
            .host
            .clone()
            .unwrap_or_else(|| endpoint.trim_start_matches("http://").to_string());
        let timestamp = now_secs() + self.timestamp_offset;
        let is_get = self.get_query.is_some();
        let content_type = if is_get {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let mut headers: Vec<(&str, String)> = vec![
            ("Content-Type", content_type.to_string()),
            ("Host", host),
            ("X-TC-Version", self.version.clone()),
            ("X-TC-Timestamp", timestamp.to_string()),
        ];
        if let Some(action) = &self.action {
            headers.push(("X-TC-Action", action.clone()));
        }
        if let Some(region) = &self.region {
            headers.push(("X-TC-Region", region.clone()));
        }
        let query = self.get_query.clone().unwrap_or_default();
        let signed: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(name, _)| {
                let lower = name.to_ascii_lowercase();
                lower == "content-type"
                    || lower == "host"
                    || self.extra_signed.contains(&lower.as_str())
            })
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let parts = RequestParts {
            method: if is_get { "GET" } else { "POST" },
            path: "/",
            query: &query,
            headers: signed,
            payload: self.body.as_bytes(),
        };
        let signature = sign(
            &parts,
            "cvm",
            timestamp,
            &self.secret_id,
            &Secret::new(self.secret_key.clone()),
        );
        let client = HTTP.with(Clone::clone);
        let url = if is_get {
            format!("{endpoint}/?{query}")
        } else {
            format!("{endpoint}/")
        };
        let mut request = if is_get {
            client.get(url)
        } else {
            client
                .post(url)
                .body(self.tampered_body.clone().unwrap_or(self.body.clone()))
        };
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        match &self.auth {
            Auth::Signed => request = request.header("Authorization", signature.authorization),
            Auth::Literal(value) => request = request.header("Authorization", value),
            Auth::Missing => {}
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let json: Value = response.json().await?;
        Ok(Reply {
            status,
            content_type,
            json,
        })
    }

    /// Sends and expects a reply (not a dropped connection).
    async fn reply(&self, sim: &SimHandle) -> Reply {
        self.send(sim).await.expect("a reply")
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    json: Value,
}

impl Reply {
    fn code(&self) -> Option<&str> {
        self.json["Response"]["Error"]["Code"].as_str()
    }

    fn message(&self) -> &str {
        self.json["Response"]["Error"]["Message"]
            .as_str()
            .unwrap_or("")
    }

    fn request_id(&self) -> &str {
        self.json["Response"]["RequestId"].as_str().unwrap_or("")
    }

    /// Asserts the reply is the API error `code`, in the API's envelope.
    fn assert_error(&self, code: &str) {
        assert_eq!(self.code(), Some(code), "{}", self.json);
        self.assert_envelope();
    }

    fn assert_success(&self) {
        assert_eq!(self.code(), None, "{}", self.json);
        self.assert_envelope();
    }

    fn assert_envelope(&self) {
        assert_eq!(self.status, 200);
        assert_eq!(self.content_type, "application/json");
        let id = uuid::Uuid::parse_str(self.request_id()).expect("RequestId is a UUID");
        assert_eq!(id.get_version_num(), 4);
    }
}

// ---------------------------------------------------------------- replies and batches

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

// ---------------------------------------------------------------- signatures and protocol

#[tokio::test]
async fn each_signature_failure_has_its_code() {
    let sim = start(quiet(), small_fleet()).await;
    let good = Call::unbind(&["ins-00000001"], &["skey-0000000a"]);
    let before = sim.fleet().bindings();

    let mut unknown_id = good.clone();
    unknown_id.secret_id = "AKIDsomebodyelse".to_string();
    unknown_id
        .reply(&sim)
        .await
        .assert_error("AuthFailure.SecretIdNotFound");

    let mut wrong_key = good.clone();
    wrong_key.secret_key = "not-the-key".to_string();
    wrong_key
        .reply(&sim)
        .await
        .assert_error("AuthFailure.SignatureFailure");

    let mut tampered = good.clone();
    tampered.tampered_body =
        Some(json!({"InstanceIds": ["ins-00000002"], "KeyIds": ["skey-0000000a"]}).to_string());
    tampered
        .reply(&sim)
        .await
        .assert_error("AuthFailure.SignatureFailure");

    let mut missing = good.clone();
    missing.auth = Auth::Missing;
    missing
        .reply(&sim)
        .await
        .assert_error("AuthFailure.InvalidAuthorization");

    let mut malformed = good.clone();
    malformed.auth = Auth::Literal("Basic dXNlcjpwYXNz".to_string());
    malformed
        .reply(&sim)
        .await
        .assert_error("AuthFailure.InvalidAuthorization");

    let mut old = good.clone();
    old.timestamp_offset = -301;
    old.reply(&sim)
        .await
        .assert_error("AuthFailure.SignatureExpire");
    let mut future = good.clone();
    future.timestamp_offset = 400;
    future
        .reply(&sim)
        .await
        .assert_error("AuthFailure.SignatureExpire");

    assert_eq!(
        sim.fleet().bindings(),
        before,
        "no refused request changed anything"
    );

    // Within the allowed skew the same request goes through.
    let mut skewed = good.clone();
    skewed.timestamp_offset = -250;
    skewed.reply(&sim).await.assert_success();
}

#[tokio::test]
async fn accepts_host_forms_and_any_signed_headers() {
    let sim = start(quiet(), small_fleet()).await;
    let endpoint = sim.endpoint();
    // The Python SDK: Host with the port, content-type;host signed.
    Call::unbind(&["ins-00000001"], &["skey-0000000a"])
        .reply(&sim)
        .await
        .assert_success();
    // tccli --endpoint: the literal URL as Host.
    let mut tccli = Call::unbind(&["ins-00000002"], &["skey-0000000a"]);
    tccli.host = Some(endpoint.clone());
    tccli.reply(&sim).await.assert_success();
    // More signed headers.
    let mut more = Call::unbind(&["ins-00000003"], &["skey-0000000b"]);
    more.extra_signed = vec!["x-tc-action", "x-tc-region", "x-tc-timestamp"];
    more.reply(&sim).await.assert_success();
}

#[tokio::test]
async fn protocol_errors() {
    let sim = start(quiet(), small_fleet()).await;
    let good = Call::unbind(&["ins-00000001"], &["skey-0000000a"]);

    let mut version = good.clone();
    version.version = "2017-03-13".to_string();
    version.reply(&sim).await.assert_error("NoSuchVersion");

    let mut action = good.clone();
    action.action = Some("RebootInstances".to_string());
    action.reply(&sim).await.assert_error("InvalidAction");

    let mut no_action = good.clone();
    no_action.action = None;
    let reply = no_action.reply(&sim).await;
    reply.assert_error("MissingParameter");
    assert!(reply.message().contains("Action"), "{}", reply.message());

    let mut no_region = good.clone();
    no_region.region = None;
    no_region.reply(&sim).await.assert_error("MissingParameter");

    Call::new(
        DISASSOCIATE,
        json!({"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-0000000a"], "DryRun": true}),
    )
    .reply(&sim)
    .await
    .assert_error("UnknownParameter");

    Call::new(
        DISASSOCIATE,
        json!({"InstanceIds": "ins-00000001", "KeyIds": ["skey-0000000a"]}),
    )
    .reply(&sim)
    .await
    .assert_error("InvalidParameter");

    let mut not_json = good.clone();
    not_json.body = "InstanceIds=ins-00000001".to_string();
    not_json.reply(&sim).await.assert_error("InvalidParameter");

    assert_eq!(sim.fleet(), {
        let mut f = small_fleet();
        f.keys = f.all_keys().into_iter().collect();
        f
    });
}

#[tokio::test]
async fn validation_errors_in_the_apis_order() {
    let sim = start(quiet(), small_fleet()).await;
    let many_instances: Vec<String> = (0..101).map(|n| format!("ins-{n:08}")).collect();
    let many_keys: Vec<String> = (0..101).map(|n| format!("skey-{n:08}")).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"KeyIds": ["skey-0000000a"]}), "MissingParameter"),
        (json!({"InstanceIds": ["ins-00000001"]}), "MissingParameter"),
        (
            json!({"InstanceIds": [], "KeyIds": ["skey-0000000a"]}),
            "MissingParameter",
        ),
        // Missing beats too many.
        (json!({"InstanceIds": many_instances}), "MissingParameter"),
        (
            json!({"InstanceIds": many_instances, "KeyIds": ["skey-0000000a"]}),
            "InvalidParameterValue.LimitExceeded",
        ),
        // Too many beats malformed.
        (
            json!({"InstanceIds": ["ins-1122"], "KeyIds": many_keys}),
            "InvalidParameterValue.LimitExceeded",
        ),
        (
            json!({"InstanceIds": ["ins-1122"], "KeyIds": ["skey-0000000a"]}),
            "InvalidInstanceId.Malformed",
        ),
        // Malformed beats not found, whichever list it is in.
        (
            json!({"InstanceIds": ["ins-77777777"], "KeyIds": ["skey-1122"]}),
            "InvalidKeyPairId.Malformed",
        ),
        (
            json!({"InstanceIds": ["ins-00000001", "ins-77777777"], "KeyIds": ["skey-0000000a"]}),
            "InvalidInstanceId.NotFound",
        ),
        // An instance of another region is not found in this one.
        (
            json!({"InstanceIds": ["ins-00000009"], "KeyIds": ["skey-0000000a"]}),
            "InvalidInstanceId.NotFound",
        ),
        (
            json!({"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-77777777"]}),
            "InvalidKeyPairId.NotFound",
        ),
    ];
    for (body, code) in cases {
        let reply = Call::new(DISASSOCIATE, body.clone()).reply(&sim).await;
        assert_eq!(reply.code(), Some(code), "{body}");
        reply.assert_envelope();
    }
    let reply = Call::unbind(&["ins-1122"], &["skey-0000000a"])
        .reply(&sim)
        .await;
    assert_eq!(
        reply.message(),
        "Invalid instance ID. The specified instance ID has an invalid format. For example, \
         ins-1122 has an invalid ID length."
    );
    // Exactly 100 is allowed (and unknown ids then are the problem).
    let hundred: Vec<String> = (0..100).map(|n| format!("ins-{n:08}")).collect();
    Call::new(
        DISASSOCIATE,
        json!({"InstanceIds": hundred, "KeyIds": ["skey-0000000a"]}),
    )
    .reply(&sim)
    .await
    .assert_error("InvalidInstanceId.NotFound");
    // The Shanghai instance is found with the Shanghai region.
    Call::unbind(&["ins-00000009"], &["skey-0000000a"])
        .region(SH)
        .reply(&sim)
        .await
        .assert_success();
}

#[tokio::test]
async fn get_with_flattened_query_parameters() {
    let fleet = small_fleet().with(
        Instance::new("ins-0000000r", GZ)
            .state(InstanceState::Running)
            .keys(["skey-0000000a"]),
    );
    let sim = start(quiet(), fleet).await;
    Call::get(
        DISASSOCIATE,
        "InstanceIds.0=ins-00000001&InstanceIds.1=ins-0000000r&KeyIds.0=skey-0000000a&ForceStop=true",
    )
    .reply(&sim)
    .await
    .assert_success();
    let fleet = sim.fleet();
    assert_eq!(
        fleet.instance("ins-00000001").unwrap().key_ids,
        ["skey-0000000b"]
    );
    assert!(fleet.instance("ins-0000000r").unwrap().key_ids.is_empty());

    // Common parameters may ride in the query too, as in the documented GET example.
    let mut in_query = Call::get(
        "",
        "Action=DescribeInstances&Version=2017-03-12&Region=ap-guangzhou&Offset=1&Limit=2",
    );
    in_query.action = None;
    in_query.region = None;
    let reply = in_query.reply(&sim).await;
    reply.assert_success();
    assert_eq!(reply.json["Response"]["TotalCount"], json!(4));
    assert_eq!(
        reply.json["Response"]["InstanceSet"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    Call::get(
        DISASSOCIATE,
        "InstanceIds.0=ins-00000002&KeyIds.0=skey-1122",
    )
    .reply(&sim)
    .await
    .assert_error("InvalidKeyPairId.Malformed");
}

#[tokio::test]
async fn describe_instances_and_key_pairs() {
    let sim = start(quiet(), small_fleet()).await;
    let reply = Call::new(
        "DescribeInstances",
        json!({"InstanceIds": ["ins-00000002", "ins-77777777", "ins-00000009"]}),
    )
    .reply(&sim)
    .await;
    reply.assert_success();
    // Unknown and other-region ids are left out, like the real API.
    assert_eq!(reply.json["Response"]["TotalCount"], json!(1));
    let item = &reply.json["Response"]["InstanceSet"][0];
    assert_eq!(item["InstanceId"], "ins-00000002");
    assert_eq!(item["InstanceState"], "STOPPED");
    assert_eq!(item["OsName"], "TencentOS Server 3.1 (TK4)");
    assert_eq!(item["LoginSettings"]["KeyIds"], json!(["skey-0000000a"]));

    let mut seen = Vec::new();
    for offset in [0, 2] {
        let page = Call::new("DescribeInstances", json!({"Offset": offset, "Limit": 2}))
            .reply(&sim)
            .await;
        assert_eq!(page.json["Response"]["TotalCount"], json!(3));
        for item in page.json["Response"]["InstanceSet"].as_array().unwrap() {
            seen.push(item["InstanceId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["ins-00000001", "ins-00000002", "ins-00000003"]);
    Call::new("DescribeInstances", json!({"Limit": 101}))
        .reply(&sim)
        .await
        .assert_error("InvalidParameterValue");
    Call::new("DescribeInstances", json!({"InstanceIds": ["ins-12"]}))
        .reply(&sim)
        .await
        .assert_error("InvalidInstanceId.Malformed");

    let keys = Call::new(
        "DescribeKeyPairs",
        json!({"KeyIds": ["skey-0000000a", "skey-0000000c"]}),
    )
    .reply(&sim)
    .await;
    keys.assert_success();
    let set = &keys.json["Response"]["KeyPairSet"];
    assert_eq!(set[0]["KeyId"], "skey-0000000a");
    assert_eq!(
        set[0]["AssociatedInstanceIds"],
        json!(["ins-00000001", "ins-00000002"])
    );
    assert_eq!(set[1]["AssociatedInstanceIds"], json!([]));
    Call::new("DescribeKeyPairs", json!({"KeyIds": ["skey-77777777"]}))
        .reply(&sim)
        .await
        .assert_error("InvalidKeyPairId.NotFound");
    let all = Call::new("DescribeKeyPairs", json!({})).reply(&sim).await;
    assert_eq!(all.json["Response"]["TotalCount"], json!(3));
}

// ---------------------------------------------------------------- asynchronous operations

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

// ---------------------------------------------------------------- faults

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

// ---------------------------------------------------------------- rate limit

#[tokio::test]
async fn the_rate_limit_is_a_sliding_window_per_action_and_host() {
    let config = SimConfig { rate: 3, ..quiet() };
    let sim = start(config, small_fleet()).await;
    let describe = Call::new("DescribeKeyPairs", json!({}));
    let started = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(describe.reply(&sim).await.code().map(str::to_string));
    }
    let burst = started.elapsed();
    if burst < Duration::from_millis(900) {
        let limited = Some("RequestLimitExceeded".to_string());
        assert_eq!(codes, [None, None, None, limited.clone(), limited]);
        // Another action has its own allowance; a throttled request changes nothing.
        Call::unbind(&["ins-00000001"], &["skey-0000000a"])
            .reply(&sim)
            .await
            .assert_success();
        let throttled_unbind = Call::unbind(&["ins-00000002"], &["skey-0000000a"]);
        for _ in 0..3 {
            let _ = throttled_unbind.reply(&sim).await;
        }
        let stats = sim.stats();
        assert!(stats.throttled >= 2);
        assert_eq!(stats.max_in_any_second, 3);
        assert_eq!(stats.max_in_any_second_by_action["DescribeKeyPairs"], 3);
    }
    // Refused requests did not use up the allowance: a second after the burst
    // the window has room again.
    tokio::time::sleep_until(started + Duration::from_millis(1100)).await;
    describe.reply(&sim).await.assert_success();
    let stats = sim.stats();
    assert!(stats.max_in_any_second <= 3, "{stats:?}");
    assert_eq!(
        stats.requests["DescribeKeyPairs"]
            .get("RequestLimitExceeded")
            .copied()
            .unwrap_or(0)
            + stats.requests["DescribeKeyPairs"]["Success"],
        6
    );
}

#[tokio::test]
async fn latency_delays_the_reply() {
    let config = SimConfig {
        latency: (Duration::from_millis(150), Duration::from_millis(150)),
        jitter: Duration::from_millis(20),
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let started = Instant::now();
    Call::new("DescribeInstances", json!({}))
        .reply(&sim)
        .await
        .assert_success();
    assert!(started.elapsed() >= Duration::from_millis(150));
}

// ---------------------------------------------------------------- observability

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

// ---------------------------------------------------------------- CLI

/// Kills the child on every exit path, so a failing test leaves no server behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn keyfleet_sim_serves_from_the_command_line() {
    let mut child = Child(
        Command::new(support::keyfleet_bin())
            .args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--generate",
                "30",
                "--seed",
                "9",
                "--rate",
                "10",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keyfleet sim"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("printed in time")
    .unwrap()
    .unwrap();
    let printed: Value = serde_json::from_str(&line).expect("one JSON line");
    let endpoint = printed["endpoint"].as_str().unwrap();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert_eq!(printed["seed"], json!(9));

    let fleet = Fleet::generate(30, 9, &Mix::default());
    let target = fleet
        .instances()
        .iter()
        .find(|i| {
            i.state == InstanceState::Stopped
                && i.os == Os::Linux
                && !i.banned
                && !i.frozen
                && !i.stop_charging
                && i.busy_for_ms.is_none()
        })
        .unwrap();
    let mut call =
        Call::unbind(&[&target.instance_id], &[&target.key_ids[0]]).region(&target.region);
    call.secret_id = printed["secret_id"].as_str().unwrap().to_string();
    call.secret_key = printed["secret_key"].as_str().unwrap().to_string();
    call.send_to(endpoint).await.unwrap().assert_success();

    let mut wrong = call.clone();
    wrong.secret_id = sim::TEST_SECRET_ID.to_string();
    wrong
        .send_to(endpoint)
        .await
        .unwrap()
        .assert_error("AuthFailure.SecretIdNotFound");

    // And `keyfleet call disassociate` against it, as a user would check a rehearsal.
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(support::keyfleet_bin())
        .args([
            "call",
            "disassociate",
            "--endpoint",
            endpoint,
            "--region",
            &target.region,
        ])
        .args([
            "--instance",
            &target.instance_id,
            "--key",
            &target.key_ids[0],
        ])
        .env_clear()
        .env("HOME", home.path())
        .env(
            "TENCENTCLOUD_SECRET_ID",
            printed["secret_id"].as_str().unwrap(),
        )
        .env(
            "TENCENTCLOUD_SECRET_KEY",
            printed["secret_key"].as_str().unwrap(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim().len(), 36, "a RequestId: {stdout}");
}

/// Starts `keyfleet sim` with `args` and `env`, and returns its printed JSON line and
/// its stderr so far (the child is killed on drop).
fn sim_cli(args: &[&str], env: &[(&str, &str)]) -> (Child, Value) {
    let mut command = Command::new(support::keyfleet_bin());
    command
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--generate",
            "5",
            "--seed",
            "3",
        ])
        .args(args)
        .env_remove("KEYFLEET_SIM_SECRET_KEY")
        .env_remove("KEYFLEET_SIM_SECRET_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = Child(command.spawn().expect("spawn keyfleet sim"));
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let printed = serde_json::from_str(&line).unwrap_or_else(|_| panic!("one JSON line: {line:?}"));
    (child, printed)
}

/// Reads the child's stderr up to its "Ctrl-C stops." line.
fn stderr_banner(child: &mut Child) -> String {
    let mut text = String::new();
    let mut reader = BufReader::new(child.0.stderr.take().unwrap());
    while !text.contains("Ctrl-C stops.") {
        if reader.read_line(&mut text).unwrap() == 0 {
            break;
        }
    }
    text
}

#[tokio::test]
async fn keyfleet_sim_takes_its_key_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sim.key");
    std::fs::write(&file, "keyFromAFile0000\n").unwrap();
    let id = [("KEYFLEET_SIM_SECRET_ID", "AKIDfromfile")];
    let (mut from_file, printed) = sim_cli(&["--secret-key-file", file.to_str().unwrap()], &id);
    assert_eq!(
        printed["secret_key"],
        Value::Null,
        "a given key is not echoed"
    );
    let banner = stderr_banner(&mut from_file);
    assert!(!banner.contains("keyFromAFile"), "{banner}");
    let mut call = Call::new("DescribeInstances", json!({}));
    call.secret_id = "AKIDfromfile".to_string();
    call.secret_key = "keyFromAFile0000".to_string();
    let endpoint = printed["endpoint"].as_str().unwrap().to_string();
    call.send_to(&endpoint).await.unwrap().assert_success();

    let env = [
        ("KEYFLEET_SIM_SECRET_ID", "AKIDfromenv"),
        ("KEYFLEET_SIM_SECRET_KEY", "keyFromTheEnv000"),
    ];
    let (_from_env, printed) = sim_cli(&[], &env);
    call.secret_id = "AKIDfromenv".to_string();
    call.secret_key = "keyFromTheEnv000".to_string();
    let endpoint = printed["endpoint"].as_str().unwrap().to_string();
    call.send_to(&endpoint).await.unwrap().assert_success();

    // The flag still works, with a warning.
    let (mut from_flag, printed) = sim_cli(
        &[
            "--secret-id",
            "AKIDflag",
            "--secret-key",
            "keyFromTheFlag00",
        ],
        &[],
    );
    let banner = stderr_banner(&mut from_flag);
    assert!(banner.contains("--secret-key is deprecated"), "{banner}");
    call.secret_id = "AKIDflag".to_string();
    call.secret_key = "keyFromTheFlag00".to_string();
    let endpoint = printed["endpoint"].as_str().unwrap().to_string();
    call.send_to(&endpoint).await.unwrap().assert_success();

    // An id without a key is refused, naming both ways to give one.
    let out = support::Cmd::new(["sim", "--listen", "127.0.0.1:0", "--secret-id", "AKIDx"]).run();
    assert_eq!(out.code, Some(2));
    let stderr = out.stderr_text();
    assert!(
        stderr.contains("--secret-key-file") && stderr.contains("KEYFLEET_SIM_SECRET_KEY"),
        "{stderr}"
    );
}

#[test]
fn keyfleet_sim_refuses_a_public_listen_address() {
    let output = Command::new(support::keyfleet_bin())
        .args(["sim", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-non-loopback"), "{stderr}");
}

// ---------------------------------------------------------------- limits per access endpoint

/// `n` DescribeInstances requests with `Host: host`, sent at once; their codes.
async fn burst(sim: &SimHandle, host: &str, n: usize) -> Vec<Option<String>> {
    let mut call = Call::new("DescribeKeyPairs", json!({}));
    call.host = Some(host.to_string());
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(call.reply(sim).await.code().map(str::to_string));
    }
    codes
}

fn admitted(codes: &[Option<String>]) -> usize {
    codes.iter().filter(|c| c.is_none()).count()
}

#[tokio::test]
async fn each_host_has_its_own_limit() {
    let config = SimConfig {
        rate: 10,
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let started = Instant::now();
    let a = burst(&sim, "cvm.ap-guangzhou.sim.test", 13).await;
    let b = burst(&sim, "CVM.ap-shanghai.sim.test", 13).await;
    // Only a burst inside one window shows the limit exactly (a loaded machine may
    // spread it over more).
    let one_window = started.elapsed() < Duration::from_millis(900);
    let stats = sim.stats();
    let by_host = &stats.max_in_any_second_by_host;
    assert_eq!(by_host.len(), 2, "the Host is lower-cased: {by_host:?}");
    assert!(stats.max_in_any_second <= 10, "{stats:?}");
    if one_window {
        assert_eq!(admitted(&a), 10, "{a:?}");
        assert_eq!(admitted(&b), 10, "{b:?}");
        assert_eq!(by_host["cvm.ap-guangzhou.sim.test"]["DescribeKeyPairs"], 10);
        assert_eq!(by_host["cvm.ap-shanghai.sim.test"]["DescribeKeyPairs"], 10);
        assert_eq!(stats.max_in_any_second_by_action["DescribeKeyPairs"], 20);
        assert_eq!(stats.max_in_any_second, 10);
    }
    let journal = sim.journal();
    assert_eq!(journal[0].host, "cvm.ap-guangzhou.sim.test");
}

#[tokio::test]
async fn the_rate_can_change_while_running() {
    let config = SimConfig { rate: 2, ..quiet() };
    let sim = start(config, small_fleet()).await;
    let host = "cvm.sim.test";
    let http = reqwest::Client::new();
    let set = |rate: Value| {
        let http = http.clone();
        let url = format!("{}/_sim/rate", sim.endpoint());
        async move {
            let response = http.post(url).json(&rate).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    // Each phase is one burst in a fresh window (the previous burst aged out).
    let mut phases = Vec::new();
    for rate in [5, 1, 8] {
        let (status, reply) = set(json!({ "rate": rate })).await;
        assert_eq!((status, reply), (200, json!({ "rate": rate })));
        let started = Instant::now();
        let codes = burst(&sim, host, 10).await;
        if started.elapsed() < Duration::from_millis(900) {
            phases.push((rate, admitted(&codes)));
        }
        // Every admission of this burst ages out of the window before the next.
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }
    for (rate, admitted) in &phases {
        assert_eq!(*admitted, *rate as usize, "{phases:?}");
    }
    // The handle does the same; 0 is unlimited.
    sim.set_rate(0);
    assert_eq!(admitted(&burst(&sim, host, 12).await), 12);
    let (status, reply) = set(json!({ "rate": "fast" })).await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().contains("rate"), "{reply}");
    let got: Value = http
        .get(format!("{}/_sim/rate", sim.endpoint()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, json!({ "rate": 0 }));
}

// ---------------------------------------------------------------- abuse

/// Opens a connection, sends `bytes`, and returns how long, from connecting, the server
/// took to close it (`None`: still open after `limit`). The server's timeouts start
/// after it accepts, so the time is at least the timeout.
async fn closed_after(
    addr: std::net::SocketAddr,
    bytes: &'static [u8],
    limit: Duration,
) -> Option<Duration> {
    closed_after_sending(addr, bytes, limit)
        .await
        .map(|(from_connect, _)| from_connect)
}

/// The same, and also how long from the bytes having been written.
async fn closed_after_sending(
    addr: std::net::SocketAddr,
    bytes: &'static [u8],
    limit: Duration,
) -> Option<(Duration, Duration)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connecting = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(bytes).await.ok()?;
    let sent = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, closed).await.ok()?;
    Some((connecting.elapsed(), sent.elapsed()))
}

/// Half a request head: never finished.
const HALF_HEADER: &[u8] = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty";

#[tokio::test]
async fn a_slow_body_is_cut_off_by_the_body_timeout() {
    let config = SimConfig {
        body_timeout: Duration::from_millis(300),
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"Instan";
    let took = closed_after(sim.local_addr(), head, DEADLINE)
        .await
        .expect("closed by the server");
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert_eq!(sim.stats().body_timeouts, 1);
    assert!(
        sim.journal().is_empty(),
        "a request never read is not journaled"
    );
}

#[tokio::test]
async fn the_connection_cap_makes_new_connections_wait() {
    let timeout = Duration::from_millis(300);
    let config = SimConfig {
        header_timeout: timeout,
        max_connections: 2,
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let addr = sim.local_addr();
    let opened = Instant::now();
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(closed_after(addr, HALF_HEADER, DEADLINE)))
        .collect();
    // Both are accepted (the cap) before the honest request is sent.
    let deadline = Instant::now() + DEADLINE;
    while sim.stats().connections < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow connections were not accepted"
        );
        tokio::task::yield_now().await;
    }
    Call::new("DescribeInstances", json!({}))
        .reply(&sim)
        .await
        .assert_success();
    // It waited for a slot: the slow ones had to time out first.
    assert!(opened.elapsed() >= timeout, "{:?}", opened.elapsed());
    for task in slow {
        let took = task.await.unwrap().expect("closed by the server");
        assert!(took >= timeout - Duration::from_millis(20), "{took:?}");
    }
    let stats = sim.stats();
    assert_eq!(stats.max_open_connections, 2, "{stats:?}");
    assert_eq!(stats.connections, 3);
    assert!(stats.header_timeouts >= 2, "{stats:?}");
}

/// A signed request body of about `bytes` bytes of instance ids.
fn big_body(bytes: usize) -> String {
    let ids: Vec<String> = (0..bytes / 15).map(support::ins).collect();
    json!({ "InstanceIds": ids, "KeyIds": ["skey-0000000a"] }).to_string()
}

#[tokio::test]
async fn the_journal_keeps_its_capacity_under_a_flood_of_unsigned_posts() {
    let config = SimConfig {
        journal_capacity: 10,
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let body = big_body(700 * 1024);
    assert!(body.len() >= 700 * 1024);
    for _ in 0..5 {
        Call::new("DescribeInstances", json!({}))
            .reply(&sim)
            .await
            .assert_success();
    }
    let mut unsigned = Call::new(DISASSOCIATE, json!({}));
    unsigned.body = body;
    unsigned.auth = Auth::Missing;
    for _ in 0..30 {
        unsigned
            .reply(&sim)
            .await
            .assert_error("AuthFailure.InvalidAuthorization");
    }
    let journal = sim.journal();
    assert_eq!(journal.len(), 10);
    assert!(
        journal.iter().all(|e| e.instance_ids.is_empty()
            && e.code.as_deref() == Some("AuthFailure.InvalidAuthorization")),
        "the newest ten, none holding the body's ids"
    );
    let stats = sim.stats();
    assert_eq!(stats.journal_dropped, 25);
    assert_eq!(stats.protocol_failures, 30);
    assert_eq!(
        stats.requests[DISASSOCIATE]["AuthFailure.InvalidAuthorization"],
        30
    );
    assert_eq!(stats.requests["DescribeInstances"]["Success"], 5);
}

#[tokio::test]
async fn journal_pages_return_every_retained_entry_once() {
    let config = SimConfig {
        journal_capacity: 40,
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    for n in 0..55 {
        let mut call = Call::unbind(&["ins-00000001"], &["skey-0000000c"]);
        call.body =
            json!({ "InstanceIds": [support::ins(n)], "KeyIds": ["skey-0000000c"] }).to_string();
        call.reply(&sim).await;
    }
    let http = reqwest::Client::new();
    let mut after = 0;
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let url = format!("{}/_sim/journal?after={after}&limit=7", sim.endpoint());
        let page: sim::JournalPage = http.get(url).send().await.unwrap().json().await.unwrap();
        assert!(page.entries.len() <= 7);
        assert_eq!(page.first_retained, 16, "15 dropped");
        paged.extend(page.entries);
        after = page.next_after;
        pages += 1;
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 6);
    assert_eq!(paged, sim.journal());
    let ids: BTreeSet<String> = paged.iter().map(|e| e.instance_ids[0].clone()).collect();
    assert_eq!(ids.len(), 40, "each retained entry once");
    assert!(ids.contains(&support::ins(54)) && !ids.contains(&support::ins(14)));
    // A limit above the cap is capped; junk is refused with a reason.
    let capped = sim.journal_page(0, usize::MAX);
    assert_eq!(capped.entries.len(), 40);
    let refused = http
        .get(format!("{}/_sim/journal?after=x", sim.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
}

/// `VmHWM` (peak resident memory) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Peak memory `keyfleet sim` may reach under the abuse below (README, "The simulator").
const ABUSE_PEAK_RSS_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfleet_sim_survives_half_headers_and_big_unsigned_posts() {
    let timeout = Duration::from_millis(500);
    let mut child = Child(
        Command::new(support::keyfleet_bin())
            .args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--generate",
                "10",
                "--seed",
                "1",
            ])
            .args(["--header-timeout", "500ms", "--max-connections", "2500"])
            .args(["--journal-capacity", "1000"])
            .env_remove("KEYFLEET_SIM_SECRET_KEY")
            .env_remove("KEYFLEET_SIM_SECRET_ID")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keyfleet sim"),
    );
    let pid = child.0.id();
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let printed: Value = serde_json::from_str(&line).expect("one JSON line");
    let endpoint = printed["endpoint"].as_str().unwrap().to_string();
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let before = peak_rss_kib(pid);

    // 2,000 connections, each sending half a header: every one closed by the server,
    // none before its header timeout, none long after.
    let tasks: Vec<_> = (0..2000)
        .map(|_| tokio::spawn(closed_after_sending(addr, HALF_HEADER, DEADLINE)))
        .collect();
    let mut longest = Duration::ZERO;
    for task in tasks {
        let (from_connect, from_sent) = task
            .await
            .unwrap()
            .expect("closed by the server within the deadline");
        assert!(
            from_connect >= timeout - Duration::from_millis(20),
            "{from_connect:?}"
        );
        longest = longest.max(from_sent);
    }
    assert!(longest < timeout + Duration::from_secs(3), "{longest:?}");

    // 60 unsigned 700 KB POSTs, 6 at a time: counted, their bodies not kept.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = big_body(700 * 1024);
    for _ in 0..10 {
        let sends: Vec<_> = (0..6)
            .map(|_| {
                http.post(format!("{endpoint}/"))
                    .header("Content-Type", "application/json")
                    .header("X-TC-Action", DISASSOCIATE)
                    .body(body.clone())
                    .send()
            })
            .collect();
        for send in sends {
            let reply: Value = send.await.unwrap().json().await.unwrap();
            assert_eq!(
                reply["Response"]["Error"]["Code"],
                "AuthFailure.InvalidAuthorization"
            );
        }
    }
    let stats: Value = http
        .get(format!("{endpoint}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["protocol_failures"], 60, "{stats}");
    assert!(
        stats["header_timeouts"].as_u64().unwrap() >= 2000,
        "{stats}"
    );
    assert!(
        stats["max_open_connections"].as_u64().unwrap() <= 2500,
        "{stats}"
    );
    let page: Value = http
        .get(format!("{endpoint}/_sim/journal?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 60);
    assert!(entries.iter().all(|e| e["instance_ids"] == json!([])));
    let peak = peak_rss_kib(pid);
    eprintln!("keyfleet sim peak RSS: {before} KiB at start, {peak} KiB after the abuse");
    assert!(
        peak < ABUSE_PEAK_RSS_KIB,
        "peak RSS {peak} KiB, over {ABUSE_PEAK_RSS_KIB} KiB"
    );
}
