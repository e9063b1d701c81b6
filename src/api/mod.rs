//! The CVM API client: signed JSON POSTs to Tencent Cloud or a local simulator.
//!
//! [`CvmClient::call`] sends one API 3.0 request (headers and signature as in the
//! reference, section 3) and sorts the reply into exactly one of three outcomes:
//!
//! - success: the `Response` object and its `RequestId` (a success without a
//!   RequestId does not exist: it is a [`TransportKind::BadBody`]);
//! - [`CallError::Api`]: the endpoint answered with `Response.Error`;
//! - [`CallError::Transport`]: no answer could be read (refused, reset, timeout, a
//!   status other than 200, a body that is not the `{"Response": {...}}` envelope).
//!
//! Every error's [`CallError::code`] goes through [`taxonomy::classify`], so callers
//! decide what to do from the class alone. The client knows nothing of the queue.
//!
//! The reads ([`CvmClient::describe_instances_page`], [`CvmClient::describe_key_pairs`],
//! [`CvmClient::describe_regions`]) are strict about the envelope and each item's id (a
//! reply that breaks them is a [`TransportKind::BadBody`]) and tolerant of every other
//! field being absent or null. A key-pair request's RequestId means accepted, not
//! applied: only a later `DescribeInstances` (`LatestOperationState`, the key ids) shows
//! the change made. The same holds for [`CvmClient::stop_instances`] and
//! [`CvmClient::start_instances`] (`InstanceState`, `LatestOperation*`); their bodies
//! come from [`stop_instances_body`] and [`start_instances_body`], for the executor too.
//!
//! Endpoints: one URL for every call, or a template with a `{region}` placeholder in
//! the host ([`REGIONAL_ENDPOINT_TEMPLATE`]) so each region's calls go to its own access
//! endpoint (URL, `Host` header and signature all name it; [`CvmClient::endpoint_for`]).
//! [`resolve`] connects chosen names to chosen addresses (`--resolve`).
//!
//! Services: every call belongs to one [`Service`] (`cvm`, `as`), named by its action
//! ([`Action::service`]); it is signed with that service's name in the credential scope
//! and sends that service's `X-TC-Version`. A `{service}` placeholder in the endpoint's
//! host ([`DEFAULT_ENDPOINT_TEMPLATE`]) sends each service's calls to its own host; an
//! endpoint without it (a simulator's `http://127.0.0.1:PORT`) takes every service's
//! calls, each still signed for its own service. [`templates`] reads the replies of the
//! incident's actions (key pairs with their public keys, launch templates, launch
//! configurations).

mod endpoint;
mod error;
pub mod resolve;
pub(crate) mod templates;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::credentials::Credentials;
use crate::sign::{self, RequestParts};

pub use endpoint::{Transport, check_transport, check_transport_resolved, proxy_for};
pub use error::{ApiError, CallError, ClientError, TransportError, TransportKind};
pub use wire::{
    parse_instance_page, parse_key_pairs, parse_regions, start_instances_body, stop_instances_body,
};

use endpoint::{Endpoint, fill_template};
use error::{error_chain, from_reqwest};
use wire::parse_envelope;

pub use crate::cvm::{API_VERSION, Action, DEFAULT_ENDPOINT, SERVICE, Service, StopType};
/// How long establishing a connection (TCP and TLS) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one whole request may take, from connecting to the last byte of the reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a bad reply's body kept in a [`TransportError`].
pub const BODY_PREFIX_BYTES: usize = 200;
/// The largest `Limit` of a Describe page the API accepts.
pub const MAX_PAGE_LIMIT: u64 = 100;
/// Largest reply read; a DescribeInstances page of 100 instances is far below it.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// What an endpoint template holds where each call's region goes.
pub const REGION_PLACEHOLDER: &str = "{region}";
/// What an endpoint template holds where each call's service name goes.
pub const SERVICE_PLACEHOLDER: &str = "{service}";
/// Each service's documented host (`cvm.tencentcloudapi.com`, `as.tencentcloudapi.com`):
/// the endpoint when none is given.
pub const DEFAULT_ENDPOINT_TEMPLATE: &str = "https://{service}.tencentcloudapi.com";
/// Tencent Cloud's regional access endpoints (`--regional-endpoints`), each service's own.
pub const REGIONAL_ENDPOINT_TEMPLATE: &str = "https://{service}.{region}.tencentcloudapi.com";

/// The one content type sent and signed.
const JSON_CONTENT_TYPE: &str = "application/json";
/// The headers the signature covers: the documented `content-type;host;x-tc-action` set.
const SIGNED_HEADERS: [&str; 3] = ["content-type", "host", "x-tc-action"];

/// Where to send requests and with what credentials.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host[:port]`, or `http://host:port` for a local simulator; with
    /// [`REGION_PLACEHOLDER`] or [`SERVICE_PLACEHOLDER`] in the host, a template
    /// resolved per call.
    pub endpoint: String,
    pub credentials: Credentials,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on a whole request, reply included.
    pub request_timeout: Duration,
    /// `--resolve` rules: where to connect for chosen names (none: the system resolves).
    pub resolve: Vec<resolve::ResolveRule>,
    /// Allow `http://` to a host that is not loopback (`--insecure-http`); see [`check_transport`].
    pub insecure_http: bool,
}

impl ClientConfig {
    /// A configuration with the default timeouts.
    pub fn new(endpoint: impl Into<String>, credentials: Credentials) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.into(),
            credentials,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            resolve: Vec::new(),
            insecure_http: false,
        }
    }
}

/// A successful call: the RequestId Tencent Cloud gave it, and the HTTP status (200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    pub request_id: String,
    pub http_status: u16,
}

/// One instance as `DescribeInstances` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceInfo {
    pub instance_id: String,
    /// `RUNNING`, `STOPPED`, ... (empty when the reply omits it).
    pub instance_state: String,
    /// The OS image name, e.g. `TencentOS Server 3.1` (empty when omitted).
    pub os_name: String,
    /// The key pairs bound to it (`LoginSettings.KeyIds`).
    pub key_ids: Vec<String>,
    /// `LatestOperation`: the last operation's action, e.g. `DisassociateInstancesKeyPairs`.
    pub latest_operation: Option<String>,
    /// `LatestOperationState`: `OPERATING`, `SUCCESS` or `FAILED`. A key-pair request's
    /// RequestId means accepted; only this (and `key_ids`) shows it applied.
    pub latest_operation_state: Option<String>,
    /// `LatestOperationRequestId`: the RequestId of the request that started it.
    pub latest_operation_request_id: Option<String>,
    /// `Placement.Zone`, e.g. `ap-guangzhou-3`.
    pub zone: Option<String>,
    /// `Tags`, each `{Key, Value}` (a key without a value reads as empty), e.g.
    /// `service` -> `web`: what `--max-down-per tag:KEY` groups by.
    pub tags: std::collections::BTreeMap<String, String>,
}

/// One page of `DescribeInstances`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstancePage {
    pub instances: Vec<InstanceInfo>,
    /// `TotalCount`: every instance the query matches, over all pages (`None` when omitted).
    pub total_count: Option<u64>,
    /// The `Offset` of the next page, `None` when this one is the last.
    pub next_offset: Option<u64>,
}

/// One region as `DescribeRegions` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionInfo {
    /// The region id, e.g. `ap-guangzhou`.
    pub region: String,
    /// The display name, e.g. `South China(Guangzhou)` (empty when omitted).
    pub region_name: String,
    /// `AVAILABLE` or `UNAVAILABLE` (empty when omitted).
    pub region_state: String,
}

/// One key pair as `DescribeKeyPairs` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyPairInfo {
    pub key_id: String,
    /// The instances it is bound to (`AssociatedInstanceIds`).
    pub associated_instance_ids: Vec<String>,
}

/// What sends a client's calls as someone else: an account's session
/// (`accounts::session::AccountClient`), which signs with that account's (temporary)
/// credentials through a client of its own. The client holds it behind this trait so
/// that the API layer knows nothing of accounts.
pub trait Delegate: fmt::Debug + Send + Sync {
    /// The identity whose rate limit the calls count against (stable while temporary
    /// SecretIds change).
    fn identity(&self) -> &str;

    /// Sends one call of `service`, as [`CvmClient::call_service`] does.
    fn call_service<'a>(
        &'a self,
        service: Service,
        action: &'a str,
        region: &'a str,
        body: &'a Value,
    ) -> DelegatedCall<'a>;
}

/// A [`Delegate`]'s call in flight.
pub type DelegatedCall<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Value, String), CallError>> + Send + 'a>,
>;

/// The CVM API client. Cloning is cheap (the connection pool and credentials are
/// shared), so one client serves every worker task.
#[derive(Debug, Clone)]
pub struct CvmClient {
    http: reqwest::Client,
    target: Arc<Target>,
}

#[derive(Debug)]
struct Target {
    endpoint: Endpoint,
    credentials: Credentials,
    transport: Transport,
    /// Every call is sent through this instead ([`CvmClient::delegating`]).
    account: Option<Arc<dyn Delegate>>,
}

impl CvmClient {
    /// Builds a client; checks the endpoint and the timeouts.
    pub fn new(config: ClientConfig) -> Result<CvmClient, ClientError> {
        let (endpoint, transport) = Endpoint::parse(&config)?;
        if config.connect_timeout.is_zero() {
            return Err(ClientError::ZeroTimeout { which: "connect" });
        }
        if config.request_timeout.is_zero() {
            return Err(ClientError::ZeroTimeout { which: "request" });
        }
        check_credentials(&config.credentials)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A signed API POST is never redirected; following one would send the
            // signature elsewhere. A 3xx is reported as Transport.HttpStatus instead.
            .redirect(reqwest::redirect::Policy::none())
            // The SDKs speak HTTP/1.1, where the Host header is sent exactly as signed.
            .http1_only()
            .user_agent(client_name());
        let shown = endpoint.shown();
        match transport {
            // A proxy from the environment must not swallow a local simulator's traffic,
            // nor resolve a name itself that --resolve sends elsewhere.
            Transport::LoopbackHttp => builder = builder.no_proxy(),
            _ if !config.resolve.is_empty() => builder = builder.no_proxy(),
            Transport::Tls | Transport::InsecureHttp => {
                let sample = endpoint.sample_url();
                if let Some(proxy) = proxy_for(sample) {
                    tracing::info!(%proxy, endpoint = %shown, "requests go through a proxy from the environment");
                }
            }
        }
        if transport == Transport::InsecureHttp {
            tracing::warn!(endpoint = %shown, "--insecure-http: credentials and signatures travel in clear");
        }
        if !config.resolve.is_empty() {
            builder = builder.dns_resolver(Arc::new(resolve::RuleResolver::new(&config.resolve)));
        }
        let http = builder
            .build()
            .map_err(|err| ClientError::Http(error_chain(&err)))?;
        Ok(CvmClient {
            http,
            target: Arc::new(Target {
                endpoint,
                credentials: config.credentials,
                transport,
                account: None,
            }),
        })
    }

    /// How requests travel: TLS, loopback http, or http allowed by `--insecure-http`.
    pub fn transport(&self) -> Transport {
        self.target.transport
    }

    /// The endpoint URL requests go to, or the template they are built from.
    pub fn endpoint(&self) -> &str {
        self.target.endpoint.shown()
    }

    /// The URL a CVM call for `region` goes to: the endpoint, or the template with
    /// `region` in place of `{region}` (as given when `region` cannot be part of a host
    /// name; such a call is refused before sending).
    pub fn endpoint_for(&self, region: &str) -> String {
        self.endpoint_for_service(Service::Cvm, region)
    }

    /// The URL a call of `service` for `region` goes to (see [`CvmClient::endpoint_for`]).
    pub fn endpoint_for_service(&self, service: Service, region: &str) -> String {
        match self.target.endpoint.for_call(service, region) {
            Ok((url, _)) => url.to_string(),
            Err(_) => fill_template(self.endpoint(), service, region),
        }
    }

    /// The SecretId requests are signed with (an identifier, not a secret: it names
    /// the sub-account whose rate limit the requests count against); for a client of
    /// an account ([`CvmClient::delegating`]), the account's identity (its name and
    /// role), stable while its temporary SecretIds change.
    pub fn secret_id(&self) -> &str {
        match &self.target.account {
            Some(account) => account.identity(),
            None => &self.target.credentials.secret_id,
        }
    }

    /// A client with `base`'s endpoint, transport and connection pool that sends every
    /// call through `delegate` (an account's session: signed with the account's
    /// credentials, a role's temporary ones assumed again when due). Every command works
    /// for one account through it (`accounts::session::AccountClient::into_client`).
    pub fn delegating(base: &CvmClient, delegate: Arc<dyn Delegate>) -> CvmClient {
        CvmClient {
            http: base.http.clone(),
            target: Arc::new(Target {
                endpoint: base.target.endpoint.clone(),
                credentials: base.target.credentials.clone(),
                transport: base.target.transport,
                account: Some(delegate),
            }),
        }
    }

    /// The same endpoint, transport and connection pool, signing with `credentials`
    /// (an account's temporary credentials, `accounts::session`).
    pub fn with_credentials(&self, credentials: Credentials) -> Result<CvmClient, ClientError> {
        check_credentials(&credentials)?;
        Ok(CvmClient {
            http: self.http.clone(),
            target: Arc::new(Target {
                endpoint: self.target.endpoint.clone(),
                credentials,
                transport: self.target.transport,
                account: None,
            }),
        })
    }

    /// Unbinds every key in `key_ids` from every instance in `instance_ids`
    /// (at most [`crate::ids::MAX_IDS_PER_REQUEST`] of each; the caller checks).
    /// `ForceStop` is sent only when true.
    pub async fn disassociate_instances_key_pairs(
        &self,
        region: &str,
        instance_ids: &[String],
        key_ids: &[String],
        force_stop: bool,
    ) -> Result<Success, CallError> {
        self.key_pair_action(
            Action::DisassociateInstancesKeyPairs,
            region,
            instance_ids,
            key_ids,
            force_stop,
        )
        .await
    }

    /// Binds every key in `key_ids` to every instance in `instance_ids`. Binding makes
    /// keys bound earlier invalid on those instances.
    pub async fn associate_instances_key_pairs(
        &self,
        region: &str,
        instance_ids: &[String],
        key_ids: &[String],
        force_stop: bool,
    ) -> Result<Success, CallError> {
        self.key_pair_action(
            Action::AssociateInstancesKeyPairs,
            region,
            instance_ids,
            key_ids,
            force_stop,
        )
        .await
    }

    async fn key_pair_action(
        &self,
        action: Action,
        region: &str,
        instance_ids: &[String],
        key_ids: &[String],
        force_stop: bool,
    ) -> Result<Success, CallError> {
        let mut body = json!({ "InstanceIds": instance_ids, "KeyIds": key_ids });
        if force_stop {
            body["ForceStop"] = Value::Bool(true);
        }
        let (_, request_id) = self.call(action.name(), region, &body).await?;
        Ok(Success {
            request_id,
            http_status: 200,
        })
    }

    /// Stops instances (at most [`crate::ids::MAX_IDS_PER_REQUEST`]; the caller checks),
    /// keeping them charged ([`stop_instances_body`]). The RequestId means accepted: each
    /// instance is STOPPING, and STOPPED only when a later `DescribeInstances` says so
    /// (with `LatestOperation` `StopInstances` and this RequestId `SUCCESS`).
    pub async fn stop_instances(
        &self,
        region: &str,
        instance_ids: &[String],
        stop_type: StopType,
    ) -> Result<Success, CallError> {
        let body = stop_instances_body(instance_ids, stop_type);
        let (_, request_id) = self
            .call(Action::StopInstances.name(), region, &body)
            .await?;
        Ok(Success {
            request_id,
            http_status: 200,
        })
    }

    /// Starts instances (at most [`crate::ids::MAX_IDS_PER_REQUEST`]; the caller checks).
    /// Accepted, not done: each is STARTING, RUNNING when a later look says so.
    pub async fn start_instances(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Success, CallError> {
        let body = start_instances_body(instance_ids);
        let (_, request_id) = self
            .call(Action::StartInstances.name(), region, &body)
            .await?;
        Ok(Success {
            request_id,
            http_status: 200,
        })
    }

    /// Describes instances by id (at most 100). With an empty list the API lists the
    /// region's instances instead, up to 100 (the first page of
    /// [`CvmClient::describe_instances_page`]).
    pub async fn describe_instances(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<(Vec<InstanceInfo>, String), CallError> {
        // Limit defaults to 20 on the API side; 100 ids must come back in one page.
        let (page, request_id) = self
            .describe_instances_page(region, instance_ids, 0, MAX_PAGE_LIMIT)
            .await?;
        Ok((page.instances, request_id))
    }

    /// One page of `DescribeInstances`: `limit` (1..=100, clamped) instances from
    /// `offset`, of the ids given (at most 100) or, with none, of every instance in the
    /// region. Walk a region by starting at 0 and following [`InstancePage::next_offset`].
    pub async fn describe_instances_page(
        &self,
        region: &str,
        instance_ids: &[String],
        offset: u64,
        limit: u64,
    ) -> Result<(InstancePage, String), CallError> {
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let mut body = json!({ "Offset": offset, "Limit": limit });
        if !instance_ids.is_empty() {
            body["InstanceIds"] = json!(instance_ids);
        }
        let (response, request_id) = self
            .call(Action::DescribeInstances.name(), region, &body)
            .await?;
        let page = parse_instance_page(&response, &request_id, offset, limit)?;
        Ok((page, request_id))
    }

    /// Lists the regions (`DescribeRegions`). The answer does not depend on `region`,
    /// which only picks where the request is sent (any region name will do).
    pub async fn describe_regions(
        &self,
        region: &str,
    ) -> Result<(Vec<RegionInfo>, String), CallError> {
        let (response, request_id) = self
            .call(Action::DescribeRegions.name(), region, &json!({}))
            .await?;
        let regions = parse_regions(&response, &request_id)?;
        Ok((regions, request_id))
    }

    /// Describes key pairs by id (at most 100). With an empty list the API lists the
    /// region's key pairs instead, up to 100.
    pub async fn describe_key_pairs(
        &self,
        region: &str,
        key_ids: &[String],
    ) -> Result<(Vec<KeyPairInfo>, String), CallError> {
        let body = json!({ "KeyIds": key_ids, "Limit": crate::ids::MAX_IDS_PER_REQUEST });
        let (response, request_id) = self
            .call(Action::DescribeKeyPairs.name(), region, &body)
            .await?;
        let keys = parse_key_pairs(&response, &request_id)?;
        Ok((keys, request_id))
    }

    /// Sends one API call and returns the `Response` object and its RequestId. The
    /// service is the action's ([`Action::service`]); a name keyfleet does not know is
    /// sent to CVM.
    pub async fn call(
        &self,
        action: &str,
        region: &str,
        body: &Value,
    ) -> Result<(Value, String), CallError> {
        let service = Action::from_name(action).map_or(Service::Cvm, Action::service);
        self.call_service(service, action, region, body).await
    }

    /// [`CvmClient::call`] for a known action, to its service.
    pub async fn call_action(
        &self,
        action: Action,
        region: &str,
        body: &Value,
    ) -> Result<(Value, String), CallError> {
        self.call_service(action.service(), action.name(), region, body)
            .await
    }

    /// Sends one call of `service`: to its host, signed for it, naming its version.
    pub async fn call_service(
        &self,
        service: Service,
        action: &str,
        region: &str,
        body: &Value,
    ) -> Result<(Value, String), CallError> {
        if let Some(account) = &self.target.account {
            // The account's clients sign themselves (they have no account): one level.
            return account.call_service(service, action, region, body).await;
        }
        let started = Instant::now();
        let payload = body.to_string().into_bytes();
        let (url, host) = self.target.endpoint.for_call(service, region)?;
        let headers = self.headers(service, action, region, &host, &payload, unix_now())?;
        let result = self.send(url, headers, payload).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok((_, request_id)) => {
                tracing::debug!(action, region, request_id, elapsed_ms, "API call succeeded")
            }
            Err(err) => tracing::debug!(
                action,
                region,
                code = %err.code(),
                request_id = err.request_id().unwrap_or(""),
                elapsed_ms,
                "API call failed"
            ),
        }
        result
    }

    fn headers(
        &self,
        service: Service,
        action: &str,
        region: &str,
        host: &str,
        payload: &[u8],
        timestamp: i64,
    ) -> Result<HeaderMap, CallError> {
        let target = &self.target;
        let credentials = &target.credentials;
        let signature = sign::sign(
            &RequestParts {
                method: "POST",
                path: "/",
                query: "",
                headers: vec![
                    (SIGNED_HEADERS[0], JSON_CONTENT_TYPE),
                    (SIGNED_HEADERS[1], host),
                    (SIGNED_HEADERS[2], action),
                ],
                payload,
            },
            service.name(),
            timestamp,
            &credentials.secret_id,
            &credentials.secret_key,
        );
        let timestamp = timestamp.to_string();
        let client = client_name();
        let mut pairs: Vec<(HeaderName, &str)> = vec![
            (HOST, host),
            (CONTENT_TYPE, JSON_CONTENT_TYPE),
            (HeaderName::from_static("x-tc-action"), action),
            (HeaderName::from_static("x-tc-version"), service.version()),
            (HeaderName::from_static("x-tc-region"), region),
            (HeaderName::from_static("x-tc-timestamp"), &timestamp),
            (HeaderName::from_static("x-tc-requestclient"), &client),
            (AUTHORIZATION, &signature.authorization),
        ];
        if let Some(token) = &credentials.token {
            pairs.push((HeaderName::from_static("x-tc-token"), token.expose()));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            // Credentials were checked in `new`, so only the action or region can fail here.
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                CallError::Transport(TransportError::new(
                    TransportKind::Connect,
                    format!("not sent: the {name} header value has characters HTTP cannot carry"),
                ))
            })?;
            if name == AUTHORIZATION || name.as_str() == "x-tc-token" {
                value.set_sensitive(true);
            }
            headers.insert(name, value);
        }
        Ok(headers)
    }

    async fn send(
        &self,
        url: Url,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<(Value, String), CallError> {
        let transport = |err: TransportError| CallError::Transport(err);
        let mut response = self
            .http
            .post(url)
            .headers(headers)
            .body(payload)
            .send()
            .await
            .map_err(|err| transport(from_reqwest(&err)))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_RESPONSE_BYTES {
                        return Err(transport(
                            TransportError::new(
                                TransportKind::BadBody,
                                format!("the reply is larger than {MAX_RESPONSE_BYTES} bytes"),
                            )
                            .with_reply(status, &body),
                        ));
                    }
                }
                Ok(None) => break,
                Err(err) => return Err(transport(from_reqwest(&err).with_reply(status, &body))),
            }
        }
        if status != 200 {
            return Err(transport(
                TransportError::new(
                    TransportKind::HttpStatus,
                    format!("the endpoint replied with HTTP {status}, not 200"),
                )
                .with_reply(status, &body),
            ));
        }
        parse_envelope(&body).map_err(|err| match err {
            CallError::Transport(t) => CallError::Transport(t.with_reply(status, &body)),
            api => api,
        })
    }
}

/// Credentials must fit in HTTP headers; checked once here so no call fails on them.
fn check_credentials(credentials: &Credentials) -> Result<(), ClientError> {
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    let bad = |what: &str| {
        // Name the field and where it came from, never its value.
        ClientError::BadCredentials(format!(
            "the {what} from {} is empty or has characters other than printable ASCII",
            credentials.source
        ))
    };
    if !printable(&credentials.secret_id) {
        return Err(bad("SecretId"));
    }
    if !printable(credentials.secret_key.expose()) {
        return Err(bad("SecretKey"));
    }
    if credentials
        .token
        .as_ref()
        .is_some_and(|t| !printable(t.expose()))
    {
        return Err(bad("token"));
    }
    Ok(())
}

/// `keyfleet/<version>`, sent as `X-TC-RequestClient` and `User-Agent`.
fn client_name() -> String {
    format!("keyfleet/{}", env!("CARGO_PKG_VERSION"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::endpoint::parse_endpoint;
    use super::error::body_prefix;
    use super::*;
    use crate::secret::Secret;
    use crate::taxonomy::{self, ErrorClass};

    fn credentials() -> Credentials {
        Credentials {
            secret_id: "AKIDtest".into(),
            secret_key: Secret::new("topsecretkey"),
            token: Some(Secret::new("topsecrettoken")),
            source: "test".into(),
        }
    }

    #[test]
    fn endpoints() {
        let host = |e: &str| parse_endpoint(e).map(|(_, h)| h);
        assert_eq!(host(DEFAULT_ENDPOINT).unwrap(), "cvm.tencentcloudapi.com");
        assert_eq!(
            host("https://cvm.tencentcloudapi.com:443/").unwrap(),
            "cvm.tencentcloudapi.com"
        );
        assert_eq!(host("http://127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
        assert_eq!(host("http://[::1]:9000").unwrap(), "[::1]:9000");
        for bad in [
            "cvm.tencentcloudapi.com",
            "ftp://cvm.tencentcloudapi.com",
            "http://",
            "https://user:pw@cvm.tencentcloudapi.com",
            "https://cvm.tencentcloudapi.com/v3",
            "https://cvm.tencentcloudapi.com/?a=b",
            "",
        ] {
            assert!(
                matches!(host(bad), Err(ClientError::BadEndpoint { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn regional_templates_put_the_region_in_the_host() {
        let client = |endpoint: &str| CvmClient::new(ClientConfig::new(endpoint, credentials()));
        let regional = client(REGIONAL_ENDPOINT_TEMPLATE).unwrap();
        assert_eq!(regional.endpoint(), REGIONAL_ENDPOINT_TEMPLATE);
        assert_eq!(
            regional.endpoint_for("ap-guangzhou"),
            "https://cvm.ap-guangzhou.tencentcloudapi.com/"
        );
        let (url, host) = regional.target.endpoint.for_region("ap-shanghai").unwrap();
        assert_eq!(url.as_str(), "https://cvm.ap-shanghai.tencentcloudapi.com/");
        assert_eq!(host, "cvm.ap-shanghai.tencentcloudapi.com");
        let mut config = ClientConfig::new("http://cvm.{region}.sim.test:9000", credentials());
        config.resolve = vec!["*.sim.test=127.0.0.1".parse().unwrap()];
        let local = CvmClient::new(config).unwrap();
        let (_, host) = local.target.endpoint.for_region("na-ashburn").unwrap();
        assert_eq!(host, "cvm.na-ashburn.sim.test:9000");
        // A region that could change where the call goes is never substituted.
        for hostile in ["evil.com/x", "a.b-c", "ap-guangzhou@x", ""] {
            let refused = local.target.endpoint.for_region(hostile).unwrap_err();
            assert_eq!(refused.code(), "Transport.Connect", "{hostile:?}");
        }
        // Plain http only where the name is loopback, by itself or by a --resolve rule;
        // a template's every URL is checked before its call is sent.
        assert!(matches!(
            client("http://cvm.{region}.example.com:9000"),
            Err(ClientError::InsecureHttp { .. })
        ));
        let mut config = ClientConfig::new("http://cvm.{region}.sim.test:9000", credentials());
        config.resolve = vec!["cvm.ap-guangzhou.sim.test=127.0.0.1".parse().unwrap()];
        let partly_local = CvmClient::new(config).unwrap();
        assert_eq!(partly_local.transport(), Transport::LoopbackHttp);
        assert!(
            partly_local
                .target
                .endpoint
                .for_region("ap-guangzhou")
                .is_ok()
        );
        let refused = partly_local
            .target
            .endpoint
            .for_region("ap-shanghai")
            .unwrap_err();
        assert_eq!(refused.code(), "Transport.Connect");
        assert!(refused.message().contains("not sent"), "{refused}");
        // Without the placeholder nothing changes: one URL for every region.
        let fixed = client("http://127.0.0.1:9000").unwrap();
        assert_eq!(fixed.endpoint_for("ap-guangzhou"), "http://127.0.0.1:9000/");
        assert_eq!(fixed.endpoint_for("eu-frankfurt"), "http://127.0.0.1:9000/");
        for bad in [
            "https://cvm.tencentcloudapi.com/{region}",
            "https://cvm.tencentcloudapi.com/?r={region}",
            "https://cvm.{region}.sim.test/{region}",
        ] {
            assert!(
                matches!(client(bad), Err(ClientError::BadEndpoint { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn each_service_has_its_host_version_and_signing_scope() {
        let client = |endpoint: &str| CvmClient::new(ClientConfig::new(endpoint, credentials()));
        let default = client(DEFAULT_ENDPOINT_TEMPLATE).unwrap();
        assert_eq!(
            default.endpoint_for_service(Service::As, "ap-guangzhou"),
            "https://as.tencentcloudapi.com/"
        );
        assert_eq!(
            default.endpoint_for("ap-guangzhou"),
            "https://cvm.tencentcloudapi.com/"
        );
        let regional = client(REGIONAL_ENDPOINT_TEMPLATE).unwrap();
        assert_eq!(
            regional.endpoint_for_service(Service::As, "eu-frankfurt"),
            "https://as.eu-frankfurt.tencentcloudapi.com/"
        );
        // Without the placeholder one endpoint serves every service.
        let fixed = client("http://127.0.0.1:9").unwrap();
        assert_eq!(
            fixed.endpoint_for_service(Service::As, "ap-guangzhou"),
            "http://127.0.0.1:9/"
        );
        for bad in [
            "https://tencentcloudapi.com/{service}",
            "https://{service}.tencentcloudapi.com/{service}",
        ] {
            assert!(
                matches!(client(bad), Err(ClientError::BadEndpoint { .. })),
                "{bad:?} accepted"
            );
        }
        // Each request is signed for its own service and names its version.
        let payload = b"{}";
        let headers = fixed
            .headers(
                Service::As,
                "DescribeLaunchConfigurations",
                "ap-guangzhou",
                "127.0.0.1:9",
                payload,
                1_700_000_000,
            )
            .unwrap();
        let get = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_string();
        assert_eq!(get("x-tc-version"), "2018-04-19");
        assert!(get("authorization").contains("/as/tc3_request"));
        let received: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        let parts = |headers| sign::Received {
            method: "POST",
            path: "/",
            query: "",
            headers,
            payload,
        };
        let key = |_: &str| Some(Secret::new("topsecretkey"));
        assert!(sign::verify(&parts(received.clone()), "as", 1_700_000_000, key).is_ok());
        assert!(sign::verify(&parts(received), SERVICE, 1_700_000_000, key).is_err());
    }

    #[test]
    fn envelopes() {
        let ok = parse_envelope(br#"{"Response":{"RequestId":"r-1"}}"#).unwrap();
        assert_eq!(ok.1, "r-1");
        let err = parse_envelope(
            br#"{"Response":{"Error":{"Code":"MutexOperation.TaskRunning","Message":"busy"},"RequestId":"r-2"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.code(), "MutexOperation.TaskRunning");
        assert_eq!(
            err.class(Action::DisassociateInstancesKeyPairs),
            ErrorClass::Retry
        );
        assert_eq!(err.request_id(), Some("r-2"));
        assert_eq!(err.message(), "busy");
        for bad in [
            &br#"{"Response":{}}"#[..],
            br#"{"Response":{"RequestId":""}}"#,
            br#"{"RequestId":"r"}"#,
            br#"{"Response":"x"}"#,
            br#"{"Response":{"Error":{"Message":"no code"},"RequestId":"r"}}"#,
            b"<html>",
            b"",
        ] {
            let err = parse_envelope(bad).unwrap_err();
            assert_eq!(
                err.code(),
                "Transport.BadBody",
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(
                err.class(Action::DisassociateInstancesKeyPairs),
                ErrorClass::Retry
            );
        }
    }

    #[test]
    fn body_prefix_is_cut_at_200_bytes_even_mid_character() {
        let body = "é".repeat(150); // 300 bytes
        let prefix = body_prefix(body.as_bytes());
        assert!(prefix.len() <= BODY_PREFIX_BYTES + 3);
        assert!(prefix.starts_with("éé"));
    }

    #[test]
    fn headers_carry_the_token_and_a_verifiable_signature() {
        let client =
            CvmClient::new(ClientConfig::new("http://127.0.0.1:9", credentials())).unwrap();
        let payload = br#"{"InstanceIds":["ins-12345678"]}"#;
        let headers = client
            .headers(
                Service::Cvm,
                "DisassociateInstancesKeyPairs",
                "ap-guangzhou",
                "127.0.0.1:9",
                payload,
                1_700_000_000,
            )
            .unwrap();
        let get = |name: &str| headers.get(name).unwrap().to_str().unwrap();
        assert_eq!(get("host"), "127.0.0.1:9");
        assert_eq!(get("x-tc-token"), "topsecrettoken");
        assert_eq!(get("x-tc-version"), API_VERSION);
        assert!(get("authorization").contains("SignedHeaders=content-type;host;x-tc-action,"));
        let received: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        let secret_id = sign::verify(
            &sign::Received {
                method: "POST",
                path: "/",
                query: "",
                headers: received,
                payload,
            },
            SERVICE,
            1_700_000_000,
            |_| Some(Secret::new("topsecretkey")),
        )
        .unwrap();
        assert_eq!(secret_id, "AKIDtest");
        // The client's Debug output goes into logs; it must not carry the secrets.
        let shown = format!("{client:?} {headers:?}");
        assert!(
            !shown.contains("topsecretkey") && !shown.contains("topsecrettoken"),
            "{shown}"
        );
    }

    #[test]
    fn published_table_lists_every_transport_code() {
        let doc = include_str!("../../docs/errors.md");
        for kind in [
            TransportKind::Connect,
            TransportKind::Timeout,
            TransportKind::Io,
            TransportKind::HttpStatus,
            TransportKind::BadBody,
        ] {
            let row = format!("| `{}` |", kind.code());
            assert!(doc.contains(&row), "docs/errors.md has no row {row:?}");
            assert_eq!(
                taxonomy::classify(Action::DescribeInstances, &kind.code()).class,
                ErrorClass::Retry
            );
        }
    }

    #[test]
    fn http_goes_only_to_loopback_unless_insecure_is_asked_for() {
        let check = |endpoint: &str, insecure| {
            let (url, _) = parse_endpoint(endpoint).unwrap();
            check_transport(&url, insecure)
        };
        for local in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3:9",
            "http://[::1]:9000",
            "http://localhost:8080",
            "http://LOCALHOST",
        ] {
            assert_eq!(check(local, false), Ok(Transport::LoopbackHttp), "{local}");
        }
        for remote in [
            "http://keyfleet-test.invalid",
            "http://cvm.tencentcloudapi.com",
            "http://10.0.0.1:8080",
            "http://[::ffff:127.0.0.1]:80",
            "http://localhost.example.com",
            "http://0.0.0.0:8080",
        ] {
            assert!(
                matches!(check(remote, false), Err(ClientError::InsecureHttp { .. })),
                "{remote} accepted"
            );
            assert_eq!(check(remote, true), Ok(Transport::InsecureHttp), "{remote}");
        }
        assert_eq!(check(DEFAULT_ENDPOINT, false), Ok(Transport::Tls));
        let refused = CvmClient::new(ClientConfig::new(
            "http://keyfleet-test.invalid",
            credentials(),
        ));
        assert!(matches!(refused, Err(ClientError::InsecureHttp { .. })));
        let mut config = ClientConfig::new("http://keyfleet-test.invalid", credentials());
        config.insecure_http = true;
        assert_eq!(
            CvmClient::new(config).unwrap().transport(),
            Transport::InsecureHttp
        );
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let mut config = ClientConfig::new(DEFAULT_ENDPOINT, credentials());
        config.request_timeout = Duration::ZERO;
        assert_eq!(
            CvmClient::new(config).unwrap_err(),
            ClientError::ZeroTimeout { which: "request" }
        );
    }
    #[test]
    fn stop_and_start_bodies() {
        let ids = vec!["ins-00000001".to_string(), "ins-00000002".to_string()];
        for stop_type in StopType::ALL {
            assert_eq!(
                stop_instances_body(&ids, stop_type),
                json!({
                    "InstanceIds": ["ins-00000001", "ins-00000002"],
                    "StopType": stop_type.as_str(),
                    "StoppedMode": "KEEP_CHARGING",
                })
            );
        }
        assert_eq!(
            stop_instances_body(&ids, StopType::SoftFirst)["StopType"],
            "SOFT_FIRST"
        );
        assert!(
            stop_instances_body(&ids, StopType::Hard)
                .get("ForceStop")
                .is_none(),
            "ForceStop is refused together with StopType"
        );
        assert_eq!(
            start_instances_body(&ids),
            json!({ "InstanceIds": ["ins-00000001", "ins-00000002"] })
        );
    }

    #[test]
    fn an_instance_page_reads_zone_tags_and_the_latest_operation() {
        let response = json!({
            "TotalCount": 2,
            "InstanceSet": [
                {
                    "InstanceId": "ins-00000001",
                    "InstanceState": "STOPPING",
                    "Placement": { "Zone": "ap-guangzhou-3", "ProjectId": 0 },
                    "Tags": [
                        { "Key": "service", "Value": "web" },
                        { "Key": "owner" },
                        { "Value": "no key" },
                        "junk",
                    ],
                    "LatestOperation": "StopInstances",
                    "LatestOperationState": "OPERATING",
                    "LatestOperationRequestId": "r-stop",
                },
                { "InstanceId": "ins-00000002", "Tags": null },
            ],
        });
        let page = parse_instance_page(&response, "r", 0, 100).unwrap();
        let first = &page.instances[0];
        assert_eq!(first.zone.as_deref(), Some("ap-guangzhou-3"));
        assert_eq!(
            first.tags,
            std::collections::BTreeMap::from([
                ("owner".to_string(), String::new()),
                ("service".to_string(), "web".to_string()),
            ])
        );
        assert_eq!(first.latest_operation.as_deref(), Some("StopInstances"));
        assert_eq!(first.latest_operation_state.as_deref(), Some("OPERATING"));
        assert_eq!(first.latest_operation_request_id.as_deref(), Some("r-stop"));
        assert_eq!(first.instance_state, "STOPPING");
        let second = &page.instances[1];
        assert!(second.tags.is_empty());
        assert_eq!(second.zone, None);
    }
}
