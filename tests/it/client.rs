//! The API client against a local HTTP server that checks every header and the
//! signature, then answers with success, each class of API error, and each kind of
//! transport failure. Ends with `keyfleet call disassociate` run as a process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyfleet::api::{
    self, CallError, ClientConfig, CvmClient, InstanceInfo, InstancePage, KeyPairInfo, RegionInfo,
    TransportKind,
};
use keyfleet::credentials::Credentials;
use keyfleet::cvm::Action;
use keyfleet::secret::Secret;
use keyfleet::sign;
use keyfleet::taxonomy::ErrorClass;
use serde_json::{Value, json};

use crate::support;

const SECRET_ID: &str = "AKIDclienttest0000000000000000000000";
const SECRET_KEY: &str = "SKclientTESTsecretKEY0123456789ab";
const TOKEN: &str = "session-TOKEN-0123456789";
const REGION: &str = "ap-guangzhou";
/// Bound on every test's network wait, far above what a passing test needs.
const TEST_DEADLINE: Duration = Duration::from_secs(20);

/// What the test server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Value,
    /// Every way the request differs from what the reference requires; empty when it is right.
    problems: Vec<String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the test server answers.
#[derive(Clone)]
enum Reply {
    /// HTTP 200, `Content-Type: application/json`, this body.
    Json(Value),
    /// Any status, any content type, any body.
    Raw(u16, &'static str, String),
    /// The JSON reply, after a delay.
    Slow(Duration, Value),
}

type Answer = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Answer,
}

/// An in-test API endpoint on 127.0.0.1; the server task ends with the test's runtime.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    async fn start(answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = ServerState {
            addr,
            seen: seen.clone(),
            answer: Arc::new(answer),
        };
        let app = axum::Router::new().fallback(handle).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestServer { addr, seen }
    }

    /// Always answers with this JSON.
    async fn answering(reply: Value) -> TestServer {
        TestServer::start(move |_| Reply::Json(reply.clone())).await
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> CvmClient {
        client_for(&self.endpoint(), Duration::from_secs(5))
    }

    /// The one request received, checked to be well formed.
    fn only_request(&self) -> Seen {
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "expected exactly one request");
        let request = seen[0].clone();
        assert!(
            request.problems.is_empty(),
            "bad request: {:?}",
            request.problems
        );
        request
    }
}

async fn handle(
    State(state): State<ServerState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let problems = check_request(&state, method.as_str(), &uri, &headers, &body);
    let seen = Seen {
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        problems,
    };
    let reply = (state.answer)(&seen);
    state.seen.lock().unwrap().push(seen);
    let json = |value: Value| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response()
    };
    match reply {
        Reply::Json(value) => json(value),
        Reply::Raw(status, content_type, body) => (
            StatusCode::from_u16(status).unwrap(),
            [(header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response(),
        Reply::Slow(delay, value) => {
            tokio::time::sleep(delay).await;
            json(value)
        }
    }
}

/// What the reference (section 3) requires of a request, as a list of failures.
fn check_request(
    state: &ServerState,
    method: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Vec<String> {
    let mut problems = Vec::new();
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut expect = |name: &str, ok: bool| {
        if !ok {
            problems.push(format!("{name}: {:?}", get(name)));
        }
    };
    expect("method", method == "POST");
    expect("path", uri.path() == "/" && uri.query().is_none());
    expect("host", get("host") == Some(state.addr.to_string().as_str()));
    expect(
        "content-type",
        get("content-type") == Some("application/json"),
    );
    expect(
        "x-tc-action",
        get("x-tc-action").is_some_and(|a| !a.is_empty()),
    );
    expect(
        "x-tc-version",
        get("x-tc-version") == Some(api::API_VERSION),
    );
    expect("x-tc-region", get("x-tc-region") == Some(REGION));
    expect(
        "x-tc-requestclient",
        get("x-tc-requestclient") == Some(concat!("keyfleet/", env!("CARGO_PKG_VERSION"))),
    );
    expect("x-tc-token", get("x-tc-token") == Some(TOKEN));
    let signed = get("authorization")
        .and_then(|a| sign::parse_authorization(a).ok())
        .map(|a| a.signed_headers.join(";"));
    expect(
        "authorization",
        signed.as_deref() == Some("content-type;host;x-tc-action"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let received: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    let verified = sign::verify(
        &sign::Received {
            method,
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: received,
            payload: body,
        },
        api::SERVICE,
        now,
        |id| (id == SECRET_ID).then(|| Secret::new(SECRET_KEY)),
    );
    if let Err(err) = verified {
        problems.push(format!("signature: {err}"));
    }
    problems
}

fn credentials() -> Credentials {
    Credentials {
        secret_id: SECRET_ID.to_string(),
        secret_key: Secret::new(SECRET_KEY),
        token: Some(Secret::new(TOKEN)),
        source: "test".to_string(),
    }
}

fn client_for(endpoint: &str, request_timeout: Duration) -> CvmClient {
    let mut config = ClientConfig::new(endpoint, credentials());
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = request_timeout;
    CvmClient::new(config).unwrap()
}

fn ids(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn error_reply(code: &str, message: &str, request_id: &str) -> Value {
    json!({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id}})
}

async fn disassociate(client: &CvmClient) -> Result<api::Success, CallError> {
    let instances = ids(&["ins-aaaa1111", "ins-bbbb2222"]);
    let keys = ids(&["skey-cccc3333"]);
    let call = client.disassociate_instances_key_pairs(REGION, &instances, &keys, false);
    tokio::time::timeout(TEST_DEADLINE, call)
        .await
        .expect("the call returned within the test deadline")
}

fn transport(err: CallError) -> api::TransportError {
    match err {
        CallError::Transport(t) => t,
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[tokio::test]
async fn success_returns_the_request_id_and_sends_a_signed_well_formed_request() {
    let server = TestServer::answering(json!({"Response": {"RequestId": "req-ok-1"}})).await;

    let success = disassociate(&server.client()).await.unwrap();

    assert_eq!(success.request_id, "req-ok-1");
    assert_eq!(success.http_status, 200);
    let request = server.only_request();
    assert_eq!(
        request.header("x-tc-action"),
        Some("DisassociateInstancesKeyPairs")
    );
    assert_eq!(
        request.body,
        json!({"InstanceIds": ["ins-aaaa1111", "ins-bbbb2222"], "KeyIds": ["skey-cccc3333"]}),
        "ForceStop is sent only when true"
    );
}

#[tokio::test]
async fn force_stop_is_sent_when_asked_for() {
    let server = TestServer::answering(json!({"Response": {"RequestId": "req-ok-2"}})).await;
    let success = server
        .client()
        .associate_instances_key_pairs(
            REGION,
            &ids(&["ins-aaaa1111"]),
            &ids(&["skey-cccc3333"]),
            true,
        )
        .await
        .unwrap();
    assert_eq!(success.request_id, "req-ok-2");
    let request = server.only_request();
    assert_eq!(
        request.header("x-tc-action"),
        Some("AssociateInstancesKeyPairs")
    );
    assert_eq!(request.body["ForceStop"], json!(true));
}

#[tokio::test]
async fn api_errors_of_each_class_keep_code_message_and_request_id() {
    let cases = [
        (
            "MutexOperation.TaskRunning",
            "An identical job is running.",
            ErrorClass::Retry,
        ),
        (
            "RequestLimitExceeded",
            "Too many requests.",
            ErrorClass::Throttle,
        ),
        (
            "UnsupportedOperation.InstanceOsWindows",
            "The instance ins-aaaa1111 with the Xserver windows2012cndatacenterx86_64 operating system does not support this operation.",
            ErrorClass::Isolate,
        ),
        (
            "AuthFailure.SignatureFailure",
            "The signature is wrong.",
            ErrorClass::Fatal,
        ),
    ];
    for (code, message, class) in cases {
        let request_id = format!("req-{code}");
        let server = TestServer::answering(error_reply(code, message, &request_id)).await;

        let err = disassociate(&server.client()).await.unwrap_err();

        server.only_request();
        match &err {
            CallError::Api(api) => {
                assert_eq!(api.code, code);
                assert_eq!(api.message, message);
                assert_eq!(api.request_id, request_id);
            }
            other => panic!("{code}: expected an API error, got {other:?}"),
        }
        assert_eq!(err.code(), code);
        assert_eq!(
            err.class(Action::DisassociateInstancesKeyPairs),
            class,
            "{code}"
        );
        assert_eq!(err.request_id(), Some(request_id.as_str()));
        assert_eq!(err.http_status(), Some(200));
        let shown = err.to_string();
        assert!(
            shown.contains(code) && shown.contains(&request_id),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn http_502_with_html_is_a_transport_error_with_status_and_body_prefix() {
    let html = format!(
        "<html><body><h1>502 Bad Gateway</h1>{}</body></html>",
        "x".repeat(500)
    );
    let body = html.clone();
    let server = TestServer::start(move |_| Reply::Raw(502, "text/html", body.clone())).await;

    let err = disassociate(&server.client()).await.unwrap_err();

    assert_eq!(err.code(), "Transport.HttpStatus");
    assert_eq!(
        err.class(Action::DisassociateInstancesKeyPairs),
        ErrorClass::Retry
    );
    assert_eq!(err.http_status(), Some(502));
    assert_eq!(err.request_id(), None);
    let t = transport(err);
    assert_eq!(t.kind, TransportKind::HttpStatus);
    assert_eq!(t.body_prefix, html[..api::BODY_PREFIX_BYTES]);
}

#[tokio::test]
async fn a_reply_slower_than_the_request_timeout_is_a_timeout() {
    let server = TestServer::start(|_| {
        Reply::Slow(
            Duration::from_secs(10),
            json!({"Response": {"RequestId": "too-late"}}),
        )
    })
    .await;
    let client = client_for(&server.endpoint(), Duration::from_millis(300));
    let started = Instant::now();

    let err = disassociate(&client).await.unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after {:?}",
        started.elapsed()
    );
    assert_eq!(err.code(), "Transport.Timeout", "{err}");
    assert_eq!(
        err.class(Action::DisassociateInstancesKeyPairs),
        ErrorClass::Retry
    );
    assert_eq!(transport(err).kind, TransportKind::Timeout);
}

#[tokio::test]
async fn a_dropped_connection_is_an_io_error() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Read the request's head, then hang up without a word.
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            drop(socket);
        }
    });
    let client = client_for(&format!("http://{addr}"), Duration::from_secs(5));

    let err = disassociate(&client).await.unwrap_err();

    assert_eq!(err.code(), "Transport.Io", "{err}");
    assert_eq!(
        err.class(Action::DisassociateInstancesKeyPairs),
        ErrorClass::Retry
    );
    assert_eq!(err.request_id(), None);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    // Bind then close, so the port is known to have no listener.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = client_for(&format!("http://{addr}"), Duration::from_secs(5));

    let err = disassociate(&client).await.unwrap_err();

    assert_eq!(err.code(), "Transport.Connect", "{err}");
    assert_eq!(err.http_status(), None);
}

#[tokio::test]
async fn a_200_that_is_not_the_envelope_is_a_bad_body() {
    for (body, why) in [
        ("<html>maintenance</html>".to_string(), "not JSON"),
        (json!({"RequestId": "r"}).to_string(), "no Response"),
        (
            json!({"Response": {}}).to_string(),
            "success without RequestId",
        ),
        (
            json!({"Response": {"RequestId": ""}}).to_string(),
            "empty RequestId",
        ),
    ] {
        let reply = body.clone();
        let server =
            TestServer::start(move |_| Reply::Raw(200, "application/json", reply.clone())).await;

        let err = disassociate(&server.client()).await.unwrap_err();

        assert_eq!(err.code(), "Transport.BadBody", "{why}");
        assert_eq!(
            err.class(Action::DisassociateInstancesKeyPairs),
            ErrorClass::Retry,
            "{why}"
        );
        let t = transport(err);
        assert_eq!(t.status, Some(200), "{why}");
        assert_eq!(t.body_prefix, body, "{why}");
    }
}

#[tokio::test]
async fn describe_instances_reads_state_os_and_bound_keys() {
    let server = TestServer::answering(json!({"Response": {
        "TotalCount": 2,
        "InstanceSet": [
            {"InstanceId": "ins-aaaa1111", "InstanceState": "STOPPED", "OsName": "TencentOS Server 3.1",
             "LoginSettings": {"KeyIds": ["skey-cccc3333", "skey-dddd4444"]}},
            {"InstanceId": "ins-bbbb2222", "InstanceState": "RUNNING", "OsName": "Windows Server 2019",
             "LoginSettings": {"KeyIds": null}}
        ],
        "RequestId": "req-describe"
    }}))
    .await;

    let (instances, request_id) = server
        .client()
        .describe_instances(REGION, &ids(&["ins-aaaa1111", "ins-bbbb2222"]))
        .await
        .unwrap();

    assert_eq!(request_id, "req-describe");
    assert_eq!(
        instances,
        vec![
            InstanceInfo {
                instance_id: "ins-aaaa1111".into(),
                instance_state: "STOPPED".into(),
                os_name: "TencentOS Server 3.1".into(),
                key_ids: ids(&["skey-cccc3333", "skey-dddd4444"]),
                latest_operation: None,
                latest_operation_state: None,
                latest_operation_request_id: None,
                zone: None,
                tags: Default::default(),
            },
            InstanceInfo {
                instance_id: "ins-bbbb2222".into(),
                instance_state: "RUNNING".into(),
                os_name: "Windows Server 2019".into(),
                key_ids: vec![],
                latest_operation: None,
                latest_operation_state: None,
                latest_operation_request_id: None,
                zone: None,
                tags: Default::default(),
            },
        ]
    );
    let request = server.only_request();
    assert_eq!(request.header("x-tc-action"), Some("DescribeInstances"));
    assert_eq!(
        request.body["InstanceIds"],
        json!(["ins-aaaa1111", "ins-bbbb2222"])
    );
    assert_eq!(request.body["Limit"], json!(100));
}

#[tokio::test]
async fn describe_instances_page_reads_operations_total_and_the_next_offset() {
    let server = TestServer::answering(json!({"Response": {
        "TotalCount": 250,
        "InstanceSet": [
            {"InstanceId": "ins-aaaa1111", "InstanceState": "STOPPED", "OsName": "TencentOS",
             "LoginSettings": {"KeyIds": ["skey-cccc3333"]},
             "LatestOperation": "DisassociateInstancesKeyPairs",
             "LatestOperationState": "FAILED",
             "LatestOperationRequestId": "req-earlier",
             "Placement": {"Zone": "ap-guangzhou-3"}},
            // The real API sends null for an instance nothing was done to; absent is read alike.
            {"InstanceId": "ins-bbbb2222", "LatestOperation": null,
             "LatestOperationState": null, "LatestOperationRequestId": null},
            {"InstanceId": "ins-cccc3333", "SomethingNew": {"x": 1}}
        ],
        "RequestId": "req-page"
    }}))
    .await;

    let (page, request_id) = server
        .client()
        .describe_instances_page(REGION, &[], 100, 100)
        .await
        .unwrap();

    assert_eq!(request_id, "req-page");
    assert_eq!(page.total_count, Some(250));
    assert_eq!(page.next_offset, Some(103));
    let first = &page.instances[0];
    assert_eq!(
        first.latest_operation.as_deref(),
        Some("DisassociateInstancesKeyPairs")
    );
    assert_eq!(first.latest_operation_state.as_deref(), Some("FAILED"));
    assert_eq!(
        first.latest_operation_request_id.as_deref(),
        Some("req-earlier")
    );
    assert_eq!(first.zone.as_deref(), Some("ap-guangzhou-3"));
    for bare in &page.instances[1..] {
        assert_eq!(
            (
                &bare.latest_operation,
                &bare.latest_operation_state,
                &bare.latest_operation_request_id,
                &bare.zone
            ),
            (&None, &None, &None, &None),
            "{bare:?}"
        );
        assert!(bare.key_ids.is_empty() && bare.instance_state.is_empty());
    }
    let request = server.only_request();
    assert_eq!(request.header("x-tc-action"), Some("DescribeInstances"));
    // No ids: the region's listing, paged.
    assert_eq!(request.body, json!({"Offset": 100, "Limit": 100}));
}

#[tokio::test]
async fn describe_instances_page_knows_the_last_page() {
    let last = json!({"Response": {
        "TotalCount": 3,
        "InstanceSet": [{"InstanceId": "ins-aaaa1111"}],
        "RequestId": "req-last"
    }});
    let server = TestServer::answering(last).await;
    let (page, _) = server
        .client()
        .describe_instances_page(REGION, &ids(&["ins-aaaa1111"]), 2, 500)
        .await
        .unwrap();
    assert_eq!(page.next_offset, None);
    let request = server.only_request();
    assert_eq!(
        request.body["Limit"],
        json!(100),
        "clamped to the API's maximum"
    );
    assert_eq!(request.body["InstanceIds"], json!(["ins-aaaa1111"]));

    // No TotalCount: a full page may have a successor, a short one is the last.
    let untold = TestServer::answering(json!({"Response": {
        "InstanceSet": [{"InstanceId": "ins-aaaa1111"}, {"InstanceId": "ins-bbbb2222"}],
        "RequestId": "req-untold"
    }}))
    .await;
    let client = untold.client();
    let (full, _) = client
        .describe_instances_page(REGION, &[], 0, 2)
        .await
        .unwrap();
    assert_eq!((full.total_count, full.next_offset), (None, Some(2)));
    let (short, _) = client
        .describe_instances_page(REGION, &[], 0, 3)
        .await
        .unwrap();
    assert_eq!(short.next_offset, None);
    let empty = TestServer::answering(json!({"Response": {
        "TotalCount": 0, "InstanceSet": [], "RequestId": "req-empty"
    }}))
    .await;
    let (none, _) = empty
        .client()
        .describe_instances_page(REGION, &[], 0, 100)
        .await
        .unwrap();
    assert_eq!(
        none,
        InstancePage {
            instances: vec![],
            total_count: Some(0),
            next_offset: None
        }
    );
}

#[tokio::test]
async fn describe_replies_that_break_the_envelope_are_bad_bodies() {
    for (reply, why) in [
        (
            json!({"Response": {"TotalCount": "many", "InstanceSet": [], "RequestId": "r"}}),
            "TotalCount",
        ),
        (
            json!({"Response": {"TotalCount": -1, "InstanceSet": [], "RequestId": "r"}}),
            "TotalCount",
        ),
        (
            json!({"Response": {"InstanceSet": {"InstanceId": "ins-aaaa1111"}, "RequestId": "r"}}),
            "InstanceSet is not a list",
        ),
        (
            json!({"Response": {"TotalCount": 1, "InstanceSet": []}}),
            "neither an Error nor a RequestId",
        ),
    ] {
        let server = TestServer::answering(reply.clone()).await;
        let err = server
            .client()
            .describe_instances_page(REGION, &[], 0, 100)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "Transport.BadBody", "{reply}");
        assert!(err.message().contains(why), "{reply}: {err}");
    }
}

#[tokio::test]
async fn describe_regions_reads_the_region_set() {
    let server = TestServer::answering(json!({"Response": {
        "TotalCount": 2,
        "RegionSet": [
            {"Region": "ap-guangzhou", "RegionName": "South China(Guangzhou)", "RegionState": "AVAILABLE"},
            {"Region": "ap-shanghai"}
        ],
        "RequestId": "req-regions"
    }}))
    .await;
    let (regions, request_id) = server.client().describe_regions(REGION).await.unwrap();
    assert_eq!(request_id, "req-regions");
    assert_eq!(
        regions,
        vec![
            RegionInfo {
                region: "ap-guangzhou".into(),
                region_name: "South China(Guangzhou)".into(),
                region_state: "AVAILABLE".into(),
            },
            RegionInfo {
                region: "ap-shanghai".into(),
                region_name: String::new(),
                region_state: String::new(),
            },
        ]
    );
    let request = server.only_request();
    assert_eq!(request.header("x-tc-action"), Some("DescribeRegions"));
    assert_eq!(request.body, json!({}));

    let nameless = TestServer::answering(json!({"Response": {
        "RegionSet": [{"RegionName": "nowhere"}], "RequestId": "req-x"
    }}))
    .await;
    let err = nameless
        .client()
        .describe_regions(REGION)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "Transport.BadBody");
    assert!(err.message().contains("RegionSet[0]"), "{err}");
}

#[tokio::test]
async fn describe_key_pairs_reads_associated_instances() {
    let server = TestServer::answering(json!({"Response": {
        "KeyPairSet": [{"KeyId": "skey-cccc3333", "AssociatedInstanceIds": ["ins-aaaa1111"]}],
        "RequestId": "req-keys"
    }}))
    .await;

    let (keys, request_id) = server
        .client()
        .describe_key_pairs(REGION, &ids(&["skey-cccc3333"]))
        .await
        .unwrap();

    assert_eq!(request_id, "req-keys");
    assert_eq!(
        keys,
        vec![KeyPairInfo {
            key_id: "skey-cccc3333".into(),
            associated_instance_ids: ids(&["ins-aaaa1111"]),
        }]
    );
    assert_eq!(
        server.only_request().header("x-tc-action"),
        Some("DescribeKeyPairs")
    );
}

#[tokio::test]
async fn a_describe_item_without_its_id_is_a_bad_body() {
    let server = TestServer::answering(json!({"Response": {
        "InstanceSet": [{"InstanceState": "STOPPED"}], "RequestId": "req-x"
    }}))
    .await;
    let err = server
        .client()
        .describe_instances(REGION, &ids(&["ins-aaaa1111"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "Transport.BadBody");
    assert!(err.message().contains("InstanceSet[0]"), "{err}");
}

/// Runs the built `keyfleet` with only test credentials: HOME is an empty temp dir,
/// so no real profile or INI file can be read.
async fn run_keyfleet(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = support::Cmd::bare().into_tokio();
    command
        .args(args)
        .env("HOME", home.path())
        .env("TENCENTCLOUD_SECRET_ID", SECRET_ID)
        .env("TENCENTCLOUD_SECRET_KEY", SECRET_KEY)
        .env("TENCENTCLOUD_TOKEN", TOKEN)
        .env_remove("TENCENTCLOUD_REGION")
        .env_remove("TCCLI_PROFILE")
        .env_remove("KEYFLEET_ENDPOINT")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    tokio::time::timeout(TEST_DEADLINE, command.output())
        .await
        .expect("keyfleet finished within the test deadline")
        .expect("keyfleet ran")
}

fn call_args<'a>(endpoint: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "call",
        "disassociate",
        "--endpoint",
        endpoint,
        "--region",
        REGION,
        "--instance",
        "ins-aaaa1111",
        "--instance",
        "ins-bbbb2222",
        "--key",
        "skey-cccc3333",
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfleet_call_disassociate_prints_the_request_id() {
    let server = TestServer::answering(json!({"Response": {"RequestId": "req-e2e-ok"}})).await;
    let endpoint = server.endpoint();

    let output = run_keyfleet(&call_args(&endpoint, &[])).await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stdout.trim(), "req-e2e-ok");
    let request = server.only_request();
    assert_eq!(
        request.body,
        json!({"InstanceIds": ["ins-aaaa1111", "ins-bbbb2222"], "KeyIds": ["skey-cccc3333"]})
    );
    assert!(!format!("{stdout}{stderr}").contains(SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfleet_call_disassociate_reports_an_api_error_without_the_secret() {
    let server = TestServer::answering(error_reply(
        "UnsupportedOperation.InstanceStateRunning",
        "Running instances do not support this operation.",
        "req-e2e-err",
    ))
    .await;
    let endpoint = server.endpoint();

    let output = run_keyfleet(&call_args(&endpoint, &["--force-stop"])).await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    for wanted in [
        "UnsupportedOperation.InstanceStateRunning",
        "Running instances do not support this operation.",
        "isolate",
        "req-e2e-err",
    ] {
        assert!(
            stderr.contains(wanted),
            "{wanted:?} missing from stderr: {stderr}"
        );
    }
    assert_eq!(stdout, "", "nothing on stdout without --json");
    assert!(!format!("{stdout}{stderr}").contains(SECRET_KEY));
    assert!(!format!("{stdout}{stderr}").contains(TOKEN));
    assert_eq!(server.only_request().body["ForceStop"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfleet_call_json_output_for_a_transport_error() {
    let body = "<html>bad gateway</html>";
    let server = TestServer::start(move |_| Reply::Raw(502, "text/html", body.to_string())).await;
    let endpoint = server.endpoint();

    let output = run_keyfleet(&call_args(&endpoint, &["--json"])).await;

    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["ok"], json!(false));
    assert_eq!(report["code"], json!("Transport.HttpStatus"));
    assert_eq!(report["class"], json!("retry"));
    assert_eq!(report["http_status"], json!(502));
    assert_eq!(report["body_prefix"], json!(body));
    assert_eq!(report["request_id"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfleet_call_refuses_bad_ids_before_sending_anything() {
    let server = TestServer::answering(json!({"Response": {"RequestId": "never"}})).await;
    let endpoint = server.endpoint();

    let output = run_keyfleet(&call_args(&endpoint, &["--key", "skey-1122"])).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("--key value #2") && stderr.contains("skey-1122"),
        "{stderr}"
    );
    assert!(
        server.seen.lock().unwrap().is_empty(),
        "nothing may be sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfleet_call_describe_prints_json() {
    let server = TestServer::answering(json!({"Response": {
        "InstanceSet": [{"InstanceId": "ins-aaaa1111", "InstanceState": "STOPPED", "OsName": "Ubuntu",
                         "LoginSettings": {"KeyIds": ["skey-cccc3333"]}}],
        "RequestId": "req-e2e-describe"
    }}))
    .await;
    let endpoint = server.endpoint();

    let output = run_keyfleet(&[
        "call",
        "describe",
        "--endpoint",
        &endpoint,
        "--region",
        REGION,
        "--instance",
        "ins-aaaa1111,ins-bbbb2222",
    ])
    .await;

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["request_id"], json!("req-e2e-describe"));
    assert_eq!(report["instances"][0]["key_ids"], json!(["skey-cccc3333"]));
    assert_eq!(report["not_found"], json!(["ins-bbbb2222"]));
}

// ---------------------------------------------------------------- regional endpoints

/// A `{region}` template with no port and an exact `--resolve` rule that names one: the
/// call connects to the rule's address and port, with the regional Host header, signed
/// as such (the simulator verifies it).
#[tokio::test]
async fn a_template_and_an_exact_resolve_rule_reach_the_simulator() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = keyfleet::sim::start(
        listener,
        keyfleet::sim::SimConfig::default(),
        keyfleet::sim::Fleet::generate(4, 1, &keyfleet::sim::Mix::default()),
    )
    .await
    .unwrap();
    let rule = format!("cvm.ap-guangzhou.sim.test={}", sim.local_addr());
    let credentials = Credentials {
        secret_id: keyfleet::sim::TEST_SECRET_ID.to_string(),
        secret_key: Secret::new(keyfleet::sim::TEST_SECRET_KEY),
        token: None,
        source: "test".to_string(),
    };
    let mut config = ClientConfig::new("http://cvm.{region}.sim.test", credentials);
    config.resolve = vec![rule.parse().unwrap()];
    config.request_timeout = TEST_DEADLINE;
    let client = CvmClient::new(config).unwrap();
    assert_eq!(
        client.endpoint_for("ap-guangzhou"),
        "http://cvm.ap-guangzhou.sim.test/"
    );
    let (regions, _) = client.describe_regions("ap-guangzhou").await.unwrap();
    assert!(!regions.is_empty());
    let journal = sim.journal();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].host, "cvm.ap-guangzhou.sim.test");
    assert_eq!(journal[0].code, None, "signed for the regional host");
    // A region that is not region-shaped is refused before anything is sent.
    let refused = client.describe_regions("x.evil").await.unwrap_err();
    assert_eq!(refused.code(), "Transport.Connect");
    assert_eq!(sim.journal().len(), 1);
}

/// `keyfleet call` with an https `{region}` template and a wildcard `--resolve`: the TLS
/// handshake reaches the loopback listener and names the regional host (SNI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfleet_call_sends_an_https_template_where_resolve_says() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut bytes = vec![0u8; 4096];
        let n = stream.read(&mut bytes).await.unwrap();
        bytes.truncate(n);
        bytes
    });
    let rule = format!("*.sim.test={addr}");
    let output = run_keyfleet(&[
        "--resolve",
        &rule,
        "call",
        "describe",
        "--endpoint",
        "https://cvm.{region}.sim.test",
        "--region",
        "ap-shanghai",
        "--instance",
        "ins-aaaa1111",
    ])
    .await;
    let hello = tokio::time::timeout(TEST_DEADLINE, hello)
        .await
        .expect("a connection arrived")
        .unwrap();
    let sni = b"cvm.ap-shanghai.sim.test";
    assert!(
        hello.windows(sni.len()).any(|w| w == sni),
        "the ClientHello names the regional host"
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "no TLS server: a transport error"
    );
}
