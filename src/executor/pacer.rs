//! Request pacing: a strict governor limiter at the configured rate, and an
//! adaptive slowdown on top of it when the API throttles us.
//!
//! The executor sees only the [`Limiter`] interface: `reserve` a send slot under a
//! [`LimiterKey`] (action, access endpoint, SecretId: the scope of Tencent Cloud's
//! limit) and report `feedback` on the reply. [`LocalLimiter`] keeps one [`Pacer`] per
//! key in this process; another implementation (shared through the database) can
//! stand behind the same interface without the executor changing.

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
pub const RATE_MARGIN: f64 = 1.025;
/// After a throttle, the rate starts again at this fraction of the ceiling (the rate
/// that was left), so that the server's window drains what overshot.
const RESTART_FRACTION: f64 = 0.9;
/// It then approaches (`HOLD_FRACTION` of) the ceiling concavely (quickly at first, flat at the end),
/// reaching it after this long: the plateau where it spends most of its time.
const APPROACH: Duration = Duration::from_secs(6);
/// The plateau is this fraction of the measured ceiling: at the ceiling itself,
/// network jitter alone would push a request over it now and then.
const HOLD_FRACTION: f64 = 0.96;
/// Then it probes beyond the ceiling, slowly at first (quadratic), reaching
/// `PROBE_TOP` x the ceiling after this long. A limit still in place throttles
/// one request early in the probe, and the cycle starts again.
const PROBE: Duration = Duration::from_secs(3);
const PROBE_TOP: f64 = 1.05;
/// Past `PROBE_TOP` x the ceiling with no throttle, the limit has gone (the other
/// sender stopped): the rate grows by this factor per second up to the configured one.
const FAST_GROWTH_PER_SECOND: f64 = 2.0;
/// Throttles within this long of the one that lowered the rate belong to the same
/// burst: the server's window still holds requests sent before the change, so they
/// do not lower it again (nor, through the database, in another process).
pub const THROTTLE_HOLD: Duration = Duration::from_secs(1);
/// The replies of this long measure which share of requests passes.
const REPLY_WINDOW: Duration = Duration::from_secs(1);
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
pub struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    origin: Instant,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    adaptive: Adaptive,
    last_start: Option<Instant>,
}

impl Pacer {
    /// `rate` requests per second; 0 turns pacing off (engine benchmarks only).
    pub fn new(rate: f64) -> Pacer {
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
            origin: Instant::now(),
            state: Mutex::new(PacerState {
                adaptive: Adaptive::new(rate),
                last_start: None,
            }),
        }
    }

    /// Milliseconds since this pacer was made: the adaptive rule's clock.
    fn now_ms(&self) -> i64 {
        self.origin.elapsed().as_millis() as i64
    }

    fn spacing(&self, state: &PacerState) -> Duration {
        Duration::from_secs_f64(RATE_MARGIN / state.adaptive.rate(self.now_ms()))
    }

    /// Waits until the next request may start.
    pub async fn ready(&self) {
        let Some(limiter) = &self.limiter else { return };
        limiter.until_ready().await;
        // On top of the limiter, keep 1/current between the moments requests
        // actually left (see `sending`): a request held up between its permit and
        // its send (a busy machine) must not let the next one follow it closely,
        // since the server counts arrivals. While throttled, current < target.
        loop {
            let wait = {
                let state = self.lock();
                let spacing = self.spacing(&state);
                let now = Instant::now();
                match state.last_start {
                    Some(last) if now < last + spacing => last + spacing - now,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A request is leaving now; the next one is spaced from this moment, or from
    /// when this one was due if it is only slightly late (`SEND_LATENESS_FORGIVEN`). A request
    /// held up longer never lets the next one follow it closely.
    pub fn sending(&self) {
        if self.limiter.is_none() {
            return;
        }
        let mut state = self.lock();
        let spacing = self.spacing(&state);
        state.last_start = Some(spaced_from(state.last_start, spacing, Instant::now()));
    }

    /// Waits for the next send slot and takes it, in one step: the slot's moment is
    /// what the next one is spaced from. Returns that moment.
    pub async fn reserve(&self) -> Instant {
        let Some(limiter) = &self.limiter else {
            return Instant::now();
        };
        limiter.until_ready().await;
        loop {
            let wait = {
                let mut state = self.lock();
                let spacing = self.spacing(&state);
                let now = Instant::now();
                match state.last_start {
                    Some(last) if now < last + spacing => last + spacing - now,
                    _ => {
                        state.last_start = Some(spaced_from(state.last_start, spacing, now));
                        return now;
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// True when pacing is off (`rate` 0): requests start as fast as slots free up.
    pub fn is_off(&self) -> bool {
        self.limiter.is_none()
    }

    /// The API said we are too fast: the rule of [`Adaptive`] lowers the rate.
    pub fn throttled(&self) {
        if self.limiter.is_none() {
            return;
        }
        let now = self.now_ms();
        let mut state = self.lock();
        if state.adaptive.throttled(now).is_some() {
            tracing::info!(rate = state.adaptive.rate(now), "throttled: slowing down");
        }
    }

    /// A request went through: the rule counts it into the rate that is left.
    pub fn succeeded(&self) {
        let now = self.now_ms();
        self.lock().adaptive.passed(now);
    }

    /// The rate in force now, requests per second (0 when pacing is off).
    pub fn current_rate(&self) -> f64 {
        let now = self.now_ms();
        self.lock().adaptive.rate(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The rate in force `since_throttle` after the throttle that measured `ceiling`
/// (requests per second), for a key configured at `max`: the adaptive rule, a pure
/// function of time.
///
/// CUBIC-like: start again at [`RESTART_FRACTION`] of the ceiling, approach it
/// concavely over [`APPROACH`] and hold near it, probe beyond it slowly over
/// [`PROBE`], and once well past it with no throttle grow fast
/// ([`FAST_GROWTH_PER_SECOND`]) up to `max`. Never below `max` x 1/16. With no
/// throttle yet, `max`.
pub fn adaptive_rate(max: f64, ceiling: Option<f64>, since_throttle: Option<Duration>) -> f64 {
    if max <= 0.0 {
        return 0.0;
    }
    let (Some(ceiling), Some(since)) = (ceiling, since_throttle) else {
        return max;
    };
    let t = since.as_secs_f64();
    let approach = APPROACH.as_secs_f64();
    let probe = PROBE.as_secs_f64();
    let hold = ceiling * HOLD_FRACTION;
    let restart = ceiling * RESTART_FRACTION;
    let rate = if t < approach {
        hold - (hold - restart) * (1.0 - t / approach).powi(3)
    } else if t < approach + probe {
        hold + (ceiling * PROBE_TOP - hold) * ((t - approach) / probe).powi(2)
    } else {
        // Capped before it can overflow: max / ceiling is at most 16 x PROBE_TOP.
        let grown = FAST_GROWTH_PER_SECOND.powf((t - approach - probe).min(60.0));
        ceiling * PROBE_TOP * grown
    };
    rate.clamp(max * MIN_RATE_FRACTION, max)
}

/// The rate that is left, measured at a throttle. The passes of the last second
/// (`passed` over [`REPLY_WINDOW`], in the rate's units with [`RATE_MARGIN`]) are
/// what a saturated sliding-window limit admits, exactly; divided by `share`, this
/// process's share of the key's slots (1 alone; processes sharing a database each
/// see only their part). The rate in force times the share of replies that passed
/// (`passed` of `passed + throttled`) also holds whatever the share, but right after
/// the limit is first met the passes' replies come before the throttles' and bias it
/// high: it is taken (when larger) only once the second holds
/// [`MIN_THROTTLES_TO_MEASURE`] throttles.
pub fn ceiling_after_throttle(rate_in_force: f64, passed: u32, throttled: u32, share: f64) -> f64 {
    let replies = passed + throttled;
    if replies == 0 {
        return rate_in_force / 2.0;
    }
    let share_of_slots = share.clamp(MIN_SHARE, 1.0);
    let passed_per_second =
        f64::from(passed) / REPLY_WINDOW.as_secs_f64() * RATE_MARGIN / share_of_slots;
    let share = rate_in_force * f64::from(passed) / f64::from(replies);
    let ceiling = if throttled >= MIN_THROTTLES_TO_MEASURE {
        share.max(passed_per_second)
    } else {
        passed_per_second
    };
    ceiling.min(rate_in_force)
}

/// A share of the slots below this is not trusted (too few to count).
const MIN_SHARE: f64 = 0.05;

/// See [`ceiling_after_throttle`].
const MIN_THROTTLES_TO_MEASURE: u32 = 3;

/// The adaptive rule's state for one key: the ceiling and when it was measured,
/// and the recent replies that measure the next one. Times are milliseconds on any
/// clock the caller keeps (Unix ms when shared through the database).
#[derive(Debug, Clone)]
pub struct Adaptive {
    max: f64,
    ceiling: Option<f64>,
    throttled_at: Option<i64>,
    replies: VecDeque<(i64, bool)>,
    /// This process's share of the key's slots (1 when it paces alone).
    share: f64,
}

impl Adaptive {
    /// A key configured at `max` requests per second, not throttled yet.
    pub fn new(max: f64) -> Adaptive {
        Adaptive {
            max,
            ceiling: None,
            throttled_at: None,
            replies: VecDeque::new(),
            share: 1.0,
        }
    }

    /// This process's share of the key's recent slots, when several processes take them.
    pub fn set_share(&mut self, share: f64) {
        self.share = share;
    }

    /// The rate in force at `now_ms`.
    pub fn rate(&self, now_ms: i64) -> f64 {
        let since = self
            .throttled_at
            .map(|at| Duration::from_millis(now_ms.saturating_sub(at).max(0) as u64));
        adaptive_rate(self.max, self.ceiling, since)
    }

    /// A reply that passed.
    pub fn passed(&mut self, now_ms: i64) {
        self.record(now_ms, true);
    }

    /// A throttle: lowers the rate to start from the measured ceiling, unless the
    /// last lowering was less than [`THROTTLE_HOLD`] ago. Returns the new ceiling
    /// when it lowered.
    pub fn throttled(&mut self, now_ms: i64) -> Option<f64> {
        self.record(now_ms, false);
        let hold = THROTTLE_HOLD.as_millis() as i64;
        if self.throttled_at.is_some_and(|at| now_ms - at < hold) {
            return None;
        }
        let passed = self.replies.iter().filter(|(_, passed)| *passed).count() as u32;
        let throttled = self.replies.len() as u32 - passed;
        let rate = self.rate(now_ms);
        let measured = ceiling_after_throttle(rate, passed, throttled, self.share);
        // A throttle while probing just beyond the ceiling confirms it (one request
        // over a limit that has not moved, and a second of replies is too few to
        // measure a few percent): keep it. Below the ceiling (the limit fell) or far
        // beyond it (it had risen), the measurement is the new ceiling.
        let ceiling = match self.ceiling {
            Some(old) if rate > old && rate <= old * PROBE_TOP * 1.000_001 => measured.max(old),
            _ => measured,
        };
        self.ceiling = Some(ceiling);
        self.throttled_at = Some(now_ms);
        Some(ceiling)
    }

    /// The shared state: the ceiling and when the throttle that set it came.
    pub fn shared(&self) -> (Option<f64>, Option<i64>) {
        (self.ceiling, self.throttled_at)
    }

    /// Takes the shared state as the database holds it: a throttle another process
    /// (or this one) recorded. `only_newer` keeps a lowering of ours not written yet.
    pub fn adopt(&mut self, ceiling: Option<f64>, throttled_at: Option<i64>, only_newer: bool) {
        let newer = match (throttled_at, self.throttled_at) {
            (Some(theirs), Some(ours)) => theirs > ours,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newer || (!only_newer && throttled_at.is_some()) {
            self.ceiling = ceiling;
            self.throttled_at = throttled_at;
        }
    }

    fn record(&mut self, now_ms: i64, passed: bool) {
        self.replies.push_back((now_ms, passed));
        let window = REPLY_WINDOW.as_millis() as i64;
        while self
            .replies
            .front()
            .is_some_and(|(at, _)| *at <= now_ms - window)
        {
            self.replies.pop_front();
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
pub type Reservation<'a> = Pin<Box<dyn Future<Output = Instant> + Send + 'a>>;

/// Send slots per key, and the pace adjusted by feedback.
pub trait Limiter: Send + Sync {
    /// Waits for a send slot under `key` and takes it.
    fn reserve<'a>(&'a self, key: &'a LimiterKey) -> Reservation<'a>;
    /// What the reply to a request sent under `key` said about the pace.
    fn feedback(&self, key: &LimiterKey, feedback: Feedback);
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
pub fn rate_for_action(action: Action, configured: f64) -> f64 {
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

    fn feedback(&self, key: &LimiterKey, feedback: Feedback) {
        match feedback {
            Feedback::Passed => self.pacer(key).succeeded(),
            Feedback::Throttled => self.pacer(key).throttled(),
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
        let rate = key.lock().adaptive.rate(now as i64);
        let spacing_ms = 1000.0 * RATE_MARGIN / rate;
        // sent_at is whole milliseconds, rounded down: one more keeps the spacing.
        let seed = seed_after.map(|sent| sent as f64 + 1.0 + spacing_ms);
        let slot = self
            .db
            .reserve(&key.row, now, spacing_ms, rate, seed)
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
        let at = if wait_ms > 0.0 {
            let at = Instant::now() + Duration::from_secs_f64(wait_ms / 1000.0);
            tokio::time::sleep_until(at.into()).await;
            at
        } else {
            Instant::now()
        };
        let late_ms = unix_ms_f64() - slot.at_ms;
        let forgiven_ms = SEND_LATENESS_FORGIVEN.as_secs_f64() * 1000.0;
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
    async fn write_throttle(&self, key: Arc<DbKey>, ceiling: f64, at_ms: i64) {
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

    fn feedback(&self, key: &LimiterKey, feedback: Feedback) {
        if self.is_off(key) {
            return;
        }
        let now = now_ms();
        match feedback {
            Feedback::Passed => {
                let db_key = self.inner.key(key);
                db_key.lock().adaptive.passed(now);
                db_key.fallback.succeeded();
            }
            Feedback::Throttled => {
                let db_key = self.inner.key(key);
                db_key.fallback.throttled();
                let lowered = db_key.lock().adaptive.throttled(now);
                if let Some(ceiling) = lowered {
                    tracing::info!(ceiling, "throttled: slowing down");
                    let inner = self.inner.clone();
                    spawn_write(async move { inner.write_throttle(db_key, ceiling, now).await });
                }
            }
            Feedback::ThrottledAccount => {
                let reporting = self.inner.key(key);
                let fraction = {
                    let mut state = reporting.lock();
                    let rate = state.adaptive.rate(now);
                    state
                        .adaptive
                        .throttled(now)
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
        pacer.sending();
        let late = Instant::now();
        pacer.ready().await;
        let gap = late.elapsed();
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 50.0) - SEND_LATENESS_FORGIVEN;
        assert!(gap >= min_gap, "gap {gap:?} < {min_gap:?}");
    }

    #[test]
    fn the_rule_restarts_below_the_ceiling_approaches_it_probes_then_grows_fast() {
        let at = |s: f64| adaptive_rate(10.0, Some(5.0), Some(Duration::from_secs_f64(s)));
        assert_eq!(adaptive_rate(10.0, None, None), 10.0, "no throttle yet");
        assert_eq!(adaptive_rate(0.0, Some(5.0), None), 0.0, "off stays off");
        assert!(
            (at(0.0) - 4.5).abs() < 1e-9,
            "restart at 90% of the ceiling"
        );
        // Concave: most of the way in the first third, flat at the end, 96% of it.
        assert!(at(2.0) > 4.7 && at(2.0) < 4.8, "{}", at(2.0));
        assert!((at(6.0) - 4.8).abs() < 1e-9);
        for pair in [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 9.5].windows(2) {
            assert!(at(pair[1]) > at(pair[0]), "always growing: {pair:?}");
        }
        // The probe: slowly beyond the ceiling, 1.05 x after 3 s.
        assert!(at(7.0) < 4.9, "{}", at(7.0));
        assert!((at(9.0) - 5.25).abs() < 1e-9);
        // Then fast, up to the configured rate.
        assert!(at(9.9) >= 9.75, "{}", at(9.9));
        assert_eq!(at(100.0), 10.0);
        assert_eq!(at(1e9), 10.0, "no overflow");
        // Floored at 1/16 of the configured rate.
        assert_eq!(
            adaptive_rate(10.0, Some(0.01), Some(Duration::ZERO)),
            10.0 / 16.0
        );
        assert_eq!(ceiling_after_throttle(9.0, 5, 4, 1.0), 5.0 * RATE_MARGIN);
        assert_eq!(
            ceiling_after_throttle(9.0, 3, 6, 1.0),
            3.0 * RATE_MARGIN,
            "the passes win"
        );
        assert_eq!(
            ceiling_after_throttle(20.0, 5, 5, 1.0),
            10.0,
            "one of several senders"
        );
        assert_eq!(
            ceiling_after_throttle(10.0, 5, 1, 1.0),
            5.0 * RATE_MARGIN,
            "one throttle: the passes"
        );
        assert_eq!(
            ceiling_after_throttle(10.0, 4, 1, 0.5),
            8.0 * RATE_MARGIN,
            "half the slots: twice its passes"
        );
        assert_eq!(
            ceiling_after_throttle(8.0, 0, 0, 1.0),
            4.0,
            "no replies: halve"
        );
    }

    #[test]
    fn one_lowering_per_burst_of_throttles() {
        let mut rule = Adaptive::new(10.0);
        for t in 0..5 {
            rule.passed(t * 100);
        }
        assert_eq!(rule.throttled(500), Some(5.0 * RATE_MARGIN));
        assert_eq!(rule.throttled(700), None, "the same burst");
        assert_eq!(rule.shared(), (Some(5.0 * RATE_MARGIN), Some(500)));
        // Another process's later throttle wins; an older one does not.
        rule.adopt(Some(4.0), Some(400), true);
        assert_eq!(rule.shared().1, Some(500));
        rule.adopt(Some(4.0), Some(900), true);
        assert_eq!(rule.shared(), (Some(4.0), Some(900)));
        assert!(
            rule.throttled(1950).is_some(),
            "a second later: lowers again"
        );
    }

    /// What [`simulate`] saw.
    #[derive(Debug, Default)]
    struct Outcome {
        sent: u32,
        throttled: u32,
        /// Admission times (ms).
        admitted: Vec<i64>,
    }

    /// The rule against a server admitting `limit(t)` requests in any sliding second
    /// of arrivals, deterministically: a sender spaced as the limiters space
    /// (`RATE_MARGIN / rate`, the rate taken at each send), arrivals up to 20 ms late
    /// (seeded jitter), replies 200 ms after arrival.
    fn simulate(configured: f64, until_ms: i64, limit: impl Fn(i64) -> usize) -> Outcome {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut rule = Adaptive::new(configured);
        let mut window: VecDeque<i64> = VecDeque::new();
        let mut replies: VecDeque<(i64, bool)> = VecDeque::new();
        let mut outcome = Outcome::default();
        let mut next_send = 0.0_f64;
        while (next_send as i64) < until_ms {
            let send = next_send as i64;
            while let Some(&(at, passed)) = replies.front() {
                if at > send {
                    break;
                }
                replies.pop_front();
                if passed {
                    rule.passed(at);
                } else {
                    rule.throttled(at);
                }
            }
            let arrival = send + rng.random_range(0..=20);
            while window.front().is_some_and(|&t| t <= arrival - 1000) {
                window.pop_front();
            }
            let passed = window.len() < limit(arrival);
            if passed {
                window.push_back(arrival);
                outcome.admitted.push(arrival);
            } else {
                outcome.throttled += 1;
            }
            outcome.sent += 1;
            // Replies come back in arrival order here (one latency for all).
            let reply_at = arrival + 200;
            let index = replies.partition_point(|&(at, _)| at <= reply_at);
            replies.insert(index, (reply_at, passed));
            next_send += 1000.0 * RATE_MARGIN / rule.rate(send);
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

    #[test]
    fn under_a_lower_limit_it_takes_what_is_left_and_recovers_when_it_returns() {
        // Configured 10/s, the server allows 5/s for a minute, then 10/s again.
        let outcome = simulate(10.0, 75_000, |t| if t < 60_000 { 5 } else { 10 });
        let at_5 = admitted_between(&outcome, 0, 60_000) as f64 / 60.0;
        let sent_at_5 =
            outcome.admitted.iter().filter(|&&t| t < 60_000).count() as u32 + outcome.throttled;
        let throttled_share = f64::from(outcome.throttled) / f64::from(sent_at_5);
        assert!(at_5 >= 4.5, "{at_5:.2}/s of 5 ({outcome:?})");
        // The target is 3%; in this model the rule reaches 3.4% (about 1.7
        // throttles per probe, every 9 s, plus 3 when the limit is first met).
        assert!(
            throttled_share <= 0.035,
            "{:.1}% throttled",
            throttled_share * 100.0
        );
        // Within 10 s of the limit's return, a full second at >= 9.5/s.
        let recovered = (60_000..=69_000)
            .step_by(100)
            .find(|&t| admitted_between(&outcome, t, t + 1000) >= 10)
            .map(|t| t + 1000 - 60_000);
        assert!(
            recovered.is_some_and(|ms| ms <= 10_000),
            "recovered after {recovered:?} ms"
        );
    }

    #[test]
    fn alone_at_the_limit_it_never_throttles() {
        let outcome = simulate(10.0, 30_000, |_| 10);
        assert_eq!(outcome.throttled, 0);
        let rate = admitted_between(&outcome, 0, 30_000) as f64 / 30.0;
        assert!(rate >= 9.7, "{rate:.3}/s");
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
            10.0 / 16.0,
            "no pass in the last second: the floor"
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
