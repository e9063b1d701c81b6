//! Several accounts behind one port (issue 23). Each account is a whole simulator
//! of its own ([`super::start`]: its fleet, key pairs, SecretId, rate limits and
//! journal, so the audit runs per account) on a private loopback port; a front on
//! the public port serves what spans accounts and routes the rest:
//!
//! - `sts` `AssumeRole` (version 2018-08-13): the caller (any account's long-term
//!   SecretId) may assume `qcs::cam::uin/<uin>:roleName/<name>` when that account has
//!   the role and trusts the caller's UIN; the reply carries a temporary SecretId,
//!   SecretKey and token valid for `DurationSeconds` (or the lifetime the simulator
//!   is told to give, [`MultiSimHandle::set_credential_lifetime`], so tests can cross
//!   an expiry). Refusals: `ResourceNotFound.RoleNotFound`, `UnauthorizedOperation`,
//!   `InvalidParameter.OverTimeError`.
//! - `organization` `DescribeOrganizationMembers` (version 2021-03-31): the
//!   Organization's members (every account but the administrator), for its
//!   administrator only.
//! - Any other call: signed with an account's long-term SecretId, passed to that
//!   account's simulator untouched; signed with temporary credentials, checked here
//!   (signature, `X-TC-Token`, expiry: `AuthFailure.TokenFailure`), then signed again
//!   with the account's long-term credentials and passed on, so each account's
//!   limits count every session of it together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::{Fleet, SimConfig, SimError, SimHandle};
use crate::secret::Secret;
use crate::sign;

/// The STS version AssumeRole names.
pub const STS_VERSION: &str = "2018-08-13";
/// The Organization API's version.
pub const ORGANIZATION_VERSION: &str = "2021-03-31";
/// The longest lifetime AssumeRole grants.
pub const MAX_ASSUME_SECONDS: u64 = 43_200;
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every code the front can reply with (each a row of [`crate::taxonomy::CODES`] or of
/// its families).
pub const FRONT_REPLY_CODES: &[&str] = &[
    "AuthFailure.InvalidAuthorization",
    "AuthFailure.SecretIdNotFound",
    "AuthFailure.SignatureFailure",
    "AuthFailure.SignatureExpire",
    "AuthFailure.TokenFailure",
    "InvalidAction",
    "InvalidParameter",
    "InvalidParameter.OverTimeError",
    "MissingParameter",
    "NoSuchVersion",
    "RequestSizeLimitExceeded",
    "ResourceNotFound.RoleNotFound",
    "UnauthorizedOperation",
];

/// One account of a simulated estate.
#[derive(Debug, Clone)]
pub struct SimAccount {
    /// Its name in tests and in `keyfleet sim --add-account`.
    pub name: String,
    /// Its UIN (digits): role ARNs name it.
    pub uin: String,
    /// Its simulator: long-term SecretId and SecretKey, rate, faults, seed.
    pub config: SimConfig,
    pub fleet: Fleet,
    /// Roles others may assume in it.
    pub roles: Vec<SimRole>,
}

/// A role of an account: its name and the UINs trusted to assume it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRole {
    pub name: String,
    pub trusted: Vec<String>,
}

/// One AssumeRole the front answered, for tests: never the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assumed {
    /// The caller's account.
    pub caller: String,
    pub role_arn: String,
    /// `Ok(account assumed into)` or the error code.
    pub outcome: Result<String, String>,
    /// Lifetime granted, in seconds (0 when refused).
    pub lifetime_secs: u64,
}

/// Temporary credentials the front issued.
struct Session {
    account: usize,
    secret_key: Secret,
    token: Secret,
    expires_at: i64,
}

struct Front {
    accounts: Vec<FrontAccount>,
    /// The Organization's administrator (its members are the other accounts).
    admin: usize,
    state: Mutex<FrontState>,
    forward: reqwest::Client,
}

struct FrontAccount {
    name: String,
    uin: String,
    secret_id: String,
    secret_key: Secret,
    roles: Vec<SimRole>,
    backend: SocketAddr,
}

struct FrontState {
    sessions: HashMap<String, Session>,
    lifetime: Option<Duration>,
    assumed: Vec<Assumed>,
    /// Requests each account's simulator got through temporary credentials.
    forwarded_temporary: Vec<u64>,
    /// Requests refused for temporary credentials that had expired (or a wrong token).
    token_failures: u64,
}

/// The accounts of a simulated estate, behind one port.
pub struct MultiSimHandle {
    addr: SocketAddr,
    names: Vec<String>,
    backends: Vec<SimHandle>,
    front: Arc<Front>,
    stop: Option<watch::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts every account's simulator and the front on `listener`. `admin` names the
/// Organization's administrator (the first account when `None`).
pub async fn start_accounts(
    listener: TcpListener,
    accounts: Vec<SimAccount>,
    admin: Option<&str>,
) -> Result<MultiSimHandle, SimError> {
    if accounts.is_empty() {
        return Err(SimError::Config("no account to simulate".to_string()));
    }
    let mut seen_ids = std::collections::HashSet::new();
    let mut seen_names = std::collections::HashSet::new();
    for account in &accounts {
        if account.uin.is_empty() || !account.uin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SimError::Config(format!(
                "account {}: the UIN {:?} is not digits",
                account.name, account.uin
            )));
        }
        if !seen_ids.insert(account.config.secret_id.clone())
            || !seen_names.insert(account.name.clone())
        {
            return Err(SimError::Config(format!(
                "account {}: two accounts share a name or a SecretId",
                account.name
            )));
        }
    }
    let admin = match admin {
        None => 0,
        Some(name) => accounts
            .iter()
            .position(|a| a.name == name)
            .ok_or_else(|| SimError::Config(format!("no account {name} to administer")))?,
    };
    let mut backends = Vec::new();
    let mut front_accounts = Vec::new();
    for account in accounts {
        let private = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(SimError::Listener)?;
        let handle = super::start(private, account.config.clone(), account.fleet).await?;
        front_accounts.push(FrontAccount {
            name: account.name.clone(),
            uin: account.uin,
            secret_id: account.config.secret_id.clone(),
            secret_key: account.config.secret_key.clone(),
            roles: account.roles,
            backend: handle.local_addr(),
        });
        backends.push(handle);
    }
    let forward = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| SimError::Config(format!("cannot build the front's client: {err}")))?;
    let count = front_accounts.len();
    let front = Arc::new(Front {
        accounts: front_accounts,
        admin,
        state: Mutex::new(FrontState {
            sessions: HashMap::new(),
            lifetime: None,
            assumed: Vec::new(),
            forwarded_temporary: vec![0; count],
            token_failures: 0,
        }),
        forward,
    });
    let addr = listener.local_addr().map_err(SimError::Listener)?;
    let (stop, stopped) = watch::channel(());
    let task = tokio::spawn(serve(listener, front.clone(), stopped));
    tracing::info!(%addr, accounts = count, "simulator of several accounts listening");
    Ok(MultiSimHandle {
        addr,
        names: front.accounts.iter().map(|a| a.name.clone()).collect(),
        backends,
        front,
        stop: Some(stop),
        task: Some(task),
    })
}

impl MultiSimHandle {
    /// The base URL every account's calls (and STS, and the Organization) go to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The simulator of the account called `name` (its fleet, journal, stats).
    pub fn account(&self, name: &str) -> Option<&SimHandle> {
        let at = self.names.iter().position(|n| n == name)?;
        self.backends.get(at)
    }

    /// The accounts' names, in the order given.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// From now on AssumeRole grants this lifetime whatever is asked (`None`: as asked).
    pub fn set_credential_lifetime(&self, lifetime: Option<Duration>) {
        self.front.lock().lifetime = lifetime;
    }

    /// Every AssumeRole answered so far, in order.
    pub fn assumed(&self) -> Vec<Assumed> {
        self.front.lock().assumed.clone()
    }

    /// Every temporary credential issued so far: (SecretId, SecretKey, token). For
    /// tests that look for them where they must never be (database, logs, reports).
    pub fn issued(&self) -> Vec<(String, Secret, Secret)> {
        self.front
            .lock()
            .sessions
            .iter()
            .map(|(id, s)| (id.clone(), s.secret_key.clone(), s.token.clone()))
            .collect()
    }

    /// Requests refused because their temporary credentials had expired (or carried
    /// another token): a client that refreshes in time causes none.
    pub fn token_failures(&self) -> u64 {
        self.front.lock().token_failures
    }

    /// Requests passed to the account `name` under temporary credentials.
    pub fn forwarded_temporary(&self, name: &str) -> u64 {
        let at = self.names.iter().position(|n| n == name);
        at.map_or(0, |at| self.front.lock().forwarded_temporary[at])
    }

    /// Stops the front and every account's simulator.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        for backend in self.backends.drain(..) {
            backend.shutdown().await;
        }
    }
}

impl Drop for MultiSimHandle {
    fn drop(&mut self) {
        self.stop.take();
    }
}

impl Front {
    fn lock(&self) -> std::sync::MutexGuard<'_, FrontState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn serve(listener: TcpListener, front: Arc<Front>, mut stop: watch::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let front = front.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(front.clone(), req));
                        let _ = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(super::DEFAULT_HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(err) => {
                    tracing::warn!("sim front accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

type Reply = Response<Full<Bytes>>;

/// A backend closed the connection without replying: the front does too.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the account's simulator closed the connection")
    }
}

impl std::error::Error for Dropped {}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn error(code: &str, message: &str) -> Reply {
    reply(json!({
        "Response": {
            "Error": { "Code": code, "Message": message },
            "RequestId": uuid::Uuid::new_v4().to_string(),
        }
    }))
}

fn success(mut data: Value) -> Reply {
    data["RequestId"] = json!(uuid::Uuid::new_v4().to_string());
    reply(json!({ "Response": data }))
}

fn reply(value: Value) -> Reply {
    let body = serde_json::to_vec(&value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Who signed a request.
enum Principal {
    /// An account's long-term SecretId.
    LongTerm(usize),
    /// Temporary credentials issued for an account.
    Temporary(usize),
}

async fn handle(front: Arc<Front>, req: Request<Incoming>) -> Result<Reply, Dropped> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(error(
                "RequestSizeLimitExceeded",
                "The request body is larger than 1 MiB or could not be read.",
            ));
        }
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let Some(auth) = header("authorization").and_then(|a| sign::parse_authorization(a).ok()) else {
        return Ok(error(
            "AuthFailure.InvalidAuthorization",
            "The Authorization header is missing or malformed.",
        ));
    };
    // Who signed, and with which SecretKey (checked below for temporary credentials
    // and the front's own services; an account's simulator checks the rest).
    let (principal, secret_key) = {
        let mut state = front.lock();
        if let Some(at) = front
            .accounts
            .iter()
            .position(|a| a.secret_id == auth.secret_id)
        {
            (
                Principal::LongTerm(at),
                front.accounts[at].secret_key.clone(),
            )
        } else if let Some(session) = state.sessions.get(&auth.secret_id) {
            if session.expires_at <= unix_now()
                || header("x-tc-token") != Some(session.token.expose())
            {
                state.token_failures += 1;
                return Ok(error(
                    "AuthFailure.TokenFailure",
                    "The temporary credentials' token is invalid or expired.",
                ));
            }
            (
                Principal::Temporary(session.account),
                session.secret_key.clone(),
            )
        } else {
            return Ok(error(
                "AuthFailure.SecretIdNotFound",
                "The SecretId is not found, please ensure that your SecretId is correct.",
            ));
        }
    };
    let received = sign::Received {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect(),
        payload: &body,
    };
    let own_service = matches!(auth.service.as_str(), "sts" | "organization");
    let checked_here = own_service || matches!(principal, Principal::Temporary(_));
    if checked_here
        && let Err(err) = sign::verify(&received, &auth.service, unix_now(), |_| {
            Some(secret_key.clone())
        })
    {
        return Ok(error(err.code(), &err.to_string()));
    }
    let caller = match principal {
        Principal::LongTerm(at) | Principal::Temporary(at) => at,
    };
    let action = header("x-tc-action").unwrap_or("");
    let version = header("x-tc-version").unwrap_or("");
    match auth.service.as_str() {
        "sts" => Ok(sts(&front, caller, action, version, &body)),
        "organization" => Ok(organization(&front, caller, action, version, &body)),
        _ => match principal {
            Principal::LongTerm(at) => forward(&front, at, &parts, &headers, body, None).await,
            Principal::Temporary(at) => {
                front.lock().forwarded_temporary[at] += 1;
                let timestamp = header("x-tc-timestamp")
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                let account = &front.accounts[at];
                let signed: Vec<(&str, &str)> = auth
                    .signed_headers
                    .iter()
                    .filter_map(|name| Some((name.as_str(), header(name)?)))
                    .collect();
                let parts_to_sign = sign::RequestParts {
                    method: parts.method.as_str(),
                    path: parts.uri.path(),
                    query: parts.uri.query().unwrap_or(""),
                    headers: signed,
                    payload: &body,
                };
                let resigned = sign::sign(
                    &parts_to_sign,
                    &auth.service,
                    timestamp,
                    &account.secret_id,
                    &account.secret_key,
                );
                forward(
                    &front,
                    at,
                    &parts,
                    &headers,
                    body.clone(),
                    Some(resigned.authorization),
                )
                .await
            }
        },
    }
}

/// Passes a request to account `at`'s simulator (with `authorization` in place of
/// the original and no token when re-signed) and its reply back.
async fn forward(
    front: &Front,
    at: usize,
    parts: &hyper::http::request::Parts,
    headers: &[(String, String)],
    body: Bytes,
    authorization: Option<String>,
) -> Result<Reply, Dropped> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("http://{}{}", front.accounts[at].backend, path_and_query);
    let mut request = front.forward.request(parts.method.clone(), url);
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if lower == "x-tc-token" && authorization.is_some() {
            continue;
        }
        if lower == "authorization"
            && let Some(auth) = &authorization
        {
            request = request.header("authorization", auth);
            continue;
        }
        if matches!(
            lower.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            continue;
        }
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.map_err(|_| Dropped)?;
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::OK);
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let bytes = response.bytes().await.map_err(|_| Dropped)?;
    let mut reply = Response::new(Full::new(bytes));
    *reply.status_mut() = status;
    if let Some(content_type) = content_type {
        reply.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    Ok(reply)
}

fn sts(front: &Front, caller: usize, action: &str, version: &str, body: &[u8]) -> Reply {
    if version != STS_VERSION {
        return error("NoSuchVersion", "The API version does not exist.");
    }
    if action != "AssumeRole" {
        return error("InvalidAction", "The action does not exist.");
    }
    let params: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let caller_name = front.accounts[caller].name.clone();
    let Some(arn) = params.get("RoleArn").and_then(Value::as_str) else {
        return error("MissingParameter", "RoleArn is missing.");
    };
    let session = params
        .get("RoleSessionName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !(2..=128).contains(&session.len()) {
        return error(
            "InvalidParameter",
            "RoleSessionName must be 2-128 characters.",
        );
    }
    let asked = params
        .get("DurationSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(7200);
    let refuse = |code: &str, message: &str| {
        front.lock().assumed.push(Assumed {
            caller: caller_name.clone(),
            role_arn: arn.to_string(),
            outcome: Err(code.to_string()),
            lifetime_secs: 0,
        });
        error(code, message)
    };
    if asked == 0 || asked > MAX_ASSUME_SECONDS {
        return refuse(
            "InvalidParameter.OverTimeError",
            "DurationSeconds must be between 1 and 43200.",
        );
    }
    let parsed = arn.strip_prefix("qcs::cam::uin/").and_then(|rest| {
        let (uin, role) = rest.split_once(':')?;
        Some((uin, role.strip_prefix("roleName/")?))
    });
    let Some((uin, role_name)) = parsed else {
        return refuse("InvalidParameter", "RoleArn is malformed.");
    };
    let Some(target) = front.accounts.iter().position(|a| a.uin == uin) else {
        return refuse("ResourceNotFound.RoleNotFound", "The role does not exist.");
    };
    let Some(role) = front.accounts[target]
        .roles
        .iter()
        .find(|r| r.name == role_name)
    else {
        return refuse("ResourceNotFound.RoleNotFound", "The role does not exist.");
    };
    if !role.trusted.contains(&front.accounts[caller].uin) {
        return refuse(
            "UnauthorizedOperation",
            "The caller is not allowed to assume this role.",
        );
    }
    let mut state = front.lock();
    let lifetime = state.lifetime.map_or(asked, |l| l.as_secs().max(1));
    let mut rng = rand::rng();
    let mut random = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
            .collect()
    };
    let secret_id = format!("AKIDtmp{}", random(29));
    let secret_key = random(32);
    let token = random(96);
    let expires_at = unix_now() + lifetime as i64;
    state.sessions.insert(
        secret_id.clone(),
        Session {
            account: target,
            secret_key: Secret::new(secret_key.clone()),
            token: Secret::new(token.clone()),
            expires_at,
        },
    );
    state.assumed.push(Assumed {
        caller: caller_name,
        role_arn: arn.to_string(),
        outcome: Ok(front.accounts[target].name.clone()),
        lifetime_secs: lifetime,
    });
    drop(state);
    let expiration = time::OffsetDateTime::from_unix_timestamp(expires_at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    success(json!({
        "Credentials": { "TmpSecretId": secret_id, "TmpSecretKey": secret_key, "Token": token },
        "ExpiredTime": expires_at,
        "Expiration": expiration,
    }))
}

fn organization(front: &Front, caller: usize, action: &str, version: &str, body: &[u8]) -> Reply {
    if version != ORGANIZATION_VERSION {
        return error("NoSuchVersion", "The API version does not exist.");
    }
    if action != "DescribeOrganizationMembers" {
        return error("InvalidAction", "The action does not exist.");
    }
    if caller != front.admin {
        return error(
            "UnauthorizedOperation",
            "Only the Organization's administrator may list its members.",
        );
    }
    let params: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let offset = params.get("Offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let limit = params.get("Limit").and_then(Value::as_u64).unwrap_or(10) as usize;
    if limit == 0 || limit > 50 {
        return error("InvalidParameter", "Limit must be between 1 and 50.");
    }
    let members: Vec<&FrontAccount> = front
        .accounts
        .iter()
        .enumerate()
        .filter(|(at, _)| *at != front.admin)
        .map(|(_, a)| a)
        .collect();
    let items: Vec<Value> = members
        .iter()
        .skip(offset)
        .take(limit)
        .map(|a| json!({ "MemberUin": a.uin.parse::<u64>().unwrap_or(0), "Name": a.name }))
        .collect();
    success(json!({ "Items": items, "Total": members.len() }))
}
