//! What a run of the executor is given (limits, the stop signal) and what it returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::delay;
use crate::store::StoreError;
use crate::store::queue::{LeaseError, PairCounts};

use super::THROTTLE_BUDGET;

/// The `--max-errors` threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxErrors {
    Pairs(u64),
    Percent(f64),
}

impl std::str::FromStr for MaxErrors {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("--max-errors takes a count (50) or a percentage (5%), not {s:?}");
        match s.strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad());
                }
                Ok(MaxErrors::Percent(p))
            }
            None => s.trim().parse().map(MaxErrors::Pairs).map_err(|_| bad()),
        }
    }
}

/// How the executor behaves.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Key-pair operations per second at most, per limiter key; every other API at
    /// its documented limit. 0 turns pacing off for all.
    pub rate: f64,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Retry-class failures a job may have before its pairs fail.
    pub max_attempts: u32,
    /// Stop dispatching once this many pairs have failed in this invocation.
    pub max_errors: Option<MaxErrors>,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub throttle_delay: Duration,
    /// Seed for retry jitter; `None` draws one.
    pub seed: Option<u64>,
    /// Send only jobs of this action (verification sends no key-pair operation);
    /// `None` sends every job of the run.
    pub only: Option<crate::cvm::Action>,
    /// How long the API may throttle every reply in a row before the run stops
    /// (resumable): a lasting `RequestLimitExceeded` must not retry forever.
    pub throttle_budget: Duration,
    /// How long a rotation's confirmation looks again at an instance whose Associate
    /// is still OPERATING before its old keys are kept (`--verify-wait`).
    pub confirm_wait: Duration,
    /// A run over several accounts: a Fatal refusal stops only the account of the job
    /// it answered (its credentials or role are at fault), not the run. The other
    /// accounts go on; the run ends stopped ([`StopReason::Accounts`]), resumable.
    pub isolate_accounts: bool,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            rate: 10.0,
            concurrency: 20,
            max_attempts: 10,
            max_errors: None,
            retry_base: delay::RETRY_BASE,
            retry_cap: delay::RETRY_CAP,
            throttle_delay: delay::THROTTLE_DELAY,
            seed: None,
            only: None,
            throttle_budget: THROTTLE_BUDGET,
            confirm_wait: Duration::from_secs(60),
            isolate_accounts: false,
        }
    }
}

/// Live numbers for progress displays; updated by the executor, read by anyone.
#[derive(Debug, Default)]
pub struct Counters {
    /// Valid pairs of the run.
    pub total_pairs: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Requests sent by this process.
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    /// Jobs waiting to be retried (after a Retry- or Throttle-class reply).
    pub retrying: AtomicU64,
    /// Retry-class failures.
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    /// Jobs split for isolation.
    pub splits: AtomicU64,
    /// Pair verdicts recorded by verification batches.
    pub verified: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why a run stopped before finishing; each is resumable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A Fatal-class error: nothing can succeed until a person acts.
    Fatal {
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// `--max-errors` was reached.
    MaxErrors { failed: u64 },
    /// Ctrl-C or another stop request.
    Interrupted,
    /// Another process took the run over (our heartbeat was stale).
    LeaseLost,
    /// Every reply was a throttle for longer than the budget: someone else is using
    /// the account's limit, or it was lowered.
    ThrottledTooLong { budget: Duration },
    /// A bug in keyfleet; what was recorded stays consistent and resume continues.
    Internal(String),
    /// A run over several accounts finished what it could: these accounts were
    /// refused (their jobs wait for `resume`), the others' work is done.
    Accounts(Vec<AccountFailure>),
}

/// An account whose work stopped on a Fatal refusal (`ExecConfig::isolate_accounts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFailure {
    /// `None`: the run's own account (rows without an account).
    pub account: Option<String>,
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

impl AccountFailure {
    /// How the account is named to a person.
    pub fn name(&self) -> &str {
        crate::ids::account_shown(self.account.as_deref())
    }
}

impl std::fmt::Display for AccountFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "account {}: {}: {}",
            self.name(),
            self.code,
            self.message
        )?;
        if let Some(id) = &self.request_id {
            write!(f, " (RequestId {id})")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Fatal {
                code,
                message,
                request_id,
            } => {
                write!(f, "fatal API error {code}: {message}")?;
                if let Some(id) = request_id {
                    write!(f, " (RequestId {id})")?;
                }
                Ok(())
            }
            StopReason::MaxErrors { failed } => {
                write!(f, "--max-errors reached: {failed} pairs failed")
            }
            StopReason::Interrupted => f.write_str("interrupted"),
            StopReason::LeaseLost => f.write_str("another process took this run over"),
            StopReason::ThrottledTooLong { budget } => write!(
                f,
                "the API throttled every request for {} s (RequestLimitExceeded): another sender \
                 may be using this account's limit; resume when it has stopped",
                budget.as_secs()
            ),
            StopReason::Internal(what) => write!(f, "internal error: {what}"),
            StopReason::Accounts(failures) => {
                let names: Vec<&str> = failures.iter().map(AccountFailure::name).collect();
                write!(
                    f,
                    "{} account(s) refused, their work waits (keyfleet resume): {}",
                    failures.len(),
                    names.join(", ")
                )
            }
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run_id: i64,
    /// `None` when the run finished; otherwise why it stopped.
    pub stopped: Option<StopReason>,
    /// Unbind pairs (the input's) by status.
    pub pairs: PairCounts,
    /// A rotation's bind pairs (instance, new key) by status.
    pub binds: PairCounts,
    pub failures_by_code: BTreeMap<String, i64>,
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub splits: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// Requests per second achieved by this process.
    pub fn achieved_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// Execution failures: setup and storage, never a pair's outcome.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the database writer stopped: {0}")]
    Writer(String),
}

/// A request to stop dispatching (first Ctrl-C). Cloneable; any clone can trigger it.
#[derive(Debug, Clone)]
pub struct StopSignal {
    sender: Arc<watch::Sender<bool>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal {
            sender: Arc::new(watch::channel(false).0),
        }
    }
}

impl StopSignal {
    pub fn stop(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.sender.borrow()
    }

    /// Returns once a stop is requested.
    pub async fn stopped(&self) {
        let mut rx = self.sender.subscribe();
        // wait_for returns at once when already stopped; Err only if the sender is gone, which it is not.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}
