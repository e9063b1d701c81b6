//! Power: StopInstances, StartInstances and ForceStop on the key-pair actions, as
//! timed steps of an operation, and the timeline of every instance's state.
//!
//! On the cloud both actions are asynchronous (reference, section 1): an accepted stop
//! puts the instance in STOPPING and later STOPPED (or, when a SOFT stop fails, back
//! to RUNNING with `LatestOperationState` FAILED); a start goes STARTING, then RUNNING
//! (or back to STOPPED, FAILED). A key-pair request with `ForceStop=true` on a RUNNING
//! instance powers it off hard, changes the keys, and, as the current documentation
//! reads, starts it again ([`ForceStopReading::Restart`]); the older reading leaves it
//! STOPPED ([`ForceStopReading::LeftStopped`]). The key-pair operation stays OPERATING
//! through the whole cycle (what the cloud records then is not documented).

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::SimError;
use super::instance::{Instance, InstanceState, OperationState, Step};
use crate::cvm::StopType;

/// Power events kept by default; past it the oldest are dropped and counted.
pub const DEFAULT_POWER_CAPACITY: usize = 500_000;

/// What a ForceStop key-pair request does to a RUNNING instance after the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForceStopReading {
    /// The current (Chinese, April 2025) documentation: hard stop, change the keys,
    /// start it again because it was RUNNING.
    #[default]
    Restart,
    /// The older (and English) documentation, silent on a restart: it is left STOPPED.
    LeftStopped,
}

impl std::str::FromStr for ForceStopReading {
    type Err = String;

    fn from_str(text: &str) -> Result<ForceStopReading, String> {
        match text {
            "restart" => Ok(ForceStopReading::Restart),
            "left-stopped" => Ok(ForceStopReading::LeftStopped),
            other => Err(format!(
                "{other:?} is not a ForceStop reading: use restart (the current documentation) or left-stopped (the older one)"
            )),
        }
    }
}

/// How the simulator powers instances off and on ([`super::SimConfig::power`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Power {
    /// How long an accepted stop stays STOPPING (a ForceStop's hard stop too); a SOFT_FIRST
    /// stop whose soft attempt fails takes twice as long.
    pub stop_time: Duration,
    /// How long an accepted start stays STARTING.
    pub start_time: Duration,
    /// What a ForceStop key-pair request does after the change.
    pub force_stop: ForceStopReading,
    /// Probability (0..=1), per instance of an accepted SOFT stop, that the OS does not shut
    /// down: the stop ends FAILED and the instance is RUNNING again (SOFT_FIRST then forces it).
    pub soft_stop_fail: f64,
    /// Probability, per instance of an accepted start, that it ends FAILED, still STOPPED.
    pub start_fail: f64,
    /// Probability, per admitted StartInstances request, of the reply `ResourceInsufficient`
    /// (nothing started): a start refused outright rather than failing later.
    pub start_error: f64,
}

impl Default for Power {
    /// Instant power changes and no power faults: a ForceStop request then behaves as
    /// it did before stops and starts were simulated (RUNNING again in the reply's instant).
    fn default() -> Power {
        Power {
            stop_time: Duration::ZERO,
            start_time: Duration::ZERO,
            force_stop: ForceStopReading::Restart,
            soft_stop_fail: 0.0,
            start_fail: 0.0,
            start_error: 0.0,
        }
    }
}

impl Power {
    /// Each probability within 0..=1.
    pub fn validate(&self) -> Result<(), SimError> {
        for (name, p) in [
            ("soft_stop_fail", self.soft_stop_fail),
            ("start_fail", self.start_fail),
            ("start_error", self.start_error),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(SimError::Config(format!(
                    "fault probability {name} = {p} is not between 0 and 1"
                )));
            }
        }
        Ok(())
    }
}

/// One change of an instance's `InstanceState`, as the power timeline records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerEvent {
    /// When it changed, in ms since the simulator started (tokio's clock, as the journal).
    pub at_ms: i64,
    pub instance_id: String,
    pub region: String,
    /// `Placement.Zone` of the instance.
    pub zone: String,
    /// The state it changed into.
    pub state: InstanceState,
    /// The action whose operation changed it (`StopInstances`, `StartInstances`, or a
    /// key-pair action with ForceStop); `None` for the fleet's own change (a settling
    /// state of the fleet file, an edit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The RequestId of that operation's reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl PowerEvent {
    /// `spec` has just changed into its current state, by `cause` (action, RequestId).
    /// `at_ms` is set when the event is recorded.
    pub(crate) fn new(spec: &Instance, cause: Option<(&str, &str)>) -> PowerEvent {
        PowerEvent {
            at_ms: 0,
            instance_id: spec.instance_id.clone(),
            region: spec.region.clone(),
            zone: spec.zone_name(),
            state: spec.state,
            action: cause.map(|(action, _)| action.to_string()),
            request_id: cause.map(|(_, id)| id.to_string()),
        }
    }
}

/// One page of the power timeline, as `GET /_sim/power?after=SEQ&limit=N` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerPage {
    /// The events numbered above `after`, oldest first, at most `limit`.
    pub events: Vec<PowerEvent>,
    /// The number of the last event returned (the next page's `after`); `after` when empty.
    pub next_after: u64,
    /// True when more events are kept beyond this page.
    pub more: bool,
    /// The number of the oldest event kept (1 + how many were dropped).
    pub first_retained: u64,
}

/// The most events one `/_sim/power` page returns.
pub const MAX_POWER_PAGE: usize = 10_000;

/// Every state change, in time order, numbered from 1; bounded (oldest dropped).
#[derive(Debug)]
pub(crate) struct PowerTimeline {
    origin: Instant,
    events: VecDeque<PowerEvent>,
    first_seq: u64,
    capacity: usize,
}

impl PowerTimeline {
    /// An empty timeline counting milliseconds from `origin` (the simulator's start).
    pub(crate) fn new(origin: Instant) -> PowerTimeline {
        PowerTimeline {
            origin,
            events: VecDeque::new(),
            first_seq: 1,
            capacity: DEFAULT_POWER_CAPACITY,
        }
    }

    /// Records the changes of one pass over the fleet, sorted by their moments (one
    /// pass meets instances in fleet order, not in time order).
    pub(crate) fn record(&mut self, mut changes: Vec<(Instant, PowerEvent)>) {
        changes.sort_by_key(|(at, _)| *at);
        for (at, mut event) in changes {
            event.at_ms = i64::try_from(at.saturating_duration_since(self.origin).as_millis())
                .unwrap_or(i64::MAX);
            if self.events.len() >= self.capacity {
                self.events.pop_front();
                self.first_seq += 1;
            }
            self.events.push_back(event);
        }
    }

    /// Events dropped to keep within the capacity.
    pub(crate) fn dropped(&self) -> u64 {
        self.first_seq - 1
    }

    pub(crate) fn events(&self) -> Vec<PowerEvent> {
        self.events.iter().cloned().collect()
    }

    /// The events numbered above `after`, at most `limit` (1..=[`MAX_POWER_PAGE`]).
    pub(crate) fn page(&self, after: u64, limit: usize) -> PowerPage {
        let limit = limit.clamp(1, MAX_POWER_PAGE);
        let skip = usize::try_from(after.saturating_add(1).saturating_sub(self.first_seq))
            .unwrap_or(usize::MAX)
            .min(self.events.len());
        let events: Vec<PowerEvent> = self.events.range(skip..).take(limit).cloned().collect();
        let next_after = match events.len() {
            0 => after,
            n => self.first_seq + (skip + n) as u64 - 1,
        };
        PowerPage {
            more: skip + events.len() < self.events.len(),
            events,
            next_after,
            first_retained: self.first_seq,
        }
    }
}

/// When something `time` after `now` happens; never overflows (a huge time simply
/// never comes while the simulator runs).
pub(crate) fn after(now: Instant, time: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(time).unwrap_or_else(|| now + NEVER)
}

/// How a key-pair change on one instance goes: `running_force_stop` when the request
/// has ForceStop and the instance is RUNNING (a hard stop first), `fails` when the
/// change ends FAILED (the keys stay).
pub(crate) fn key_pair_steps(
    now: Instant,
    associate: bool,
    keys: &[String],
    fails: bool,
    operation_time: Duration,
    running_force_stop: bool,
    power: &Power,
) -> Vec<(Instant, Step)> {
    let mut steps = Vec::new();
    let mut at = now;
    if running_force_stop {
        steps.push((at, Step::Power(InstanceState::Stopping)));
        at = after(at, power.stop_time);
        steps.push((at, Step::Power(InstanceState::Stopped)));
    }
    at = after(at, operation_time);
    if !fails {
        steps.push((
            at,
            Step::Keys {
                associate,
                keys: keys.to_vec(),
            },
        ));
    }
    if running_force_stop && power.force_stop == ForceStopReading::Restart {
        // Started again whether the change worked or not: it was RUNNING.
        steps.push((at, Step::Power(InstanceState::Starting)));
        at = after(at, power.start_time);
        steps.push((at, Step::Power(InstanceState::Running)));
    }
    let end = if fails {
        OperationState::Failed
    } else {
        OperationState::Success
    };
    steps.push((at, Step::End(end)));
    steps
}

/// How a stop of one RUNNING instance goes: `soft_fails` when its OS does not shut
/// down (a SOFT stop then ends FAILED with the instance RUNNING again; SOFT_FIRST forces
/// it off after the soft attempt's time; HARD never asks the OS).
pub(crate) fn stop_steps(
    now: Instant,
    stop_type: StopType,
    stop_charging: bool,
    soft_fails: bool,
    power: &Power,
) -> Vec<(Instant, Step)> {
    let mut steps = vec![(now, Step::Power(InstanceState::Stopping))];
    let mut at = after(now, power.stop_time);
    match (stop_type, soft_fails) {
        (StopType::Soft, true) => {
            steps.push((at, Step::Power(InstanceState::Running)));
            steps.push((at, Step::End(OperationState::Failed)));
            return steps;
        }
        (StopType::SoftFirst, true) => at = after(at, power.stop_time),
        _ => {}
    }
    if stop_charging {
        steps.push((at, Step::StopCharging(true)));
    }
    steps.push((at, Step::Power(InstanceState::Stopped)));
    steps.push((at, Step::End(OperationState::Success)));
    steps
}

/// How a start of one STOPPED instance goes: `fails` leaves it STOPPED, FAILED.
pub(crate) fn start_steps(now: Instant, fails: bool, power: &Power) -> Vec<(Instant, Step)> {
    let at = after(now, power.start_time);
    let mut steps = vec![(now, Step::Power(InstanceState::Starting))];
    if fails {
        steps.push((at, Step::Power(InstanceState::Stopped)));
        steps.push((at, Step::End(OperationState::Failed)));
    } else {
        steps.push((at, Step::StopCharging(false)));
        steps.push((at, Step::Power(InstanceState::Running)));
        steps.push((at, Step::End(OperationState::Success)));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn powers(steps: &[(Instant, Step)], t0: Instant) -> Vec<(u64, InstanceState)> {
        steps
            .iter()
            .filter_map(|(at, step)| match step {
                Step::Power(state) => Some(((*at - t0).as_millis() as u64, *state)),
                _ => None,
            })
            .collect()
    }

    fn timed() -> Power {
        Power {
            stop_time: Duration::from_millis(1000),
            start_time: Duration::from_millis(1500),
            ..Power::default()
        }
    }

    #[test]
    fn a_stop_goes_stopping_then_stopped_or_back_to_running() {
        use InstanceState::*;
        let t0 = Instant::now();
        let power = timed();
        let ok = stop_steps(t0, StopType::Soft, false, false, &power);
        assert_eq!(powers(&ok, t0), [(0, Stopping), (1000, Stopped)]);
        assert_eq!(ok.last().unwrap().1, Step::End(OperationState::Success));
        let failed = stop_steps(t0, StopType::Soft, false, true, &power);
        assert_eq!(powers(&failed, t0), [(0, Stopping), (1000, Running)]);
        assert_eq!(failed.last().unwrap().1, Step::End(OperationState::Failed));
        let forced = stop_steps(t0, StopType::SoftFirst, false, true, &power);
        assert_eq!(powers(&forced, t0), [(0, Stopping), (2000, Stopped)]);
        let hard = stop_steps(t0, StopType::Hard, true, true, &power);
        assert_eq!(powers(&hard, t0), [(0, Stopping), (1000, Stopped)]);
        assert!(hard.iter().any(|(_, s)| *s == Step::StopCharging(true)));
    }

    #[test]
    fn a_start_goes_starting_then_running_or_back_to_stopped() {
        use InstanceState::*;
        let t0 = Instant::now();
        let power = timed();
        let ok = start_steps(t0, false, &power);
        assert_eq!(powers(&ok, t0), [(0, Starting), (1500, Running)]);
        let failed = start_steps(t0, true, &power);
        assert_eq!(powers(&failed, t0), [(0, Starting), (1500, Stopped)]);
        assert_eq!(failed.last().unwrap().1, Step::End(OperationState::Failed));
    }

    #[test]
    fn force_stop_powers_off_changes_and_restarts_as_read() {
        use InstanceState::*;
        let t0 = Instant::now();
        let mut power = timed();
        let keys = ["skey-00000001".to_string()];
        let op = Duration::from_millis(300);
        let restart = key_pair_steps(t0, false, &keys, false, op, true, &power);
        assert_eq!(
            powers(&restart, t0),
            [
                (0, Stopping),
                (1000, Stopped),
                (1300, Starting),
                (2800, Running)
            ]
        );
        let change = restart
            .iter()
            .position(|(_, s)| matches!(s, Step::Keys { .. }))
            .unwrap();
        assert_eq!((restart[change].0 - t0).as_millis(), 1300);
        power.force_stop = ForceStopReading::LeftStopped;
        let left = key_pair_steps(t0, false, &keys, false, op, true, &power);
        assert_eq!(powers(&left, t0), [(0, Stopping), (1000, Stopped)]);
        assert_eq!(left.last().unwrap().0 - t0, Duration::from_millis(1300));
        // A STOPPED instance (or no ForceStop): no power change at all.
        let plain = key_pair_steps(t0, true, &keys, true, op, false, &power);
        assert!(powers(&plain, t0).is_empty());
        assert_eq!(plain, [(t0 + op, Step::End(OperationState::Failed))]);
    }

    #[test]
    fn readings_parse() {
        assert_eq!("restart".parse(), Ok(ForceStopReading::Restart));
        assert_eq!("left-stopped".parse(), Ok(ForceStopReading::LeftStopped));
        assert!("maybe".parse::<ForceStopReading>().is_err());
        let bad = Power {
            start_fail: 1.5,
            ..Power::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("start_fail")
        );
    }
}
