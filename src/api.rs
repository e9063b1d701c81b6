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

pub mod resolve;
pub mod templates;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::credentials::Credentials;
use crate::sign::{self, RequestParts};
use crate::taxonomy::{self, ErrorClass, TRANSPORT_PREFIX};

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

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not an `http://` or `https://` URL of a host.
    #[error("endpoint {endpoint:?} is not usable: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    /// A zero timeout would fail every request.
    #[error("the {which} timeout must be more than zero")]
    ZeroTimeout { which: &'static str },
    /// A credential that cannot be sent in a header.
    #[error("unusable credentials: {0}")]
    BadCredentials(String),
    /// `http://` to a host that is not this machine, without `--insecure-http`.
    #[error(
        "endpoint {endpoint:?} uses http:// to a host that is not this machine: the SecretId, \
         a replayable signature and the session token would travel in clear; use https://, \
         or pass --insecure-http if this network is trusted"
    )]
    InsecureHttp { endpoint: String },
    /// The HTTP stack could not be set up (TLS roots, for example).
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
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

/// The endpoint answered with `Response.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The error code, e.g. `UnsupportedOperation.InstanceStateRunning`.
    pub code: String,
    pub message: String,
    /// Empty only when the endpoint omitted it from an error reply.
    pub request_id: String,
}

/// What went wrong below the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// The connection could not be established (refused, DNS, TLS).
    Connect,
    /// The connect or request timeout passed. The request may or may not have been applied.
    Timeout,
    /// The connection broke (reset, closed mid-reply). The request may or may not have been applied.
    Io,
    /// A status other than 200.
    HttpStatus,
    /// HTTP 200 with a body that is not the API envelope, or a success without a RequestId.
    BadBody,
}

impl TransportKind {
    /// The code recorded for this failure, under [`TRANSPORT_PREFIX`].
    pub fn code(self) -> String {
        let name = match self {
            TransportKind::Connect => "Connect",
            TransportKind::Timeout => "Timeout",
            TransportKind::Io => "Io",
            TransportKind::HttpStatus => "HttpStatus",
            TransportKind::BadBody => "BadBody",
        };
        format!("{TRANSPORT_PREFIX}{name}")
    }
}

/// No API reply could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    pub kind: TransportKind,
    /// The HTTP status, when a reply's head arrived.
    pub status: Option<u16>,
    /// The first [`BODY_PREFIX_BYTES`] bytes of the reply body (invalid UTF-8 replaced).
    pub body_prefix: String,
    /// What happened, for a person.
    pub detail: String,
}

impl TransportError {
    fn new(kind: TransportKind, detail: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            status: None,
            body_prefix: String::new(),
            detail: detail.into(),
        }
    }

    fn with_reply(mut self, status: u16, body: &[u8]) -> TransportError {
        self.status = Some(status);
        self.body_prefix = body_prefix(body);
        self
    }
}

/// A call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Api(ApiError),
    #[error("{0}")]
    Transport(TransportError),
}

impl CallError {
    /// The API error code, or `Transport.Connect|Timeout|Io|HttpStatus|BadBody`.
    pub fn code(&self) -> String {
        match self {
            CallError::Api(err) => err.code.clone(),
            CallError::Transport(err) => err.kind.code(),
        }
    }

    /// What the caller of `action` should do, from [`taxonomy::classify`].
    pub fn class(&self, action: Action) -> ErrorClass {
        taxonomy::classify(action, &self.code()).class
    }

    /// The API's message, or what went wrong in transport.
    pub fn message(&self) -> String {
        match self {
            CallError::Api(err) => err.message.clone(),
            CallError::Transport(err) => err.detail.clone(),
        }
    }

    /// The RequestId, when the endpoint gave one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            CallError::Api(err) if !err.request_id.is_empty() => Some(&err.request_id),
            _ => None,
        }
    }

    /// The HTTP status of the reply, when one arrived.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            // API errors arrive with status 200: only a 200 is read as an envelope.
            CallError::Api(_) => Some(200),
            CallError::Transport(err) => err.status,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if !self.request_id.is_empty() {
            write!(f, " (RequestId {})", self.request_id)?;
        }
        Ok(())
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.detail)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if !self.body_prefix.is_empty() {
            write!(f, "; body starts: {:?}", self.body_prefix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}
impl std::error::Error for TransportError {}

/// How a client's requests travel, as [`check_transport`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `https://`: TLS, the certificate verified against the system's roots.
    Tls,
    /// `http://` to `localhost`, 127.0.0.0/8 or `::1` (the simulator): nothing leaves the machine.
    LoopbackHttp,
    /// `http://` to another host, allowed by `--insecure-http`: everything, the
    /// credentials included, can be read and replayed on the way.
    InsecureHttp,
}

/// Decides whether requests may go to `url`: https always; http only to loopback
/// (`localhost`, 127.0.0.0/8, `::1`) unless `insecure_http`. Called for every
/// endpoint a client is built for, before anything is sent.
pub fn check_transport(url: &Url, insecure_http: bool) -> Result<Transport, ClientError> {
    check_transport_resolved(url, insecure_http, &[])
}

/// [`check_transport`] with `--resolve` rules: a host they connect to a loopback
/// address counts as loopback ([`resolve::is_loopback_host`]). Called for every URL a
/// `{region}` template gives, before anything is sent.
pub fn check_transport_resolved(
    url: &Url,
    insecure_http: bool,
    rules: &[resolve::ResolveRule],
) -> Result<Transport, ClientError> {
    // Judged on where the connection goes: a `--resolve` rule covering the host
    // decides, even for `localhost` (the audit's L1).
    let loopback = resolve::is_loopback_host(url.host_str().unwrap_or_default(), rules);
    match url.scheme() {
        "https" => Ok(Transport::Tls),
        "http" if loopback => Ok(Transport::LoopbackHttp),
        "http" if insecure_http => Ok(Transport::InsecureHttp),
        "http" => Err(ClientError::InsecureHttp {
            endpoint: crate::ids::shorten(url.as_str()),
        }),
        _ => Err(ClientError::BadEndpoint {
            endpoint: crate::ids::shorten(url.as_str()),
            reason: "the scheme must be https:// (or http:// for a local endpoint)".into(),
        }),
    }
}

/// The proxy the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`,
/// upper or lower case) sends requests for `url` through, as `scheme://host:port`
/// without any user name or password; `None` when requests go direct. It is the same
/// matcher reqwest applies, so what this says is what happens.
pub fn proxy_for(url: &Url) -> Option<String> {
    let uri: hyper::Uri = url.as_str().parse().ok()?;
    let intercept = hyper_util::client::proxy::matcher::Matcher::from_system().intercept(&uri)?;
    let proxy = intercept.uri();
    let scheme = proxy.scheme_str().unwrap_or("http");
    let host = proxy.host().unwrap_or_default();
    Some(match proxy.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

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
}

/// Where calls go.
#[derive(Debug)]
enum Endpoint {
    /// Every call to one URL; `host` is the `Host` header, exactly as sent and signed.
    Fixed { url: Url, host: String },
    /// Each call to the template with its region in place of [`REGION_PLACEHOLDER`] and
    /// its service's name in place of [`SERVICE_PLACEHOLDER`]; each URL it gives passes
    /// [`check_transport_resolved`] before it is used.
    Template {
        template: String,
        /// The template's URL for one region, for decisions made once (the proxy).
        sample: Url,
        insecure_http: bool,
        rules: Vec<resolve::ResolveRule>,
    },
}

impl Endpoint {
    /// The endpoint of `config` and how its requests travel (for a template, judged on
    /// one region's URL; every call's URL is checked again).
    fn parse(config: &ClientConfig) -> Result<(Endpoint, Transport), ClientError> {
        let endpoint = config.endpoint.trim();
        if !endpoint.contains(REGION_PLACEHOLDER) && !endpoint.contains(SERVICE_PLACEHOLDER) {
            let (url, host) = parse_endpoint(endpoint)?;
            let transport = check_transport_resolved(&url, config.insecure_http, &config.resolve)?;
            return Ok((Endpoint::Fixed { url, host }, transport));
        }
        let fill = |service: Service, region: &str| fill_template(endpoint, service, region);
        let a = parse_endpoint(&fill(Service::Cvm, "ap-guangzhou"))?;
        // Each placeholder, varied alone, must change the host and nothing else: it
        // belongs in the host name.
        let variations = [
            (REGION_PLACEHOLDER, fill(Service::Cvm, "ap-shanghai")),
            (SERVICE_PLACEHOLDER, fill(Service::As, "ap-guangzhou")),
        ];
        for (placeholder, varied) in variations {
            if !endpoint.contains(placeholder) {
                continue;
            }
            let b = parse_endpoint(&varied)?;
            if a.0.host_str() == b.0.host_str() || a.0.port() != b.0.port() {
                return Err(ClientError::BadEndpoint {
                    endpoint: crate::ids::shorten(endpoint),
                    reason: format!("{placeholder} may appear only in the host name"),
                });
            }
        }
        let transport = check_transport_resolved(&a.0, config.insecure_http, &config.resolve)?;
        let template = Endpoint::Template {
            template: endpoint.to_string(),
            sample: a.0,
            insecure_http: config.insecure_http,
            rules: config.resolve.clone(),
        };
        Ok((template, transport))
    }

    /// The URL, or the template as given.
    fn shown(&self) -> &str {
        match self {
            Endpoint::Fixed { url, .. } => url.as_str(),
            Endpoint::Template { template, .. } => template,
        }
    }

    /// The URL, or the template's for one region: what the proxy decision is made on
    /// (the environment's proxy variables name hosts, so every region fares alike
    /// unless NO_PROXY names one).
    fn sample_url(&self) -> &Url {
        match self {
            Endpoint::Fixed { url, .. } => url,
            Endpoint::Template { sample, .. } => sample,
        }
    }

    /// The URL and `Host` header for a CVM call to `region`.
    #[cfg(test)]
    fn for_region(&self, region: &str) -> Result<(Url, String), CallError> {
        self.for_call(Service::Cvm, region)
    }

    /// The URL and `Host` header for a call of `service` to `region`.
    fn for_call(&self, service: Service, region: &str) -> Result<(Url, String), CallError> {
        match self {
            Endpoint::Fixed { url, host } => Ok((url.clone(), host.clone())),
            Endpoint::Template {
                template,
                insecure_http,
                rules,
                ..
            } => {
                let not_sent = |detail: String| {
                    CallError::Transport(TransportError::new(TransportKind::Connect, detail))
                };
                // A region becomes part of a host name: only region-shaped text may.
                if template.contains(REGION_PLACEHOLDER) && !crate::ids::is_region(region) {
                    return Err(not_sent(format!(
                        "not sent: the region {:?} cannot be part of an endpoint's host name",
                        crate::ids::shorten(region)
                    )));
                }
                let (url, host) = parse_endpoint(&fill_template(template, service, region))
                    .map_err(|err| not_sent(format!("not sent: {err}")))?;
                check_transport_resolved(&url, *insecure_http, rules)
                    .map_err(|err| not_sent(format!("not sent: {err}")))?;
                Ok((url, host))
            }
        }
    }
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
    /// the sub-account whose rate limit the requests count against).
    pub fn secret_id(&self) -> &str {
        &self.target.credentials.secret_id
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

/// Sorts a 200 reply's body into success, API error or bad body.
fn parse_envelope(body: &[u8]) -> Result<(Value, String), CallError> {
    let bad =
        |detail: &str| CallError::Transport(TransportError::new(TransportKind::BadBody, detail));
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| bad(&format!("the reply is not JSON ({err})")))?;
    let Some(Value::Object(response)) = value.get("Response") else {
        return Err(bad("the reply is not the {\"Response\": {...}} envelope"));
    };
    let request_id = match response.get("RequestId") {
        Some(Value::String(id)) if !id.trim().is_empty() => Some(id.clone()),
        _ => None,
    };
    if let Some(error) = response.get("Error") {
        let code = error.get("Code").and_then(Value::as_str);
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Err(bad("Response.Error has no Code"));
        };
        return Err(CallError::Api(ApiError {
            code: code.to_string(),
            message: string_field(error, "Message"),
            request_id: request_id.unwrap_or_default(),
        }));
    }
    match request_id {
        Some(id) => Ok((Value::Object(response.clone()), id)),
        None => Err(bad("the reply has neither an Error nor a RequestId")),
    }
}

/// Reads a `DescribeInstances` reply (its `Response` object) asked from `offset`
/// with `limit`: the instances, `TotalCount` and the next page's offset. Shared by the
/// client and the executor's verification batches, which get the reply as JSON.
pub fn parse_instance_page(
    response: &Value,
    request_id: &str,
    offset: u64,
    limit: u64,
) -> Result<InstancePage, CallError> {
    let instances = parse_set(response, "InstanceSet", request_id, |item| {
        let login = item.get("LoginSettings");
        Some(InstanceInfo {
            instance_id: item.get("InstanceId")?.as_str()?.to_string(),
            instance_state: string_field(item, "InstanceState"),
            os_name: string_field(item, "OsName"),
            key_ids: string_list(login.and_then(|l| l.get("KeyIds"))),
            latest_operation: optional_string(item.get("LatestOperation")),
            latest_operation_state: optional_string(item.get("LatestOperationState")),
            latest_operation_request_id: optional_string(item.get("LatestOperationRequestId")),
            zone: optional_string(item.get("Placement").and_then(|p| p.get("Zone"))),
            tags: tags(item.get("Tags")),
        })
    })?;
    let total_count = total_count(response, request_id)?;
    let returned = instances.len() as u64;
    let next = offset.saturating_add(returned);
    let more = match total_count {
        Some(total) => next < total,
        // Without a total, a full page may have a successor.
        None => returned == limit,
    };
    let next_offset = (more && returned > 0 && next > offset).then_some(next);
    Ok(InstancePage {
        instances,
        total_count,
        next_offset,
    })
}

/// Reads a `DescribeRegions` reply's `RegionSet`.
pub fn parse_regions(response: &Value, request_id: &str) -> Result<Vec<RegionInfo>, CallError> {
    parse_set(response, "RegionSet", request_id, |item| {
        Some(RegionInfo {
            region: item.get("Region")?.as_str()?.to_string(),
            region_name: string_field(item, "RegionName"),
            region_state: string_field(item, "RegionState"),
        })
    })
}

/// Reads a `DescribeKeyPairs` reply's `KeyPairSet`.
pub fn parse_key_pairs(response: &Value, request_id: &str) -> Result<Vec<KeyPairInfo>, CallError> {
    parse_set(response, "KeyPairSet", request_id, |item| {
        Some(KeyPairInfo {
            key_id: item.get("KeyId")?.as_str()?.to_string(),
            associated_instance_ids: string_list(item.get("AssociatedInstanceIds")),
        })
    })
}

/// Reads `Response.<set_name>[]` with `item`; any item it cannot read makes the reply a bad body.
fn parse_set<T>(
    response: &Value,
    set_name: &str,
    request_id: &str,
    item: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, CallError> {
    let bad = |detail: String| {
        let mut err = TransportError::new(TransportKind::BadBody, detail);
        err.status = Some(200);
        CallError::Transport(err)
    };
    let set = match response.get(set_name) {
        Some(Value::Array(set)) => set,
        Some(Value::Null) | None => return Ok(Vec::new()),
        Some(_) => {
            return Err(bad(format!(
                "{set_name} is not a list (RequestId {request_id})"
            )));
        }
    };
    set.iter()
        .enumerate()
        .map(|(index, value)| {
            item(value).ok_or_else(|| {
                bad(format!(
                    "{set_name}[{index}] lacks its id (RequestId {request_id})"
                ))
            })
        })
        .collect()
}

/// `Response.TotalCount`: absent or null is `None`; anything but a whole number is a bad body.
fn total_count(response: &Value, request_id: &str) -> Result<Option<u64>, CallError> {
    match response.get("TotalCount") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            let mut err = TransportError::new(
                TransportKind::BadBody,
                format!("TotalCount is not a whole number (RequestId {request_id})"),
            );
            err.status = Some(200);
            CallError::Transport(err)
        }),
    }
}

/// `Tags` of an instance: every `{Key, Value}` item with a non-empty string `Key`;
/// anything else (absent, null, not a list, an item without a key) is left out.
fn tags(value: Option<&Value>) -> std::collections::BTreeMap<String, String> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|tag| {
            let key = optional_string(tag.get("Key"))?;
            let value = tag
                .get("Value")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            Some((key, value))
        })
        .collect()
}

/// The body of a `StopInstances` request: up to 100 instances (the caller checks),
/// `StopType` as asked, and `StoppedMode` always `KEEP_CHARGING` (`STOP_CHARGING`
/// releases CPU, memory and the public IP, so the restart may fail; reference, section 1).
/// `ForceStop` is never sent: it is deprecated and refused together with `StopType`.
pub fn stop_instances_body(instance_ids: &[String], stop_type: StopType) -> Value {
    json!({
        "InstanceIds": instance_ids,
        "StopType": stop_type.as_str(),
        "StoppedMode": crate::cvm::STOPPED_MODE_KEEP_CHARGING,
    })
}

/// The body of a `StartInstances` request: up to 100 instances (the caller checks).
pub fn start_instances_body(instance_ids: &[String]) -> Value {
    json!({ "InstanceIds": instance_ids })
}

/// An optional string field: absent, null, empty or not a string is `None`.
fn optional_string(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn string_field(value: &Value, name: &str) -> String {
    value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Checks an endpoint URL; returns it and the `Host` header value for it.
fn parse_endpoint(endpoint: &str) -> Result<(Url, String), ClientError> {
    let bad = |reason: &str| ClientError::BadEndpoint {
        endpoint: crate::ids::shorten(endpoint),
        reason: reason.to_string(),
    };
    let url = Url::parse(endpoint.trim()).map_err(|err| bad(&format!("not a URL ({err})")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(
            "the scheme must be https:// (or http:// for a local endpoint)",
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("there is no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not carry a user name or password"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "API 3.0 requests go to the root path: give only scheme, host and port",
        ));
    }
    // `port()` is None for the scheme's default port, which is also when clients omit it.
    let host_header = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok((url, host_header))
}

/// An endpoint template with `service`'s name and `region` in place of the placeholders.
fn fill_template(template: &str, service: Service, region: &str) -> String {
    template
        .replace(SERVICE_PLACEHOLDER, service.name())
        .replace(REGION_PLACEHOLDER, region)
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

fn body_prefix(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(BODY_PREFIX_BYTES)]).into_owned()
}

fn from_reqwest(err: &reqwest::Error) -> TransportError {
    let kind = if err.is_timeout() {
        TransportKind::Timeout
    } else if err.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Io
    };
    let mut transport = TransportError::new(kind, error_chain(err));
    transport.status = err.status().map(|s| s.as_u16());
    transport
}

/// An error and its sources, `outer: inner: innermost`, without repeats.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

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
        let doc = include_str!("../docs/errors.md");
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
