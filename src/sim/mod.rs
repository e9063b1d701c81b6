//! `keyfleet sim`: a local stand-in for the CVM API, a real HTTP server on loopback.
//!
//! It checks TC3 signatures with [`crate::sign::verify`], validates parameters in
//! the real API's order, applies key unbinds all-or-nothing over a simulated fleet,
//! limits each (Host, action, SecretId) to `rate` requests in any sliding second, as
//! Tencent Cloud counts its limit per access endpoint, and injects seeded
//! faults (error codes, connections dropped before or after applying), so rehearsals
//! and tests meet what a bulk run meets in production.
//!
//! - `fleet`: the fleet file format, seeded generation, the live state.
//! - `server`: hyper, the protocol, signature checks, the request pipeline.
//! - `actions`: parameter validation, the instance-state codes, the changes.
//! - `incident`: key pairs' public keys and images (ImportKeyPair, DeleteKeyPairs), launch
//!   templates and the `as` service's launch configurations, in the fleet file too.
//!
//! Every service is served on the one port: a request is verified with the service its
//! signature's credential scope names, and its action and version must be that service's.
//! - `faults`, `limiter`, `journal`: injected failures, the sliding window, the records.
//! - `power`: StopInstances, StartInstances and ForceStop as timed steps, the power
//!   faults, and the timeline of every instance's state (`SimHandle::power_timeline`).
//! - `churn`: a fleet that changes while it is listed (instances created and terminated
//!   on a seeded schedule counted in pages), as under Auto Scaling.
//!
//! Key-pair operations are asynchronous, as on the cloud: an accepted Associate or
//! Disassociate puts each of its instances in `LatestOperationState` `OPERATING` for
//! [`SimConfig::operation_time`]; the keys change when it completes (`SUCCESS`), or
//! never when it fails (`FAILED`, [`SimConfig::async_fail`]). Stops and starts are
//! asynchronous too (RUNNING -> STOPPING -> STOPPED, STOPPED -> STARTING -> RUNNING, in
//! [`Power::stop_time`] and [`Power::start_time`]), and a key-pair request with
//! `ForceStop=true` on a RUNNING instance stops it hard, changes the keys, and starts it
//! again (or not: [`ForceStopReading`]).
//!
//! Time: latency, jitter, settling states, busy windows, operations, the rate limit and
//! `JournalEntry::at_ms` all use tokio's clock (`tokio::time::Instant`), so paused-time
//! tests can drive them. Only the signature's timestamp check uses the wall clock.

pub mod accounts;
mod actions;
pub mod audit;
mod call;
mod churn;
pub mod closing;
mod faults;
mod fleet;
mod holdings;
pub mod incident;
mod instance;
mod journal;
mod limiter;
mod power;
mod request;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use churn::{Change, Churn};
pub use faults::Faults;
pub use fleet::{Fleet, Instance, InstanceState, Mix, Os};
pub use incident::{KeyPair, LaunchConfiguration, LaunchTemplate, TemplateVersion};
pub use journal::{
    DEFAULT_JOURNAL_CAPACITY, DROPPED_AFTER_APPLY, DROPPED_BEFORE_APPLY, JournalEntry, JournalPage,
    MAX_PAGE_ENTRIES, SUCCESS, Stats,
};
pub use limiter::WINDOW as RATE_WINDOW;
pub use power::{
    DEFAULT_POWER_CAPACITY, ForceStopReading, MAX_POWER_PAGE, Power, PowerEvent, PowerPage,
};

use crate::secret::Secret;

/// The CVM API version and service name (every service's are in [`crate::cvm::Service`]).
pub use crate::cvm::{API_VERSION, SERVICE};
/// The real API's limit for the key-pair actions, per access endpoint, action and SecretId.
pub const DEFAULT_RATE_PER_SECOND: u32 = 10;
/// How long a connection may take to send a request head (from connecting, or from
/// the previous reply: idle keep-alive connections end after it too).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may take to arrive once its head has.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once; past it the simulator stops accepting until one ends.
/// keyfleet's `--concurrency` goes to 1000: those beyond wait, they do not fail.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// How long a transitional state (STOPPING, PENDING, ...) lasts when the fleet does not say.
pub const DEFAULT_SETTLE_AFTER: Duration = Duration::from_secs(1);
/// The SecretId of [`SimConfig::default`]; fake, for tests.
pub const TEST_SECRET_ID: &str = "AKIDkeyfleetSIMULATOR0000000000000000";
/// The SecretKey of [`SimConfig::default`]; fake, for tests.
pub const TEST_SECRET_KEY: &str = "keyfleetSimulatorTestKey00000000";

/// Every error code the simulator can reply with, each a row of [`crate::taxonomy::CODES`]
/// (a test walks the simulator's source to keep this list complete). The journal-only
/// outcomes [`DROPPED_BEFORE_APPLY`] and [`DROPPED_AFTER_APPLY`] are never sent.
pub const REPLY_CODES: &[&str] = &[
    // Protocol and signature (server.rs, sign.rs), and a denied action.
    "AuthFailure.InvalidAuthorization",
    "AuthFailure.SecretIdNotFound",
    "AuthFailure.SignatureExpire",
    "AuthFailure.SignatureFailure",
    "InvalidAction",
    "InvalidRequest",
    "NoSuchVersion",
    "RequestLimitExceeded",
    "RequestSizeLimitExceeded",
    "UnauthorizedOperation",
    "UnsupportedProtocol",
    "UnsupportedRegion",
    // Parameters (actions.rs).
    "InvalidInstanceId.Malformed",
    "InvalidInstanceId.NotFound",
    "InvalidKeyPairId.Malformed",
    "InvalidKeyPairId.NotFound",
    "InvalidParameter",
    "InvalidParameterCombination",
    "InvalidParameterValue",
    "InvalidParameterValue.LimitExceeded",
    "MissingParameter",
    "UnknownParameter",
    // Instances (actions.rs) and injected faults (faults.rs, power.rs).
    "InternalServerError",
    "ResourceInsufficient",
    "InvalidInstance.NotSupported",
    "MutexOperation.TaskRunning",
    "OperationDenied.InstanceOperationInProgress",
    "UnsupportedOperation.InstanceOsWindows",
    "UnsupportedOperation.InstanceStateBanning",
    "UnsupportedOperation.InstanceStateEnterRescueMode",
    "UnsupportedOperation.InstanceStateFreezing",
    "UnsupportedOperation.InstanceStatePending",
    "UnsupportedOperation.InstanceStateRebooting",
    "UnsupportedOperation.InstanceStateRescueMode",
    "UnsupportedOperation.InstanceStateRunning",
    "UnsupportedOperation.InstanceStateShutdown",
    "UnsupportedOperation.InstanceStateStarting",
    "UnsupportedOperation.InstanceStateStopped",
    "UnsupportedOperation.InstanceStateStopping",
    "UnsupportedOperation.InstanceStateTerminating",
    "UnsupportedOperation.StoppedModeStopCharging",
    // Key pairs, launch templates, launch configurations (incident.rs).
    "InvalidParameterValue.KeyPairNotSupported",
    "InvalidKeyPair.NotSupported",
    "InvalidPublicKey.Malformed",
    "InvalidPublicKey.Duplicate",
    "InvalidKeyPairName.Duplicate",
    "InvalidKeyPair.LimitExceeded",
    "InvalidParameterValue.LaunchTemplateIdMalformed",
    "InvalidParameterValue.LaunchTemplateIdNotExisted",
    "InvalidParameterValue.LaunchTemplateIdVerNotExisted",
    "LimitExceeded.LaunchTemplateVersionQuota",
    "InvalidParameterValue.InvalidLaunchConfigurationId",
    "ResourceNotFound.LaunchConfigurationIdNotFound",
];

/// How the simulator behaves. `Debug` never shows the SecretKey.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The one SecretId accepted; any other gets AuthFailure.SecretIdNotFound.
    pub secret_id: String,
    pub secret_key: Secret,
    /// Admitted requests per (Host header, action, SecretId) in any sliding second;
    /// 0 means unlimited. [`SimHandle::set_rate`] changes it while running.
    pub rate: u32,
    /// Each request waits a random 0..=jitter before the rate limiter sees it.
    pub jitter: Duration,
    /// Processing time after admission, uniform in (low, high).
    pub latency: (Duration, Duration),
    pub faults: Faults,
    /// Seeds faults, jitter and latency: the same seed and requests give the same outcomes.
    pub seed: u64,
    /// Default time until a transitional state settles (an instance's `settle_after_ms` wins).
    pub settle_after: Duration,
    /// How long an accepted Associate/Disassociate stays `OPERATING` before it completes
    /// and the keys change; zero completes it at once (`SUCCESS` in the reply's instant).
    pub operation_time: Duration,
    /// Probability (0..=1) that an accepted Associate/Disassociate ends `FAILED` with the
    /// keys unchanged: the reply still succeeds, as a RequestId only means accepted.
    /// Drawn once per admitted request from its own seeded stream, so turning it on does
    /// not change which requests get the other faults.
    pub async_fail: f64,
    /// Actions this SecretId may not call: answered `UnauthorizedOperation` (a
    /// sub-account allowed to unbind but not to describe, for instance).
    pub denied_actions: Vec<crate::cvm::Action>,
    /// Time allowed for a request head (see [`DEFAULT_HEADER_TIMEOUT`]).
    pub header_timeout: Duration,
    /// Time allowed for a request body (see [`DEFAULT_BODY_TIMEOUT`]).
    pub body_timeout: Duration,
    /// Connections open at once, at least 1 (see [`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Journal entries kept; past it the oldest are dropped and counted in
    /// [`Stats::journal_dropped`] (the stats themselves count every request).
    pub journal_capacity: usize,
    /// Stops and starts: their times, what ForceStop does, the power faults.
    pub power: Power,
    /// A fleet that changes while it is listed (instances created and terminated on
    /// a seeded schedule, see [`churn`]); `None`: it changes only by the API's actions.
    pub churn: Option<Churn>,
}

impl Default for SimConfig {
    /// Fixed test credentials, rate 10, no faults, no latency or jitter.
    fn default() -> SimConfig {
        SimConfig {
            secret_id: TEST_SECRET_ID.to_string(),
            secret_key: Secret::new(TEST_SECRET_KEY),
            rate: DEFAULT_RATE_PER_SECOND,
            jitter: Duration::ZERO,
            latency: (Duration::ZERO, Duration::ZERO),
            faults: Faults::default(),
            seed: 0,
            settle_after: DEFAULT_SETTLE_AFTER,
            operation_time: Duration::ZERO,
            async_fail: 0.0,
            denied_actions: Vec::new(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            journal_capacity: DEFAULT_JOURNAL_CAPACITY,
            power: Power::default(),
            churn: None,
        }
    }
}

impl SimConfig {
    /// Checks probabilities and the latency range.
    pub fn validate(&self) -> Result<(), SimError> {
        self.faults.validate()?;
        self.power.validate()?;
        if !(0.0..=1.0).contains(&self.async_fail) {
            return Err(SimError::Config(format!(
                "fault probability async_fail = {} is not between 0 and 1",
                self.async_fail
            )));
        }
        if self.latency.0 > self.latency.1 {
            return Err(SimError::Config(format!(
                "latency range {:?}..{:?} ends before it starts",
                self.latency.0, self.latency.1
            )));
        }
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() {
            return Err(SimError::Config(
                "the header and body timeouts must be more than zero".to_string(),
            ));
        }
        if self.max_connections == 0 || self.journal_capacity == 0 {
            return Err(SimError::Config(
                "max_connections and journal_capacity must be at least 1".to_string(),
            ));
        }
        if self.churn.is_some_and(|churn| churn.every == 0) {
            return Err(SimError::Config(
                "the churn schedule needs a change every 1 or more pages".to_string(),
            ));
        }
        if self.secret_id.is_empty() || self.secret_key.expose().is_empty() {
            return Err(SimError::Config(
                "the SecretId and SecretKey must not be empty".to_string(),
            ));
        }
        Ok(())
    }
}

/// Why the simulator could not start or load a fleet.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read fleet file {path}: {source}")]
    ReadFleet {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fleet file {path}: {message}")]
    FleetFile { path: PathBuf, message: String },
    #[error("invalid fleet: {0}")]
    InvalidFleet(String),
    #[error("invalid simulator settings: {0}")]
    Config(String),
    #[error("cannot use the listener: {0}")]
    Listener(std::io::Error),
}

/// Starts serving on `listener` in the background. Returns once the server accepts.
pub async fn start(
    listener: TcpListener,
    config: SimConfig,
    fleet: Fleet,
) -> Result<SimHandle, SimError> {
    config.validate()?;
    fleet.validate()?;
    let addr = listener.local_addr().map_err(SimError::Listener)?;
    let shared = Arc::new(server::Shared::new(config, fleet));
    let (stop, stopped) = watch::channel(());
    let task = tokio::spawn(server::serve(listener, shared.clone(), stopped));
    tracing::info!(%addr, "simulator listening");
    Ok(SimHandle {
        addr,
        shared,
        stop: Some(stop),
        task: Some(task),
    })
}

/// A running simulator. Dropping it stops accepting; [`SimHandle::shutdown`] also waits.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    stop: Option<watch::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The base URL, e.g. `http://127.0.0.1:9000`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fleet now, in the fleet file format (settled states applied).
    pub fn fleet(&self) -> Fleet {
        self.shared.snapshot()
    }

    /// Changes the running fleet, e.g. an operator stopping an instance mid-run:
    /// `edit` gets the current fleet (as [`SimHandle::fleet`] returns it) and may change
    /// anything; the result is validated before it replaces the fleet.
    pub fn edit_fleet(&self, edit: impl FnOnce(&mut Fleet)) -> Result<(), SimError> {
        self.shared.edit(edit)
    }

    /// Disables the accepted SecretId (`true`) or enables it again: requests then fail
    /// with AuthFailure.SecretIdNotFound, as when a key is disabled mid-run.
    pub fn revoke_credentials(&self, revoked: bool) {
        self.shared.set_revoked(revoked);
    }

    /// The retained journal entries (the newest [`SimConfig::journal_capacity`]), in
    /// arrival order. For tests: a copy of the whole journal.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.shared.journal()
    }

    /// One page of the journal, as `GET /_sim/journal?after=SEQ&limit=N` returns it:
    /// entries in the order their requests finished, numbered from 1.
    pub fn journal_page(&self, after: u64, limit: usize) -> JournalPage {
        self.shared.journal_page(after, limit)
    }

    /// Every change of an instance's `InstanceState` so far, in time order: by a stop, a
    /// start or a ForceStop key-pair request (with its action and RequestId), or by the
    /// fleet itself (a settling state, an edit). The oldest past
    /// [`DEFAULT_POWER_CAPACITY`] are dropped ([`SimHandle::power_dropped`] counts them).
    pub fn power_timeline(&self) -> Vec<PowerEvent> {
        self.shared.power_timeline()
    }

    /// One page of the power timeline, as `GET /_sim/power?after=SEQ&limit=N` returns
    /// it: events numbered from 1 in time order.
    pub fn power_page(&self, after: u64, limit: usize) -> PowerPage {
        self.shared.power_page(after, limit)
    }

    /// Power events dropped from the timeline (an audit of a longer run is incomplete).
    pub fn power_dropped(&self) -> u64 {
        self.shared.power_dropped()
    }

    /// Changes the rate limit of every limiter key from now on (0: unlimited), as
    /// `POST /_sim/rate` with `{"rate": N}` does.
    pub fn set_rate(&self, rate: u32) {
        self.shared.set_rate(rate);
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// What the churn schedule ([`SimConfig::churn`]) has changed so far, in order.
    pub fn fleet_changes(&self) -> Vec<Change> {
        self.shared.fleet_changes()
    }

    /// Stops accepting, closes open connections, and waits for the server task.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        // Dropping the sender ends the accept loop, which then closes its connections.
        self.stop.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::VerifyError;
    use crate::taxonomy;

    /// The string literals that open the calls `opener` starts in `source`, and how many
    /// such calls open with something else (a code computed at run time).
    fn literal_args(source: &str, opener: &str) -> (Vec<String>, usize) {
        let mut literals = Vec::new();
        let mut computed = 0;
        for (at, _) in source.match_indices(opener) {
            let rest = source[at + opener.len()..].trim_start();
            match rest.strip_prefix('"').and_then(|r| r.split_once('"')) {
                Some((literal, _)) => literals.push(literal.to_string()),
                None => computed += 1,
            }
        }
        (literals, computed)
    }

    /// Every code the simulator's source can reply with is in [`REPLY_CODES`], and every
    /// one of those is a row of the taxonomy (not the unknown-code fallback).
    #[test]
    fn every_reply_code_is_in_the_taxonomy() {
        let actions = include_str!("actions.rs");
        let server = include_str!("server.rs");
        let faults = include_str!("faults.rs");
        let incident = include_str!("incident.rs");
        let others = [
            include_str!("call.rs"),
            include_str!("request.rs"),
            include_str!("holdings.rs"),
        ];
        let mut found = Vec::new();
        let mut computed = 0;
        for source in [actions, server, incident].into_iter().chain(others) {
            let (literals, dynamic) = literal_args(source, "ApiError::new(");
            found.extend(literals);
            computed += dynamic;
        }
        // The computed sites: the `unsupported` helper, the signature check, the fault
        // reply. A new one must be walked here too.
        assert_eq!(
            computed, 3,
            "a new computed ApiError code site: walk it here"
        );
        let (states, _) = literal_args(actions, "unsupported(");
        assert!(states.len() >= 12, "{states:?}");
        found.extend(states.iter().map(|s| format!("UnsupportedOperation.{s}")));
        let (fault_codes, _) = literal_args(faults, "Some((");
        assert_eq!(fault_codes.len(), 3, "{fault_codes:?}");
        found.extend(fault_codes);
        found.extend(
            [
                VerifyError::MissingAuthorization,
                VerifyError::MalformedAuthorization(String::new()),
                VerifyError::BadTimestamp,
                VerifyError::Expired { skew_secs: 0 },
                VerifyError::UnknownSecretId,
                VerifyError::BadSignature,
            ]
            .iter()
            .map(|e| e.code().to_string()),
        );
        for code in &found {
            assert!(
                REPLY_CODES.contains(&code.as_str()),
                "the simulator can reply {code}, which REPLY_CODES does not list"
            );
        }
        for code in REPLY_CODES {
            assert!(
                found.iter().any(|f| f == code),
                "REPLY_CODES lists {code}, which the simulator never replies"
            );
            assert!(
                taxonomy::CODES.iter().any(|rule| rule.code == *code),
                "{code} has no row in taxonomy::CODES (it would fall back to {})",
                taxonomy::classify(crate::cvm::Action::DisassociateInstancesKeyPairs, code).class
            );
        }
    }
}
