//! Request pacing: a strict governor limiter at the configured rate, and an
//! adaptive slowdown on top of it when the API throttles us.
//!
//! The executor sees only the [`Limiter`] interface: `reserve` a send slot under a
//! [`LimiterKey`] (action, access endpoint, SecretId: the scope of Tencent Cloud's
//! limit) and report `feedback` on the reply. [`LocalLimiter`] keeps one [`Pacer`] per
//! key in this process; [`DbLimiter`] shares the slots and the adaptive state of a
//! key through the database. Both run the same rule, [`Adaptive`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cvm::Action;
use crate::store::pacer::{PacerDb, PacerKey, account_digest};
use crate::store::{Store, StoreError, now_ms};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Spacing is this much wider than `1 / rate`. The server counts arrivals, and
/// network jitter bunches requests: a client spaced at exactly 100 ms meets the
/// 10/s limit's edge, while 2.5% wider leaves 25 ms of slack per ten requests
/// (enough for the simulator's 20 ms jitter) and still delivers 9.75 of 10/s.
pub(crate) const RATE_MARGIN: f64 = 1.025;
/// Under a limit below the configured rate, the rate holds at this fraction of the
/// measured ceiling: at a ceiling of 5/s, five spacings span 1042 ms, 42 ms of slack
/// for jitter on top of the margin's 25 ms (at the ceiling itself jitter alone would
/// push a request over now and then, and every throttle costs a lowering).
const HOLD_FRACTION: f64 = 0.96;
/// A probe (one request beyond the ceiling) is due this long after the throttle that
/// started the cycle. Only a probe can see that a limit went back up, and a probe at
/// a limit still in place costs exactly one throttle, so this interval trades the one
/// against the other: at 5/s, 60 s hold about 6-7 probes (2.3% of the requests
/// throttled), and a limit that returns is seen at most this long after (then a
/// second at the full rate: recovery within 8.5 + 0.3 + 1 s).
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(8_500);
/// The probe leaves this fraction of a spacing after the request before it: with
/// the window holding as many of ours as the ceiling, it is the one over the limit
/// if the limit has not moved, whatever the jitter.
const PROBE_GAP_FRACTION: f64 = 0.25;
/// A probe whose own reply cannot be told apart (feedback without a send time) and
/// that no throttle answered within this long has passed.
const PROBE_QUIET: Duration = Duration::from_secs(1);
/// Throttles without a send time within this long of the one that lowered the rate
/// belong to the same burst (with a send time, a throttle of a request sent before
/// the lowering is such an echo): they do not lower it again (nor, through the
/// database, in another process).
pub(crate) const THROTTLE_HOLD: Duration = Duration::from_secs(1);
/// The server's window: the limit counts arrivals in any sliding second.
const WINDOW_MS: i64 = 1000;
/// Arrivals follow sends by up to this much more than the one before (network
/// jitter): after a lowering, the next send waits for the window to drain plus this.
const ARRIVAL_SPREAD_MS: i64 = 25;
/// How long this rule remembers its own sends.
const SEND_MEMORY_MS: i64 = 2 * WINDOW_MS;
/// A reply's send time matches a recorded send within this (whole milliseconds, two clocks).
const SEND_MATCH_MS: i64 = 3;
/// A request that leaves at most this late after `ready` allowed it is spaced from
/// the moment it was due. Timer wake-ups and task scheduling make nearly every send
/// about a millisecond late; counted into the spacing, that cost 1% of the rate (9.65
/// instead of 9.75 requests/s at 10/s, measured). Any ten sends still span at least
/// ten spacings minus this, well inside the margin's 25 ms at 10/s.
const SEND_LATENESS_FORGIVEN: Duration = Duration::from_millis(2);
/// The slowest a throttled sender goes, as a fraction of the configured rate.
const MIN_RATE_FRACTION: f64 = 1.0 / 16.0;

/// Paces request starts: at most `rate` in any sliding second, slower after throttles.
#[derive(Debug)]
pub(crate) struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    adaptive: Adaptive,
    last_start: Option<Instant>,
}

impl Pacer {
    /// `rate` requests per second; 0 turns pacing off (engine benchmarks only).
    pub(crate) fn new(rate: f64) -> Pacer {
        let limiter = (rate > 0.0).then(|| {
            let period = Duration::from_secs_f64(RATE_MARGIN / rate);
            // with_period alone gives a burst of 1: strictly spaced starts, unlike
            // per_second(n), whose burst of n could put 2n-1 starts in one second.
            let quota =
                Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
            RateLimiter::direct(quota)
        });
        Pacer {
            limiter,
            state: Mutex::new(PacerState {
                adaptive: Adaptive::new(rate),
                last_start: None,
            }),
        }
    }

    /// How long after `last` the next request may start, and whether it is a probe.
    fn gap(state: &PacerState, now: i64) -> (Duration, bool) {
        let spacing = RATE_MARGIN / state.adaptive.rate(now);
        if state.adaptive.probe_due(now) {
            (Duration::from_secs_f64(spacing * PROBE_GAP_FRACTION), true)
        } else {
            (Duration::from_secs_f64(spacing), false)
        }
    }

    /// How long to wait now: for the spacing after the last start, and for the
    /// server's window to drain after a lowering. Zero when the request may leave.
    fn wait(state: &PacerState, now: Instant, now_unix: i64) -> (Duration, bool) {
        let (gap, probe) = Pacer::gap(state, now_unix);
        let spaced = match state.last_start {
            Some(last) if now < last + gap => last + gap - now,
            _ => Duration::ZERO,
        };
        let drained = state.adaptive.resume_at().map_or(Duration::ZERO, |at| {
            Duration::from_millis(at.saturating_sub(now_unix).max(0) as u64)
        });
        (spaced.max(drained), probe)
    }

    /// Waits until the next request may start.
    #[cfg(test)]
    pub(crate) async fn ready(&self) {
        let Some(limiter) = &self.limiter else { return };
        limiter.until_ready().await;
        // On top of the limiter, keep 1/current between the moments requests
        // actually left (see `sending`): a request held up between its permit and
        // its send (a busy machine) must not let the next one follow it closely,
        // since the server counts arrivals. While throttled, current < target.
        loop {
            let wait = Pacer::wait(&self.lock(), Instant::now(), now_ms()).0;
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// A request is leaving now; the next one is spaced from this moment, or from
    /// when this one was due if it is only slightly late (`SEND_LATENESS_FORGIVEN`). A request
    /// held up longer never lets the next one follow it closely.
    #[cfg(test)]
    pub(crate) fn sending(&self) {
        if self.limiter.is_none() {
            return;
        }
        let mut state = self.lock();
        let now = now_ms();
        let (gap, probe) = Pacer::gap(&state, now);
        state.last_start = Some(spaced_from(state.last_start, gap, Instant::now()));
        state.adaptive.sent(now, probe);
    }

    /// Waits for the next send slot and takes it, in one step: the slot's moment is
    /// what the next one is spaced from. Returns that moment.
    pub(crate) async fn reserve(&self) -> Instant {
        let Some(limiter) = &self.limiter else {
            return Instant::now();
        };
        limiter.until_ready().await;
        loop {
            let wait = {
                let mut state = self.lock();
                let now = Instant::now();
                let now_unix = now_ms();
                let (wait, probe) = Pacer::wait(&state, now, now_unix);
                if wait.is_zero() {
                    let (gap, _) = Pacer::gap(&state, now_unix);
                    state.last_start = Some(spaced_from(state.last_start, gap, now));
                    state.adaptive.sent(now_unix, probe);
                    return now;
                }
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// True when pacing is off (`rate` 0): requests start as fast as slots free up.
    #[cfg(test)]
    pub(crate) fn is_off(&self) -> bool {
        self.limiter.is_none()
    }

    /// The API said we are too fast: the rule of [`Adaptive`] lowers the rate.
    pub(crate) fn throttled(&self) {
        self.replied(None, false);
    }

    /// The reply to the request sent at `sent_at` (Unix ms, when known).
    pub(crate) fn replied(&self, sent_at: Option<i64>, passed: bool) {
        if self.limiter.is_none() {
            return;
        }
        let now = now_ms();
        let mut state = self.lock();
        if state.adaptive.replied(now, sent_at, passed).is_some() {
            tracing::info!(rate = state.adaptive.rate(now), "throttled: slowing down");
        }
    }

    /// The rate in force now, requests per second (0 when pacing is off).
    pub(crate) fn current_rate(&self) -> f64 {
        self.lock().adaptive.rate(now_ms())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The rate in force for a key configured at `max` (requests per second) under the
/// measured `ceiling`, the adaptive rule's level: `max` before any throttle and once
/// a probe found room again (`room`); otherwise [`HOLD_FRACTION`] of the ceiling,
/// never below `max` x 1/16. When to probe is [`Adaptive::probe_due`].
pub(crate) fn adaptive_rate(max: f64, ceiling: Option<f64>, room: bool) -> f64 {
    if max <= 0.0 {
        return 0.0;
    }
    match ceiling {
        Some(ceiling) if !room => (ceiling * HOLD_FRACTION).clamp(max * MIN_RATE_FRACTION, max),
        _ => max,
    }
}

/// The rate that is left, measured at a throttle from the server's own window: the
/// requests of ours that were not refused among those sent in the second before the
/// throttled one (`admitted`; a saturated sliding-window limit holds exactly that
/// many), in the rate's units (with [`RATE_MARGIN`]), divided by `share`, this
/// process's share of the key's slots (1 alone; processes sharing a database each
/// see only their part). It may exceed the rate in force (sends bunched by a busy
/// machine fill the window faster): the window, not our rate, is the measure. With
/// none admitted, half the rate in force.
pub(crate) fn ceiling_after_throttle(rate_in_force: f64, admitted: u32, share: f64) -> f64 {
    if admitted == 0 {
        return rate_in_force / 2.0;
    }
    let share = share.clamp(MIN_SHARE, 1.0);
    f64::from(admitted) * RATE_MARGIN / share
}

/// A share of the slots below this is not trusted (too few to count).
const MIN_SHARE: f64 = 0.05;

/// One request this rule let out: when (ms), whether it was the probe, and what its
/// reply said (`None` until it comes: counted as admitted meanwhile).
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: i64,
    probe: bool,
    passed: Option<bool>,
}

/// The adaptive rule's state for one key. Times are milliseconds on any clock the
/// caller keeps (Unix ms in the limiters, so that a reply's send time and the
/// database's throttles compare).
///
/// The cycle: before any throttle, `max`. A throttle measures the ceiling from the
/// server's window ([`ceiling_after_throttle`]), the next send waits until that window
/// has drained ([`Adaptive::resume_at`]) and the rate holds just under the ceiling. A
/// throttle of a request sent before that lowering is an echo of the same excess and
/// changes nothing. [`PROBE_INTERVAL`] after the cycle began, one request leaves early
/// (the probe): refused, it confirms the ceiling and starts the next cycle at the same
/// level; admitted, the limit has risen and the rate goes back to `max` (a lower limit
/// meets a throttle at once and is measured again).
#[derive(Debug, Clone)]
pub(crate) struct Adaptive {
    max: f64,
    ceiling: Option<f64>,
    /// When the cycle began: the throttle that set or confirmed the ceiling (shared).
    throttled_at: Option<i64>,
    /// When this rule last lowered the rate: requests sent before are echoes.
    lowered_at: Option<i64>,
    /// No send before this (the server's window is still full).
    resume_at: Option<i64>,
    /// When this cycle's probe left, if it did.
    probe_at: Option<i64>,
    /// The probe passed: the limit has risen.
    room: bool,
    /// A throttle at the configured rate's own edge: hold just under it until then.
    edge_until: Option<i64>,
    sends: VecDeque<Sent>,
    /// This process's share of the key's slots (1 when it paces alone).
    share: f64,
}

impl Adaptive {
    /// A key configured at `max` requests per second, not throttled yet.
    pub(crate) fn new(max: f64) -> Adaptive {
        Adaptive {
            max,
            ceiling: None,
            throttled_at: None,
            lowered_at: None,
            resume_at: None,
            probe_at: None,
            room: false,
            edge_until: None,
            sends: VecDeque::new(),
            share: 1.0,
        }
    }

    /// This process's share of the key's recent slots, when several processes take them.
    pub(crate) fn set_share(&mut self, share: f64) {
        self.share = share;
    }

    /// The rate in force at `now_ms`.
    pub(crate) fn rate(&self, now_ms: i64) -> f64 {
        if self.ceiling.is_none() && self.edge_until.is_some_and(|until| now_ms < until) {
            return adaptive_rate(self.max, Some(self.max), false);
        }
        adaptive_rate(self.max, self.ceiling, self.has_room(now_ms))
    }

    /// A probe passed, or (replies without a send time) no throttle answered it.
    fn has_room(&self, now_ms: i64) -> bool {
        self.room
            || self
                .probe_at
                .is_some_and(|at| now_ms - at >= PROBE_QUIET.as_millis() as i64)
    }

    /// Whether the next request should be this cycle's probe: a ceiling holds, the
    /// cycle is [`PROBE_INTERVAL`] old and has not probed yet. The caller sends it
    /// [`PROBE_GAP_FRACTION`] of a spacing after the one before and says so to `sent`.
    pub(crate) fn probe_due(&self, now_ms: i64) -> bool {
        let (Some(_), Some(at)) = (self.ceiling, self.throttled_at) else {
            return false;
        };
        self.probe_at.is_none() && !self.room && now_ms - at >= PROBE_INTERVAL.as_millis() as i64
    }

    /// No request should leave before this (Unix ms): the window the last lowering
    /// measured is still full until then.
    pub(crate) fn resume_at(&self) -> Option<i64> {
        self.resume_at
    }

    /// A request left at `at_ms` (`probe`: as this cycle's probe).
    pub(crate) fn sent(&mut self, at_ms: i64, probe: bool) {
        if probe && self.probe_due(at_ms) {
            self.probe_at = Some(at_ms);
        }
        self.sends.push_back(Sent {
            at: at_ms,
            probe: probe && self.probe_at == Some(at_ms),
            passed: None,
        });
        while self
            .sends
            .front()
            .is_some_and(|s| s.at < at_ms - SEND_MEMORY_MS)
        {
            self.sends.pop_front();
        }
    }

    /// A reply that passed (send time unknown).
    #[cfg(test)]
    pub(crate) fn passed(&mut self, now_ms: i64) {
        self.replied(now_ms, None, true);
    }

    /// A throttle (send time unknown); see [`Adaptive::replied`].
    pub(crate) fn throttled(&mut self, now_ms: i64) -> Option<f64> {
        self.replied(now_ms, None, false)
    }

    /// The reply at `now_ms` to the request sent at `sent_at` (when known). Returns
    /// the ceiling when a throttle lowered the rate or confirmed it (a refused probe):
    /// the cycle restarts, which other processes sharing the key should adopt.
    pub(crate) fn replied(
        &mut self,
        now_ms: i64,
        sent_at: Option<i64>,
        passed: bool,
    ) -> Option<f64> {
        let index = sent_at.and_then(|sent| self.find(sent));
        let was_probe = index.is_some_and(|i| self.sends[i].probe);
        if let Some(i) = index {
            self.sends[i].passed = Some(passed);
        }
        if passed {
            if was_probe {
                self.room = true;
            }
            return None;
        }
        let probing = self.probe_at.is_some() && !self.room;
        let unknown_probe = index.is_none() && probing;
        if was_probe || unknown_probe {
            // The limit has not moved: same ceiling, the next cycle, no drain (a
            // refused request does not count in the server's window).
            self.probe_at = None;
            self.throttled_at = Some(now_ms);
            return self.ceiling;
        }
        let echo = match (sent_at, self.lowered_at) {
            (Some(sent), Some(lowered)) => sent < lowered,
            (None, Some(lowered)) => now_ms - lowered < THROTTLE_HOLD.as_millis() as i64,
            (_, None) => false,
        };
        if echo {
            return None;
        }
        let sent = sent_at.unwrap_or(now_ms);
        let admitted: Vec<i64> = self
            .sends
            .iter()
            .filter(|s| s.at > sent - WINDOW_MS && s.at < sent && s.passed != Some(false))
            .map(|s| s.at)
            .collect();
        let ceiling = ceiling_after_throttle(self.rate(now_ms), admitted.len() as u32, self.share);
        // The window drains when as many of ours as it held have aged out: the next
        // send waits for the oldest of the latest that many not refused.
        let held: Vec<i64> = self
            .sends
            .iter()
            .filter(|s| s.passed != Some(false))
            .map(|s| s.at)
            .collect();
        let capacity = ((ceiling * self.share / RATE_MARGIN).round() as usize).max(1);
        self.resume_at = held
            .len()
            .checked_sub(capacity)
            .map(|i| held[i] + WINDOW_MS + ARRIVAL_SPREAD_MS)
            .filter(|&at| at > now_ms);
        // A window that held as many as the configured rate sends is the configured
        // rate's own edge (jitter, a busy machine bunching sends), not a lower limit:
        // there is nothing to probe for. It holds just under the configured rate for a
        // probe interval (a busy machine stays busy a while), then goes back to it.
        self.ceiling = (ceiling < self.max).then_some(ceiling);
        self.edge_until = (ceiling >= self.max).then(|| now_ms + PROBE_INTERVAL.as_millis() as i64);
        self.throttled_at = Some(now_ms);
        self.lowered_at = Some(now_ms);
        self.probe_at = None;
        self.room = false;
        Some(ceiling)
    }

    /// The recorded send nearest `sent_at`, within [`SEND_MATCH_MS`].
    fn find(&self, sent_at: i64) -> Option<usize> {
        self.sends
            .iter()
            .enumerate()
            .map(|(i, s)| (i, (s.at - sent_at).abs()))
            .filter(|&(_, distance)| distance <= SEND_MATCH_MS)
            .min_by_key(|&(_, distance)| distance)
            .map(|(i, _)| i)
    }

    /// The shared state: the ceiling and when the throttle that set it came.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> (Option<f64>, Option<i64>) {
        (self.ceiling, self.throttled_at)
    }

    /// Takes the shared state as the database holds it: a throttle another process
    /// (or this one) recorded. `only_newer` keeps a lowering of ours not written yet.
    /// A newer cycle than ours (another process lowered or probed) restarts ours.
    pub(crate) fn adopt(
        &mut self,
        ceiling: Option<f64>,
        throttled_at: Option<i64>,
        only_newer: bool,
    ) {
        let newer = match (throttled_at, self.throttled_at) {
            (Some(theirs), Some(ours)) => theirs > ours,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newer {
            self.probe_at = None;
            self.room = false;
        }
        if newer || (!only_newer && throttled_at.is_some()) {
            // A ceiling at or above the configured rate is no ceiling (see `replied`).
            self.ceiling = ceiling.filter(|&c| c < self.max);
            self.edge_until = match (ceiling, throttled_at) {
                (Some(c), Some(at)) if c >= self.max => {
                    Some(at + PROBE_INTERVAL.as_millis() as i64)
                }
                _ => None,
            };
            self.throttled_at = throttled_at;
        }
    }
}

/// What a limiter is keyed by: Tencent Cloud counts each API per access region
/// (the endpoint a request reaches) and per sub-account (its SecretId).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimiterKey {
    pub action: Action,
    pub endpoint: String,
    pub secret_id: String,
}

/// What a reply says about the pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// The request went through (or failed for a reason other than the rate).
    Passed,
    /// `RequestLimitExceeded` for this key's API.
    Throttled,
    /// An account-wide limit (`RequestLimitExceeded.UinLimitExceeded`,
    /// `.GlobalRegionUinLimitExceeded`): every key of the SecretId slows down.
    ThrottledAccount,
}

impl Feedback {
    /// The feedback an error code gives (`Passed` for any non-throttle code).
    pub fn for_code(code: &str) -> Feedback {
        if !crate::taxonomy::is_throttle(code) {
            Feedback::Passed
        } else if matches!(
            code,
            "RequestLimitExceeded.UinLimitExceeded"
                | "RequestLimitExceeded.GlobalRegionUinLimitExceeded"
        ) {
            Feedback::ThrottledAccount
        } else {
            Feedback::Throttled
        }
    }
}

/// A future a limiter returns: resolves to the moment the slot was taken.
pub(crate) type Reservation<'a> = Pin<Box<dyn Future<Output = Instant> + Send + 'a>>;

/// Send slots per key, and the pace adjusted by feedback.
pub trait Limiter: Send + Sync {
    /// Waits for a send slot under `key` and takes it.
    fn reserve<'a>(&'a self, key: &'a LimiterKey) -> Reservation<'a>;
    /// What the reply to a request sent under `key` said about the pace.
    fn feedback(&self, key: &LimiterKey, feedback: Feedback) {
        self.feedback_sent(key, None, feedback);
    }
    /// The same, for the request sent at `sent_at` (Unix ms, the slot's moment) when
    /// known: the rule then tells a refused probe from an echo of an earlier excess.
    fn feedback_sent(&self, key: &LimiterKey, sent_at: Option<i64>, feedback: Feedback);
    /// True when `key` is not paced at all (engine benchmarks).
    fn is_off(&self, key: &LimiterKey) -> bool;
}

/// One [`Pacer`] per key, in this process, each at its action's rate.
#[derive(Debug)]
pub struct LocalLimiter {
    rate_for: fn(Action, f64) -> f64,
    configured: f64,
    pacers: Mutex<HashMap<LimiterKey, Arc<Pacer>>>,
}

impl LocalLimiter {
    /// Key-pair operations at `rate` per second (0: unpaced); every other action at
    /// its documented limit (also unpaced when `rate` is 0).
    pub fn new(rate: f64) -> LocalLimiter {
        LocalLimiter {
            rate_for: rate_for_action,
            configured: rate,
            pacers: Mutex::new(HashMap::new()),
        }
    }

    fn pacer(&self, key: &LimiterKey) -> Arc<Pacer> {
        let mut pacers = self.pacers.lock().unwrap_or_else(|e| e.into_inner());
        pacers
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Pacer::new((self.rate_for)(key.action, self.configured))))
            .clone()
    }

    /// The rate in force now for `key` (requests per second).
    pub fn current_rate(&self, key: &LimiterKey) -> f64 {
        self.pacer(key).current_rate()
    }
}

/// The rate an action is paced at when key-pair operations go at `configured`.
pub(crate) fn rate_for_action(action: Action, configured: f64) -> f64 {
    if configured <= 0.0 {
        0.0
    } else if action.is_key_pair_operation() {
        configured
    } else {
        f64::from(action.rate_limit())
    }
}

impl Limiter for LocalLimiter {
    fn reserve<'a>(&'a self, key: &'a LimiterKey) -> Reservation<'a> {
        let pacer = self.pacer(key);
        Box::pin(async move { pacer.reserve().await })
    }

    fn feedback_sent(&self, key: &LimiterKey, sent_at: Option<i64>, feedback: Feedback) {
        match feedback {
            Feedback::Passed => self.pacer(key).replied(sent_at, true),
            Feedback::Throttled => self.pacer(key).replied(sent_at, false),
            Feedback::ThrottledAccount => {
                let pacers: Vec<Arc<Pacer>> = {
                    let pacers = self.pacers.lock().unwrap_or_else(|e| e.into_inner());
                    pacers
                        .iter()
                        .filter(|(k, _)| k.secret_id == key.secret_id)
                        .map(|(_, p)| p.clone())
                        .collect()
                };
                for pacer in pacers {
                    pacer.throttled();
                }
            }
        }
    }

    fn is_off(&self, key: &LimiterKey) -> bool {
        (self.rate_for)(key.action, self.configured) <= 0.0
    }
}

/// Send slots shared by every keyfleet process on one database: one row per key in
/// the `pacer` table ([`crate::store::pacer`]), taken with one atomic statement per
/// request, and one adaptive rate per key, lowered once per burst of throttles
/// whichever process saw them. A key whose row is missing starts after the attempts
/// of its action sent in the last second (`attempts.sent_at`), so a process started
/// right after a `kill -9` continues after the dead one's last request either way.
///
/// Times are Unix milliseconds on the wall clock: the processes share one host. If
/// the database fails, a key falls back to pacing in this process ([`Pacer`]).
#[derive(Debug, Clone)]
pub struct DbLimiter {
    inner: Arc<DbInner>,
}

#[derive(Debug)]
struct DbInner {
    db: PacerDb,
    configured: f64,
    keys: Mutex<HashMap<LimiterKey, Arc<DbKey>>>,
}

#[derive(Debug)]
struct DbKey {
    row: PacerKey,
    action: Action,
    state: Mutex<DbKeyState>,
    /// Paces this key locally while the database cannot.
    fallback: Pacer,
}

#[derive(Debug)]
struct DbKeyState {
    adaptive: Adaptive,
    /// Whether this process has taken a slot of the key (and seeded a missing row).
    started: bool,
    /// This process's recent slots: when, and the key's slot count then.
    slots: VecDeque<(i64, i64)>,
}

/// A process's share of a key's slots is counted over this long.
const SHARE_WINDOW_MS: i64 = 2000;
/// How far back `attempts.sent_at` is read to seed a key without a row.
const SEED_WINDOW_MS: i64 = 1000;

impl DbLimiter {
    /// Key-pair operations at `rate` per second, every other action at its
    /// documented limit, shared through `store`'s database.
    pub async fn open(store: &Store, rate: f64) -> Result<DbLimiter, StoreError> {
        Ok(DbLimiter {
            inner: Arc::new(DbInner {
                db: PacerDb::open(store).await?,
                configured: rate,
                keys: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Closes the pacer's connection.
    pub async fn close(&self) {
        self.inner.db.close().await;
    }

    /// The rate in force now for `key` as this process sees it (requests per second).
    pub fn current_rate(&self, key: &LimiterKey) -> f64 {
        let key = self.inner.key(key);
        let state = key.lock();
        state.adaptive.rate(now_ms())
    }
}

impl DbInner {
    fn key(&self, key: &LimiterKey) -> Arc<DbKey> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.entry(key.clone())
            .or_insert_with(|| {
                let max = rate_for_action(key.action, self.configured);
                Arc::new(DbKey {
                    row: PacerKey {
                        action: key.action.to_string(),
                        endpoint: key.endpoint.clone(),
                        account: account_digest(&key.secret_id),
                    },
                    action: key.action,
                    state: Mutex::new(DbKeyState {
                        adaptive: Adaptive::new(max),
                        started: false,
                        slots: VecDeque::new(),
                    }),
                    fallback: Pacer::new(max),
                })
            })
            .clone()
    }

    /// Takes a slot of `key` from the database and waits for it.
    async fn take_slot(&self, key: &DbKey) -> Result<Instant, StoreError> {
        let started = key.lock().started;
        let mut seed_after = None;
        if !started && !self.db.exists(&key.row).await? {
            seed_after = self
                .db
                .last_sent(&key.action.to_string(), now_ms(), SEED_WINDOW_MS)
                .await?;
        }
        let now = unix_ms_f64();
        let (rate, probe, resume_at) = {
            let state = key.lock();
            let at = now as i64;
            (
                state.adaptive.rate(at),
                state.adaptive.probe_due(at),
                state.adaptive.resume_at(),
            )
        };
        let spacing_ms = 1000.0 * RATE_MARGIN / rate;
        // A probe leaves a fraction of a spacing after the slot before it.
        let pull_ms = if probe {
            spacing_ms * (1.0 - PROBE_GAP_FRACTION)
        } else {
            0.0
        };
        // sent_at is whole milliseconds, rounded down: one more keeps the spacing.
        let seed = seed_after.map(|sent| sent as f64 + 1.0 + spacing_ms);
        let earliest = resume_at.map_or(now, |at| now.max(at as f64));
        let slot = self
            .db
            .reserve(&key.row, earliest, spacing_ms, pull_ms, rate, seed)
            .await?;
        {
            let mut state = key.lock();
            state.started = true;
            state.adaptive.adopt(slot.ceiling, slot.throttled_at, true);
            // Own slots among all slots of the key over the last two seconds.
            let now = now as i64;
            state.slots.push_back((now, slot.number));
            while state
                .slots
                .front()
                .is_some_and(|(at, _)| *at < now - SHARE_WINDOW_MS)
            {
                state.slots.pop_front();
            }
            if let (Some(first), Some(last)) = (state.slots.front(), state.slots.back())
                && last.1 > first.1
            {
                let share = (state.slots.len() - 1) as f64 / (last.1 - first.1) as f64;
                state.adaptive.set_share(share);
            }
        }
        let wait_ms = slot.at_ms - unix_ms_f64();
        let mut at = if wait_ms > 0.0 {
            let at = Instant::now() + Duration::from_secs_f64(wait_ms / 1000.0);
            tokio::time::sleep_until(at.into()).await;
            at
        } else {
            Instant::now()
        };
        // A throttle while this slot was waiting may have found the window full:
        // then this request waits for it to drain too (and is late, below).
        let drained = key.lock().adaptive.resume_at();
        if let Some(wait_ms) = drained.map(|resume| resume as f64 - unix_ms_f64())
            && wait_ms > 0.0
        {
            tokio::time::sleep(Duration::from_secs_f64(wait_ms / 1000.0)).await;
            at = Instant::now();
        }
        let late_ms = unix_ms_f64() - slot.at_ms;
        let forgiven_ms = SEND_LATENESS_FORGIVEN.as_secs_f64() * 1000.0;
        let sent_at = now_ms() - at.elapsed().as_millis() as i64;
        // The slot was spaced at the rate before the lowering: the next one is
        // spaced at the rate in force now.
        let spacing_ms = if drained.is_some() {
            1000.0 * RATE_MARGIN / key.lock().adaptive.rate(sent_at)
        } else {
            spacing_ms
        };
        key.lock().adaptive.sent(sent_at, probe);
        if late_ms <= forgiven_ms {
            return Ok(at);
        }
        // Held up (a busy machine, a slow statement): the next slot, whoever takes
        // it, is spaced from when this request really leaves.
        let sent = unix_ms_f64();
        if let Err(error) = self
            .db
            .sent_late(&key.row, sent - forgiven_ms, spacing_ms)
            .await
        {
            tracing::warn!(%error, "pacer: could not record a late send");
        }
        Ok(Instant::now())
    }

    /// Writes a lowering of `key`'s rate, then takes the row's state as it is.
    async fn write_throttle(
        &self,
        key: Arc<DbKey>,
        ceiling: f64,
        at_ms: i64,
        resume_at: Option<i64>,
    ) {
        // Every process's next slot waits for the window the throttle measured to drain.
        if let Some(resume_at) = resume_at.filter(|&at| at > now_ms())
            && let Err(error) = self.db.sent_late(&key.row, resume_at as f64, 0.0).await
        {
            tracing::warn!(%error, "pacer: could not record a throttle");
        }
        let hold = THROTTLE_HOLD.as_millis() as i64;
        match self.db.throttled(&key.row, ceiling, at_ms, hold).await {
            Ok(shared) => {
                key.lock()
                    .adaptive
                    .adopt(shared.ceiling, shared.throttled_at, false);
            }
            Err(error) => tracing::warn!(%error, "pacer: could not record a throttle"),
        }
    }
}

impl DbKey {
    fn lock(&self) -> std::sync::MutexGuard<'_, DbKeyState> {
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The wall clock in Unix milliseconds, fractional.
fn unix_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

impl Limiter for DbLimiter {
    fn reserve<'a>(&'a self, key: &'a LimiterKey) -> Reservation<'a> {
        Box::pin(async move {
            if self.is_off(key) {
                return Instant::now();
            }
            let key = self.inner.key(key);
            match self.inner.take_slot(&key).await {
                Ok(at) => at,
                Err(error) => {
                    tracing::warn!(%error, "pacer: the database failed; pacing in this process");
                    key.fallback.reserve().await
                }
            }
        })
    }

    fn feedback_sent(&self, key: &LimiterKey, sent_at: Option<i64>, feedback: Feedback) {
        if self.is_off(key) {
            return;
        }
        let now = now_ms();
        match feedback {
            Feedback::Passed => {
                let db_key = self.inner.key(key);
                db_key.lock().adaptive.replied(now, sent_at, true);
                db_key.fallback.replied(sent_at, true);
            }
            Feedback::Throttled => {
                let db_key = self.inner.key(key);
                db_key.fallback.replied(sent_at, false);
                let (lowered, resume_at) = {
                    let mut state = db_key.lock();
                    let lowered = state.adaptive.replied(now, sent_at, false);
                    (lowered, state.adaptive.resume_at())
                };
                if let Some(ceiling) = lowered {
                    tracing::info!(ceiling, "throttled: slowing down");
                    let inner = self.inner.clone();
                    spawn_write(async move {
                        inner.write_throttle(db_key, ceiling, now, resume_at).await
                    });
                }
            }
            Feedback::ThrottledAccount => {
                let reporting = self.inner.key(key);
                let fraction = {
                    let mut state = reporting.lock();
                    let rate = state.adaptive.rate(now);
                    state
                        .adaptive
                        .replied(now, sent_at, false)
                        .map(|ceiling| ceiling / rate.max(f64::MIN_POSITIVE))
                };
                let account = reporting.row.account.clone();
                let others: Vec<Arc<DbKey>> = {
                    let keys = self.inner.keys.lock().unwrap_or_else(|e| e.into_inner());
                    keys.values()
                        .filter(|k| k.row.account == account)
                        .cloned()
                        .collect()
                };
                for other in &others {
                    other.fallback.throttled();
                    if !Arc::ptr_eq(other, &reporting) {
                        other.lock().adaptive.throttled(now);
                    }
                }
                if let Some(fraction) = fraction {
                    tracing::info!(fraction, "account throttled: slowing every API down");
                    let inner = self.inner.clone();
                    spawn_write(async move {
                        let hold = THROTTLE_HOLD.as_millis() as i64;
                        if let Err(error) = inner
                            .db
                            .throttled_account(&account, fraction, now, hold)
                            .await
                        {
                            tracing::warn!(%error, "pacer: could not record a throttle");
                        }
                    });
                }
            }
        }
    }

    fn is_off(&self, key: &LimiterKey) -> bool {
        rate_for_action(key.action, self.inner.configured) <= 0.0
    }
}

/// Feedback comes from synchronous code: its database write runs as its own task
/// (outside a runtime, only this process's view changes).
fn spawn_write(write: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(write);
    }
}

/// The moment the next request is spaced from, for a send at `now` after the
/// previous one counted from `last`.
fn spaced_from(last: Option<Instant>, spacing: Duration, now: Instant) -> Instant {
    match last.map(|last| last + spacing) {
        Some(due) if now > due => due.max(now - SEND_LATENESS_FORGIVEN),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_are_strictly_spaced() {
        let pacer = Pacer::new(50.0);
        let mut starts = Vec::new();
        for _ in 0..6 {
            pacer.ready().await;
            pacer.sending();
            starts.push(Instant::now());
        }
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 50.0) - SEND_LATENESS_FORGIVEN;
        for pair in starts.windows(2) {
            assert!(
                pair[1] - pair[0] >= min_gap,
                "gap {:?} < {min_gap:?}",
                pair[1] - pair[0]
            );
        }
    }

    #[test]
    fn a_little_lateness_is_forgiven_more_is_not() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let spacing = ms(100);
        assert_eq!(spaced_from(None, spacing, t0), t0);
        // A send a millisecond late (a timer's wake-up) does not push the next one back.
        assert_eq!(spaced_from(Some(t0), spacing, t0 + ms(101)), t0 + ms(100));
        // One held up 45 ms: the next is spaced from nearly when it really left.
        assert_eq!(
            spaced_from(Some(t0), spacing, t0 + ms(145)),
            t0 + ms(145) - SEND_LATENESS_FORGIVEN
        );
        // Early (the rate was lowered in between): from the send itself.
        assert_eq!(spaced_from(Some(t0), spacing, t0 + ms(60)), t0 + ms(60));
    }

    #[tokio::test]
    async fn a_send_held_up_is_not_followed_closely() {
        let pacer = Pacer::new(50.0);
        pacer.ready().await;
        pacer.sending();
        pacer.ready().await;
        tokio::time::sleep(Duration::from_millis(45)).await;
        // Read before the send is recorded: a thread descheduled in between makes the
        // gap look longer, never shorter (the test failed once under load otherwise).
        let late = Instant::now();
        pacer.sending();
        pacer.ready().await;
        let gap = late.elapsed();
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 50.0) - SEND_LATENESS_FORGIVEN;
        assert!(gap >= min_gap, "gap {gap:?} < {min_gap:?}");
    }

    #[test]
    fn the_rule_holds_under_the_ceiling_and_returns_to_the_configured_rate_once_there_is_room() {
        assert_eq!(adaptive_rate(10.0, None, false), 10.0, "no throttle yet");
        assert_eq!(adaptive_rate(0.0, Some(5.0), false), 0.0, "off stays off");
        assert!((adaptive_rate(10.0, Some(5.0), false) - 5.0 * HOLD_FRACTION).abs() < 1e-9);
        assert_eq!(
            adaptive_rate(10.0, Some(5.0), true),
            10.0,
            "a probe found room"
        );
        assert_eq!(
            adaptive_rate(10.0, Some(20.0), false),
            10.0,
            "never above max"
        );
        assert_eq!(
            adaptive_rate(10.0, Some(0.01), false),
            10.0 / 16.0,
            "floored at 1/16 of the configured rate"
        );
        assert_eq!(ceiling_after_throttle(10.0, 5, 1.0), 5.0 * RATE_MARGIN);
        assert_eq!(
            ceiling_after_throttle(10.0, 4, 0.5),
            8.0 * RATE_MARGIN,
            "half the slots: twice its admitted"
        );
        assert_eq!(
            ceiling_after_throttle(4.0, 5, 1.0),
            5.0 * RATE_MARGIN,
            "the window, not the rate in force"
        );
        assert_eq!(
            ceiling_after_throttle(8.0, 0, 1.0),
            4.0,
            "none admitted: halve"
        );
    }

    #[test]
    fn the_ceiling_is_what_the_window_admitted_and_echoes_change_nothing() {
        let mut rule = Adaptive::new(10.0);
        // Ten a second; the sixth is refused (a limit of 5) and so is the seventh,
        // sent before the first refusal came back.
        for n in 0..7 {
            rule.sent(n * 100, false);
        }
        for n in 0..5 {
            rule.replied(n * 100 + 200, Some(n * 100), true);
        }
        let ceiling = rule.replied(610, Some(500), false);
        assert_eq!(ceiling, Some(5.0 * RATE_MARGIN));
        // The window holds five of ours: the next send waits until the oldest of the
        // latest five not refused ages out (the seventh, unanswered yet, counts).
        assert_eq!(rule.resume_at(), Some(1125));
        assert_eq!(rule.replied(615, Some(600), false), None, "an echo");
        assert_eq!(rule.shared(), (Some(5.0 * RATE_MARGIN), Some(610)));
        assert!(!rule.probe_due(610 + PROBE_INTERVAL.as_millis() as i64 - 1));
        // Another process's later throttle wins; an older one does not.
        rule.adopt(Some(4.0), Some(400), true);
        assert_eq!(rule.shared().1, Some(610));
        rule.adopt(Some(4.0), Some(900), true);
        assert_eq!(rule.shared(), (Some(4.0), Some(900)));
        // A request sent after the lowering and refused: a new signal.
        rule.sent(1100, false);
        assert!(rule.replied(1110, Some(1100), false).is_some());
    }

    #[test]
    fn a_refused_probe_confirms_the_ceiling_and_an_admitted_one_restores_the_rate() {
        let mut rule = Adaptive::new(10.0);
        for n in 0..6 {
            rule.sent(n * 100, false);
        }
        let lowered = rule.replied(510, Some(500), false).unwrap();
        let probe_at = 510 + PROBE_INTERVAL.as_millis() as i64;
        assert!(rule.probe_due(probe_at));
        rule.sent(probe_at, true);
        assert!(!rule.probe_due(probe_at + 1), "one probe per cycle");
        assert_eq!(
            rule.replied(probe_at + 10, Some(probe_at), false),
            Some(lowered)
        );
        assert_eq!(
            rule.rate(probe_at + 10),
            lowered * HOLD_FRACTION,
            "same level"
        );
        assert_eq!(
            rule.resume_at(),
            Some(1025),
            "no new drain for a refused probe"
        );
        let next = probe_at + 10 + PROBE_INTERVAL.as_millis() as i64;
        assert!(!rule.probe_due(next - 1) && rule.probe_due(next));
        rule.sent(next, true);
        rule.replied(next + 200, Some(next), true);
        assert_eq!(rule.rate(next + 200), 10.0, "room again");
        // Without send times: a probe no throttle answered within PROBE_QUIET passed.
        let mut blind = Adaptive::new(10.0);
        for n in 0..6 {
            blind.sent(n * 100, false);
        }
        blind.throttled(510);
        blind.sent(probe_at, true);
        blind.passed(probe_at + 200);
        assert!(blind.rate(probe_at + 200) < 10.0);
        assert_eq!(blind.rate(probe_at + PROBE_QUIET.as_millis() as i64), 10.0);
    }

    #[test]
    fn a_throttle_at_the_configured_rate_drains_but_sets_no_ceiling_to_probe() {
        // Ten sent in a second at 10/s and the eleventh refused (sends bunched by a busy
        // machine): the limit is the configured rate itself.
        let mut rule = Adaptive::new(10.0);
        for n in 0..11 {
            rule.sent(n * 95, false);
        }
        assert!(rule.replied(960, Some(950), false).is_some());
        assert_eq!(rule.resume_at(), Some(1025), "the window drains first");
        let interval = PROBE_INTERVAL.as_millis() as i64;
        assert_eq!(
            rule.rate(960),
            10.0 * HOLD_FRACTION,
            "just under it for a while"
        );
        assert_eq!(
            rule.rate(960 + interval),
            10.0,
            "then the configured rate again"
        );
        assert!(
            !rule.probe_due(960 + 60_000),
            "nothing above the configured rate to probe for"
        );
        // Another process's record of it is no ceiling either.
        rule.adopt(Some(10.25), Some(20_000), true);
        assert_eq!(rule.rate(20_000), 10.0 * HOLD_FRACTION);
        assert_eq!(rule.rate(20_000 + interval), 10.0);
        assert!(!rule.probe_due(20_000 + 60_000));
    }

    /// What [`simulate`] saw.
    #[derive(Debug, Default)]
    struct Outcome {
        sent: u32,
        /// Arrival times of the refused requests (ms).
        throttled: Vec<i64>,
        /// Admission times (ms).
        admitted: Vec<i64>,
    }

    /// The rule against a server admitting `limit(t)` requests in any sliding second
    /// of arrivals, the way the simulator does (`sim::limiter`: refusals not counted),
    /// deterministically (seeded): slots taken as [`DbLimiter`] takes them (the next
    /// one reserved when the one before leaves, spaced at the rate in force then, a
    /// probe pulled early, none before the window drains), arrivals 0-20 ms after the
    /// send, a refusal's reply right away, an admitted request's 100-300 ms later.
    fn simulate(
        seed: u64,
        configured: f64,
        until_ms: i64,
        limit: impl Fn(i64) -> usize,
    ) -> Outcome {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut rule = Adaptive::new(configured);
        let mut window: VecDeque<i64> = VecDeque::new();
        let mut replies: Vec<(i64, i64, bool)> = Vec::new();
        let mut outcome = Outcome::default();
        let mut next_at: Option<f64> = None;
        let mut now = 0_i64;
        let deliver = |rule: &mut Adaptive, replies: &mut Vec<(i64, i64, bool)>, until: i64| {
            replies.sort_by_key(|r| r.0);
            while replies.first().is_some_and(|r| r.0 <= until) {
                let (at, sent, passed) = replies.remove(0);
                rule.replied(at, Some(sent), passed);
            }
        };
        while now < until_ms {
            deliver(&mut rule, &mut replies, now);
            let rate = rule.rate(now);
            let probe = rule.probe_due(now);
            let spacing = 1000.0 * RATE_MARGIN / rate;
            let pull = if probe {
                spacing * (1.0 - PROBE_GAP_FRACTION)
            } else {
                0.0
            };
            let earliest = rule.resume_at().map_or(now, |at| at.max(now)) as f64;
            let slot = next_at.map_or(earliest, |next| (next - pull).max(earliest));
            next_at = Some(slot + spacing);
            let mut send = slot.ceil() as i64;
            deliver(&mut rule, &mut replies, send);
            if let Some(resume) = rule.resume_at().filter(|&at| at > send) {
                send = resume;
                let spacing = 1000.0 * RATE_MARGIN / rule.rate(send);
                next_at = Some(next_at.unwrap_or(0.0).max(send as f64 + spacing));
                deliver(&mut rule, &mut replies, send);
            }
            rule.sent(send, probe);
            let arrival = send + rng.random_range(0..=20);
            while window.front().is_some_and(|&t| t <= arrival - 1000) {
                window.pop_front();
            }
            let passed = window.len() < limit(arrival);
            let reply_at = if passed {
                window.push_back(arrival);
                outcome.admitted.push(arrival);
                arrival + rng.random_range(100..=300)
            } else {
                outcome.throttled.push(arrival);
                arrival + 1
            };
            outcome.sent += 1;
            replies.push((reply_at, send, passed));
            now = send;
        }
        outcome
    }

    fn admitted_between(outcome: &Outcome, from_ms: i64, to_ms: i64) -> usize {
        outcome
            .admitted
            .iter()
            .filter(|&&t| t >= from_ms && t < to_ms)
            .count()
    }

    /// Rate at 5/s, share throttled then, and ms from the limit's return to the end of
    /// the first full second holding 10 admitted.
    fn five_then_ten(seed: u64, change_ms: i64) -> (f64, f64, Option<i64>) {
        let outcome = simulate(seed, 10.0, change_ms + 15_000, |t| {
            if t < change_ms { 5 } else { 10 }
        });
        let at_5 = admitted_between(&outcome, 0, change_ms) as f64 / (change_ms as f64 / 1000.0);
        let throttled = outcome.throttled.iter().filter(|&&t| t < change_ms).count();
        let sent_at_5 = admitted_between(&outcome, 0, change_ms) + throttled;
        let recovered = outcome
            .admitted
            .iter()
            .filter(|&&t| t >= change_ms)
            .find(|&&t| admitted_between(&outcome, t, t + 1000) >= 10)
            .map(|t| t + 1000 - change_ms);
        (at_5, throttled as f64 / sent_at_5 as f64, recovered)
    }

    #[test]
    fn under_a_lower_limit_it_takes_what_is_left_and_recovers_when_it_returns() {
        // Configured 10/s, the server allows 5/s for a minute, then 10/s again: the
        // issue's targets (>= 4.5/s, <= 3% throttled, back within 10 s) for several
        // seeds and moments of the change (a change just after a probe is the worst).
        for seed in 1..=6 {
            for change_ms in [60_000, 61_300, 62_600, 64_000, 65_700, 67_100] {
                let (at_5, throttled, recovered) = five_then_ten(seed, change_ms);
                let case = format!("seed {seed}, change at {change_ms} ms");
                assert!(at_5 >= 4.5, "{case}: {at_5:.2}/s of 5");
                assert!(
                    throttled <= 0.03,
                    "{case}: {:.1}% throttled",
                    throttled * 100.0
                );
                assert!(
                    recovered.is_some_and(|ms| ms <= 10_000),
                    "{case}: recovered after {recovered:?} ms"
                );
            }
        }
    }

    #[test]
    fn alone_at_the_limit_it_never_throttles() {
        for seed in 1..=3 {
            let outcome = simulate(seed, 10.0, 30_000, |_| 10);
            assert!(outcome.throttled.is_empty(), "{:?}", outcome.throttled);
            let rate = admitted_between(&outcome, 0, 30_000) as f64 / 30.0;
            assert!(rate >= 9.7, "{rate:.3}/s");
        }
    }

    #[tokio::test]
    async fn reserved_slots_are_strictly_spaced() {
        let pacer = Pacer::new(50.0);
        let mut starts = Vec::new();
        for _ in 0..6 {
            starts.push(pacer.reserve().await);
        }
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 50.0) - SEND_LATENESS_FORGIVEN;
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= min_gap, "gap {:?}", pair[1] - pair[0]);
        }
    }

    fn key(action: Action, endpoint: &str, secret_id: &str) -> LimiterKey {
        LimiterKey {
            action,
            endpoint: endpoint.into(),
            secret_id: secret_id.into(),
        }
    }

    #[test]
    fn each_key_has_its_own_pace_and_account_throttles_slow_every_key_of_the_account() {
        let limiter = LocalLimiter::new(10.0);
        let unbind = key(Action::DisassociateInstancesKeyPairs, "https://a", "AKID1");
        let bind = key(Action::AssociateInstancesKeyPairs, "https://a", "AKID1");
        let describe = key(Action::DescribeInstances, "https://a", "AKID1");
        let other = key(Action::DisassociateInstancesKeyPairs, "https://a", "AKID2");
        assert_eq!(limiter.current_rate(&unbind), 10.0);
        assert_eq!(limiter.current_rate(&describe), 40.0);
        limiter.feedback(&unbind, Feedback::Throttled);
        assert_eq!(
            limiter.current_rate(&unbind),
            5.0 * HOLD_FRACTION,
            "none admitted in the last second: half"
        );
        assert_eq!(
            limiter.current_rate(&bind),
            10.0,
            "another API keeps its pace"
        );
        limiter.feedback(&bind, Feedback::ThrottledAccount);
        assert!(limiter.current_rate(&bind) < 10.0);
        assert!(limiter.current_rate(&describe) < 40.0);
        assert_eq!(
            limiter.current_rate(&other),
            10.0,
            "another sub-account is untouched"
        );
        assert!(LocalLimiter::new(0.0).is_off(&describe));
        assert_eq!(
            Feedback::for_code("RequestLimitExceeded.UinLimitExceeded"),
            Feedback::ThrottledAccount
        );
        assert_eq!(
            Feedback::for_code("RequestLimitExceeded"),
            Feedback::Throttled
        );
        assert_eq!(Feedback::for_code("InternalServerError"), Feedback::Passed);
    }

    #[tokio::test]
    async fn the_first_slot_on_a_database_without_a_row_follows_the_last_recorded_send() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).await.unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(
            &input,
            "instance_id,key_id,region\nins-00000001,skey-00000001,ap-guangzhou\n",
        )
        .unwrap();
        crate::plan::plan_input(&store, &input, &crate::plan::PlanOptions::default())
            .await
            .unwrap();
        // A request of a process that died: sent 20 ms ago, no pacer row.
        let sent_at = now_ms() - 20;
        sqlx::query(
            "INSERT INTO attempts (job_id, number, started_at, finished_at, sent_at, outcome) \
             SELECT id, 1, ?1, ?1, ?1, 'succeeded' FROM jobs",
        )
        .bind(sent_at)
        .execute(store.pool_for_tests())
        .await
        .unwrap();
        let limiter = DbLimiter::open(&store, 10.0).await.unwrap();
        let unbind = key(Action::DisassociateInstancesKeyPairs, "https://a", "AKID1");
        let spacing_ms = 1000.0 * RATE_MARGIN / 10.0;
        let first = limiter.reserve(&unbind).await;
        let first_ms = now_ms() - first.elapsed().as_millis() as i64;
        assert!(
            (first_ms - sent_at) as f64 >= spacing_ms - 1.0,
            "first slot {} ms after the recorded send",
            first_ms - sent_at
        );
        let second = limiter.reserve(&unbind).await;
        let gap = second.duration_since(first);
        assert!(gap.as_secs_f64() * 1000.0 >= spacing_ms - 3.0, "{gap:?}");
        // Unpaced keys never touch the table.
        assert!(LocalLimiter::new(0.0).is_off(&unbind));
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pacer")
            .fetch_one(store.pool_for_tests())
            .await
            .unwrap();
        assert_eq!(rows, 1);
        limiter.close().await;
        store.close().await;
    }

    #[tokio::test]
    async fn off_means_no_waiting() {
        let pacer = Pacer::new(0.0);
        for _ in 0..1000 {
            pacer.ready().await;
            pacer.sending();
            assert!(pacer.is_off());
        }
    }
}
