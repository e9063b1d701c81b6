//! The HTTP side: hyper on a given listener, the API 3.0 protocol (POST JSON and
//! GET query), signature checks, the rate limiter, faults, and the `/_sim/` endpoints.
//!
//! A request goes through: read body (within the body timeout) -> jitter -> protocol
//! and signature checks -> rate limiter (per Host, action and SecretId) -> fault and
//! latency draws -> latency -> parameter validation -> fault -> all-or-nothing
//! execution -> reply (or a dropped connection).
//!
//! Abuse is bounded: a connection must deliver each request head within
//! [`SimConfig::header_timeout`] (which also ends idle keep-alive connections) and its
//! body within [`SimConfig::body_timeout`]; at most [`SimConfig::max_connections`] are
//! open, and past that the accept loop waits (new connections queue in the kernel's
//! backlog) rather than closing them, so an honest client is served late instead of
//! failing with an ambiguous transport error; the journal keeps at most
//! [`SimConfig::journal_capacity`] entries, and none holds a failed request's ids.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::actions::{self, Acceptance, Action};
use super::call::{Call, check_protocol, kept, parse_query, strings};
use super::faults::Fault;
use super::fleet::{Fleet, LiveFleet};
use super::journal::{
    DROPPED_BEFORE_APPLY, JournalEntry, JournalPage, MAX_PAGE_ENTRIES, Recorder, Stats,
};
use super::limiter::SlidingWindow;
use super::power::{PowerEvent, PowerPage};
use super::request::ApiError;
use super::{SimConfig, SimError};

/// Largest request body accepted; the biggest legal request is a few kilobytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The prefix of the observability endpoints, which need no signature.
const OBSERVE_PREFIX: &str = "/_sim/";
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

type Reply = Response<Full<Bytes>>;

/// Returned by the service to make hyper close the connection without replying.
#[derive(Debug, PartialEq, Eq)]
enum Close {
    /// A drop fault.
    Fault,
    /// The body did not arrive within the body timeout.
    BodyTimeout,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Close::Fault => "connection dropped by an injected fault",
            Close::BodyTimeout => "the request body did not arrive in time",
        })
    }
}

impl std::error::Error for Close {}

/// What the rate limit is counted per, as on Tencent Cloud: the access endpoint (the
/// `Host` header, lower-cased), the action and the SecretId that signed the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LimiterKey {
    host: String,
    action: Action,
    secret_id: String,
}

/// Everything the connections share.
pub(crate) struct Shared {
    config: SimConfig,
    start: Instant,
    inner: Mutex<Inner>,
    /// The SecretId was disabled (as in the console): every request fails to authenticate.
    revoked: std::sync::atomic::AtomicBool,
}

struct Inner {
    fleet: LiveFleet,
    limiters: HashMap<LimiterKey, SlidingWindow>,
    /// Each action's admissions over every Host, unlimited: only for the stats.
    action_windows: HashMap<Action, SlidingWindow>,
    /// The limit now: `SimConfig::rate` until `/_sim/rate` or `SimHandle::set_rate`.
    rate: u32,
    // Separate streams, so turning on jitter does not change which requests get faults.
    jitter_rng: StdRng,
    latency_rng: StdRng,
    fault_rng: StdRng,
    /// Whether an accepted operation ends FAILED: its own stream, one draw per admitted request.
    async_rng: StdRng,
    /// The power faults: one draw per admitted StartInstances request (refused?) and one
    /// per instance of an executed stop or start (fails?), so they change no other stream.
    power_rng: StdRng,
    recorder: Recorder,
    next_seq: u64,
    /// The changing fleet's schedule, when [`SimConfig::churn`] asks for one.
    churn: Option<super::churn::Schedule>,
}

/// Constants that derive the independent RNG streams from one seed.
const JITTER_STREAM: u64 = 0x6a09_e667_f3bc_c908;
const LATENCY_STREAM: u64 = 0xbb67_ae85_84ca_a73b;
const ASYNC_STREAM: u64 = 0x3c6e_f372_fe94_f82b;
const POWER_STREAM: u64 = 0xa54f_f53a_5f1d_36f1;

impl Shared {
    pub(super) fn new(config: SimConfig, fleet: Fleet) -> Shared {
        let start = Instant::now();
        let inner = Inner {
            fleet: LiveFleet::new(fleet, start, config.settle_after),
            limiters: HashMap::new(),
            action_windows: HashMap::new(),
            rate: config.rate,
            jitter_rng: StdRng::seed_from_u64(config.seed ^ JITTER_STREAM),
            latency_rng: StdRng::seed_from_u64(config.seed ^ LATENCY_STREAM),
            fault_rng: StdRng::seed_from_u64(config.seed),
            async_rng: StdRng::seed_from_u64(config.seed ^ ASYNC_STREAM),
            power_rng: StdRng::seed_from_u64(config.seed ^ POWER_STREAM),
            recorder: Recorder::new(config.journal_capacity),
            next_seq: 0,
            churn: config
                .churn
                .map(|churn| super::churn::Schedule::new(churn, config.seed)),
        };
        Shared {
            config,
            start,
            inner: Mutex::new(inner),
            revoked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Disables (or re-enables) the accepted SecretId.
    pub(super) fn set_revoked(&self, revoked: bool) {
        self.revoked
            .store(revoked, std::sync::atomic::Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in the lock panics on input; if something did, the state is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn snapshot(&self) -> Fleet {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.fleet.settle(now);
        inner.fleet.snapshot(now)
    }

    /// Replaces the fleet with `edit` applied to a snapshot; busy and settle times in
    /// the snapshot count from now, so they carry over unchanged.
    pub(super) fn edit(&self, edit: impl FnOnce(&mut Fleet)) -> Result<(), SimError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.fleet.settle(now);
        let mut fleet = inner.fleet.snapshot(now);
        edit(&mut fleet);
        fleet.validate()?;
        let previous = std::mem::replace(
            &mut inner.fleet,
            LiveFleet::new(fleet, now, self.config.settle_after),
        );
        inner.fleet.keep_operations(previous, now);
        Ok(())
    }

    pub(super) fn journal(&self) -> Vec<JournalEntry> {
        self.lock().recorder.journal()
    }

    pub(super) fn journal_page(&self, after: u64, limit: usize) -> JournalPage {
        self.lock().recorder.page(after, limit)
    }

    /// Every kept power event, in time order (state changes due by now recorded first).
    pub(super) fn power_timeline(&self) -> Vec<PowerEvent> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.fleet.settle(now);
        inner.fleet.timeline.events()
    }

    pub(super) fn power_page(&self, after: u64, limit: usize) -> PowerPage {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.fleet.settle(now);
        inner.fleet.timeline.page(after, limit)
    }

    /// Power events dropped to keep the timeline within its capacity.
    pub(super) fn power_dropped(&self) -> u64 {
        self.lock().fleet.timeline.dropped()
    }

    /// Changes the limit of every limiter key, existing and future.
    pub(super) fn set_rate(&self, rate: u32) {
        let mut inner = self.lock();
        inner.rate = rate;
        for (key, window) in inner.limiters.iter_mut() {
            window.set_limit(action_limit(key.action, rate));
        }
        tracing::info!(rate, "sim rate changed");
    }

    pub(super) fn rate(&self) -> u32 {
        self.lock().rate
    }

    pub(super) fn stats(&self) -> Stats {
        self.lock().recorder.stats()
    }

    /// The changes the churn schedule has made so far.
    pub(super) fn fleet_changes(&self) -> Vec<super::churn::Change> {
        self.lock()
            .churn
            .as_ref()
            .map(|schedule| schedule.changes().to_vec())
            .unwrap_or_default()
    }

    /// Before a listing page is served: the churn schedule's change, if one is due.
    fn churn(&self, inner: &mut Inner, region: &str, now: Instant) {
        let inner = &mut *inner;
        let Some(schedule) = inner.churn.as_mut() else {
            return;
        };
        if !schedule.page(region) {
            return;
        }
        let mut fleet = inner.fleet.snapshot(now);
        let Some(change) = schedule.change(&mut fleet, region) else {
            return;
        };
        tracing::debug!(?change, "sim fleet changed mid-listing");
        let previous = std::mem::replace(
            &mut inner.fleet,
            LiveFleet::new(fleet, now, self.config.settle_after),
        );
        inner.fleet.keep_operations(previous, now);
    }

    fn draw_jitter(&self) -> Duration {
        let jitter = self.config.jitter;
        if jitter.is_zero() {
            return Duration::ZERO;
        }
        let micros = self
            .lock()
            .jitter_rng
            .random_range(0..=jitter.as_micros().min(u128::from(u64::MAX)) as u64);
        Duration::from_micros(micros)
    }
}

/// Accepts connections until `stop` fires (or its sender is dropped), at most
/// `max_connections` open at once: at the cap it stops accepting until one ends.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    let cap = shared.config.max_connections.max(1);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            // Not polled at the cap: the join branch below wakes the loop when one ends.
            accepted = listener.accept(), if connections.len() < cap => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(shared.clone(), stream));
                    let open = connections.len() as u64;
                    shared.lock().recorder.connection_opened(open);
                }
                Err(err) => {
                    tracing::warn!("sim accept failed: {err}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// One connection: HTTP/1.1 with the header timeout on (hyper ignores it without a timer).
async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let service = {
        let shared = shared.clone();
        service_fn(move |req| handle(shared.clone(), req))
    };
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        let ours = err
            .source()
            .and_then(|s| s.downcast_ref::<Close>())
            .is_some();
        if err.is_timeout() && !ours {
            shared.lock().recorder.header_timeout();
        }
        tracing::debug!("sim connection closed: {err}");
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Reply, Close> {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        shared.config.body_timeout,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await;
    let body = match read {
        Err(_elapsed) => {
            shared.lock().recorder.body_timeout();
            return Err(Close::BodyTimeout);
        }
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return Ok(api_reply(
                StatusCode::OK,
                Err(ApiError::new(
                    "RequestSizeLimitExceeded",
                    "The request body is larger than 1 MiB or could not be read.",
                )),
                &new_request_id(),
            ));
        }
    };
    if parts.uri.path().starts_with(OBSERVE_PREFIX) {
        return Ok(observe(&shared, &parts, &body));
    }
    let jitter = shared.draw_jitter();
    if !jitter.is_zero() {
        tokio::time::sleep(jitter).await;
    }
    let call = Call::new(&parts, body);
    let ticket = match admit(&shared, call) {
        Ok(ticket) => ticket,
        Err(reply) => return Ok(*reply),
    };
    if !ticket.latency.is_zero() {
        tokio::time::sleep(ticket.latency).await;
    }
    process(&shared, ticket)
}

/// An admitted request, between the rate limiter and processing.
struct Ticket {
    seq: u64,
    entry: JournalEntry,
    action: Action,
    region: String,
    params: Result<Map<String, Value>, ApiError>,
    fault: Option<Fault>,
    /// An accepted Associate/Disassociate ends FAILED (the async-fail fault).
    async_fails: bool,
    latency: Duration,
}

/// Protocol and signature checks, then the rate limiter. An admitted request leaves
/// with its fault and latency drawn (in arrival order, so a seed reproduces them).
fn admit(shared: &Shared, call: Call) -> Result<Ticket, Box<Reply>> {
    // The signature (an HMAC over the body) is checked outside the lock; a request that
    // fails it, or any protocol check, is journaled without its ids and its body unparsed.
    let checked = check_protocol(
        &call,
        &shared.config,
        shared.revoked.load(std::sync::atomic::Ordering::SeqCst),
    );
    let params = match checked {
        Ok(_) => call.params(),
        Err(_) => Ok(Map::new()),
    };
    let host = call
        .header("host")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let mut inner = shared.lock();
    let now = Instant::now();
    let seq = inner.next_seq;
    inner.next_seq += 1;
    let mut entry = JournalEntry {
        at_ms: i64::try_from(now.duration_since(shared.start).as_millis()).unwrap_or(i64::MAX),
        host: crate::ids::shorten(&host),
        action: kept(call.common("action")),
        region: kept(call.common("region")),
        instance_ids: Vec::new(),
        key_ids: Vec::new(),
        force_stop: false,
        code: None,
        request_id: None,
        applied: false,
        dropped: false,
        operation_failed: false,
        stop_type: None,
        stopped_mode: None,
    };
    let (action, region, secret_id) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            inner.recorder.protocol_failure();
            return Err(Box::new(inner.reply(seq, entry, Err(err))));
        }
    };
    // Signed and well formed: the entry holds what was sent, in full.
    entry.host.clone_from(&host);
    entry.instance_ids = strings(&params, "InstanceIds");
    entry.key_ids = strings(&params, "KeyIds");
    if action == Action::StopInstances {
        let sent = |name: &str| {
            params
                .as_ref()
                .ok()
                .and_then(|p| p.get(name))
                .and_then(Value::as_str)
                .map(crate::ids::shorten)
        };
        entry.stop_type = sent("StopType");
        entry.stopped_mode = sent("StoppedMode");
    }
    entry.force_stop = params
        .as_ref()
        .ok()
        .and_then(|p| p.get("ForceStop"))
        .is_some_and(|v| {
            v == &Value::Bool(true)
                || v.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("true") || s == "1")
        });
    if shared.config.denied_actions.contains(&action) {
        let err = ApiError::new(
            "UnauthorizedOperation",
            format!("This sub-account is not authorized to perform {action}."),
        );
        return Err(Box::new(inner.reply(seq, entry, Err(err))));
    }
    let rate = action_limit(action, inner.rate);
    let key = LimiterKey {
        host,
        action,
        secret_id,
    };
    let window = inner
        .limiters
        .entry(key.clone())
        .or_insert_with(|| SlidingWindow::new(rate));
    if !window.try_admit(now) {
        let err = ApiError::new(
            "RequestLimitExceeded",
            "The number of requests exceeds the frequency limit.",
        );
        return Err(Box::new(inner.reply(seq, entry, Err(err))));
    }
    let per_key = window.max_in_window();
    let per_action = {
        let all_hosts = inner
            .action_windows
            .entry(action)
            .or_insert_with(|| SlidingWindow::new(0));
        all_hosts.try_admit(now);
        all_hosts.max_in_window()
    };
    inner
        .recorder
        .admitted(&key.host, &entry.action, per_key, per_action);
    // Always one draw per admitted request, so the sequence does not depend on the outcome.
    let draw: f64 = inner.fault_rng.random();
    let fault = shared.config.faults.pick(draw);
    let async_draw: f64 = inner.async_rng.random();
    let async_fails = async_draw < shared.config.async_fail;
    let (low, high) = shared.config.latency;
    let latency = if high > low {
        let span = (high - low).as_micros().min(u128::from(u64::MAX)) as u64;
        low + Duration::from_micros(inner.latency_rng.random_range(0..=span))
    } else {
        low
    };
    Ok(Ticket {
        seq,
        entry,
        action,
        region,
        params,
        fault,
        async_fails,
        latency,
    })
}

/// The limit of `action` when the key-pair operations are limited to `rate` (0:
/// unlimited): they get `rate`, the reads their documented limits scaled alike
/// (DescribeInstances 40 at the documented 10, so a simulator slowed to 5 slows them too).
pub(crate) fn action_limit(action: super::actions::Action, rate: u32) -> u32 {
    if action.is_key_pair_operation() {
        rate
    } else {
        let documented = u64::from(action.rate_limit());
        let key_pair =
            u64::from(super::actions::Action::DisassociateInstancesKeyPairs.rate_limit());
        (u64::from(rate) * documented / key_pair).min(u64::from(u32::MAX)) as u32
    }
}

/// Validation, the fault, then the all-or-nothing change; `Err` drops the connection.
fn process(shared: &Shared, ticket: Ticket) -> Result<Reply, Close> {
    let Ticket {
        seq,
        mut entry,
        action,
        region,
        params,
        fault,
        async_fails,
        ..
    } = ticket;
    let mut inner = shared.lock();
    let now = Instant::now();
    inner.fleet.settle(now);
    if action == Action::DescribeInstances
        && params
            .as_ref()
            .is_ok_and(|p| !p.contains_key("InstanceIds"))
    {
        shared.churn(&mut inner, &region, now);
    }
    let validated = params.and_then(|p| actions::validate(action, &p, &inner.fleet, &region));
    let validated = match validated {
        Ok(v) => v,
        Err(err) => return Ok(inner.reply(seq, entry, Err(err))),
    };
    if let Some(fault) = fault {
        if let Some((code, message)) = fault.error() {
            return Ok(inner.reply(seq, entry, Err(ApiError::new(code, message))));
        }
        if fault == Fault::DropBefore {
            entry.code = Some(DROPPED_BEFORE_APPLY.to_string());
            entry.dropped = true;
            inner.recorder.record(seq, entry);
            return Err(Close::Fault);
        }
    }
    // Drawn whatever the outcome, so one request's fate does not shift the next one's.
    let (power_draws, start_refused) = match &validated {
        actions::Validated::Stop { instances, .. } => {
            (draws(&mut inner.power_rng, instances.len()), false)
        }
        actions::Validated::Start { instances } => {
            let refused = inner.power_rng.random::<f64>() < shared.config.power.start_error;
            (draws(&mut inner.power_rng, instances.len()), refused)
        }
        _ => (Vec::new(), false),
    };
    // The RequestId exists before the change: the operation it starts carries it.
    let acceptance = Acceptance {
        request_id: new_request_id(),
        operation_time: shared.config.operation_time,
        fails: async_fails,
        power: shared.config.power,
        power_draws,
        start_refused,
    };
    let result = actions::execute(&validated, &mut inner.fleet, &region, now, &acceptance);
    if let Ok(done) = &result {
        entry.applied = done.applied;
        entry.operation_failed = done.applied && async_fails;
    }
    if fault == Some(Fault::DropAfter) {
        entry.code = result.err().map(|e| e.code);
        entry.dropped = true;
        inner.recorder.record(seq, entry);
        return Err(Close::Fault);
    }
    Ok(inner.reply_as(
        seq,
        entry,
        result.map(|done| done.data),
        acceptance.request_id,
    ))
}

/// `n` uniform draws in 0..1.
fn draws(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random()).collect()
}

impl Inner {
    /// Records the request with a fresh RequestId and builds its reply.
    fn reply(
        &mut self,
        seq: u64,
        entry: JournalEntry,
        result: Result<Map<String, Value>, ApiError>,
    ) -> Reply {
        self.reply_as(seq, entry, result, new_request_id())
    }

    /// Records the request and builds its reply, with `request_id`.
    fn reply_as(
        &mut self,
        seq: u64,
        mut entry: JournalEntry,
        result: Result<Map<String, Value>, ApiError>,
        request_id: String,
    ) -> Reply {
        entry.code = result.as_ref().err().map(|e| e.code.clone());
        entry.request_id = Some(request_id.clone());
        if let Err(err) = &result {
            tracing::debug!(action = %entry.action, code = %err.code, "sim reply");
        }
        self.recorder.record(seq, entry);
        api_reply(StatusCode::OK, result, &request_id)
    }
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The API 3.0 reply envelope; errors too are HTTP 200, like the real API.
fn api_reply(
    status: StatusCode,
    result: Result<Map<String, Value>, ApiError>,
    request_id: &str,
) -> Reply {
    let mut response = match result {
        Ok(mut data) => {
            data.insert("RequestId".into(), json!(request_id));
            json!({ "Response": data })
        }
        Err(err) => json!({
            "Response": {
                "Error": { "Code": err.code, "Message": err.message },
                "RequestId": request_id,
            }
        }),
    };
    json_reply(status, &mut response)
}

fn json_reply(status: StatusCode, value: &mut Value) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    // Exactly this value: with "; charset=utf-8" the Python SDK takes errors for success.
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The unsigned endpoints, for tests and rehearsals: `GET /_sim/state`, `/_sim/stats`,
/// `/_sim/journal?after=SEQ&limit=N` (one page), `/_sim/power?after=SEQ&limit=N` (one
/// page of the power timeline), `/_sim/rate`; `POST /_sim/rate`
/// with `{"rate": N}` changes the limit.
fn observe(shared: &Shared, parts: &hyper::http::request::Parts, body: &[u8]) -> Reply {
    let path = parts.uri.path();
    if path == "/_sim/rate" && parts.method == Method::POST {
        return set_rate(shared, body);
    }
    if parts.method != Method::GET {
        return json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &mut json!({ "error": "the /_sim/ endpoints answer GET only (and POST /_sim/rate)" }),
        );
    }
    let mut value = match path {
        "/_sim/state" => serde_json::to_value(shared.snapshot()),
        "/_sim/journal" => match page_query(parts.uri.query().unwrap_or("")) {
            Ok((after, limit)) => serde_json::to_value(shared.journal_page(after, limit)),
            Err(message) => {
                return json_reply(StatusCode::BAD_REQUEST, &mut json!({ "error": message }));
            }
        },
        "/_sim/power" => match page_query(parts.uri.query().unwrap_or("")) {
            Ok((after, limit)) => serde_json::to_value(shared.power_page(after, limit)),
            Err(message) => {
                return json_reply(StatusCode::BAD_REQUEST, &mut json!({ "error": message }));
            }
        },
        "/_sim/stats" => serde_json::to_value(shared.stats()),
        "/_sim/rate" => Ok(json!({ "rate": shared.rate() })),
        _ => {
            return json_reply(
                StatusCode::NOT_FOUND,
                &mut json!({ "error": "try /_sim/state, /_sim/journal, /_sim/power, /_sim/stats or /_sim/rate" }),
            );
        }
    }
    .unwrap_or(Value::Null);
    json_reply(StatusCode::OK, &mut value)
}

/// `after` (default 0: from the oldest retained) and `limit` (default and cap
/// [`MAX_PAGE_ENTRIES`]) of a journal page.
fn page_query(query: &str) -> Result<(u64, usize), String> {
    let mut after = 0;
    let mut limit = MAX_PAGE_ENTRIES;
    for (name, value) in parse_query(query) {
        let number = || {
            value.trim().parse::<u64>().map_err(|_| {
                format!(
                    "{name}={} is not a whole number",
                    crate::ids::shorten(&value)
                )
            })
        };
        match name.as_str() {
            "after" => after = number()?,
            "limit" => limit = usize::try_from(number()?).unwrap_or(usize::MAX),
            other => {
                return Err(format!(
                    "unknown parameter {:?}: use after and limit",
                    crate::ids::shorten(other)
                ));
            }
        }
    }
    Ok((after, limit))
}

/// `POST /_sim/rate` with `{"rate": N}` (0: unlimited).
fn set_rate(shared: &Shared, body: &[u8]) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RateBody {
        rate: u32,
    }
    match serde_json::from_slice::<RateBody>(body) {
        Ok(RateBody { rate }) => {
            shared.set_rate(rate);
            json_reply(StatusCode::OK, &mut json!({ "rate": rate }))
        }
        Err(err) => json_reply(
            StatusCode::BAD_REQUEST,
            &mut json!({ "error": format!("the body must be {{\"rate\": N}} with N a whole number of requests per second: {err}") }),
        ),
    }
}
