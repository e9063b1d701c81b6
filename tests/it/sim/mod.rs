//! The simulator over real HTTP on 127.0.0.1: signatures, validation, batch
//! semantics, instance states, faults, the rate limit, observability, the CLI.
//! Requests are signed here with `keyfleet::sign` so these tests need no API client.

mod abuse;
mod cli;
mod faults;
mod limits;
mod observability;
mod operations;
mod protocol;
mod replies;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;

use crate::support::Child;
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
