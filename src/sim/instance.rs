//! One instance: as the fleet file describes it (OS, state, settling and busy windows,
//! the faults it carries), and an operation accepted on it as timed steps.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// An instance's operating system family; only Linux instances may be unbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Linux,
    Windows,
}

impl Os {
    pub(crate) fn default_name(self) -> &'static str {
        match self {
            Os::Linux => "TencentOS Server 3.1 (TK4)",
            Os::Windows => "Windows Server 2019 DataCenter 64bit Chinese Version",
        }
    }
}

/// The CVM instance states, spelled as the API spells `InstanceState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Pending,
    LaunchFailed,
    Running,
    Stopped,
    Starting,
    Stopping,
    Rebooting,
    Shutdown,
    Terminating,
    EnterRescueMode,
    RescueMode,
    ExitRescueMode,
    EnterServiceLiveMigrate,
    ServiceLiveMigrate,
    ExitServiceLiveMigrate,
}

impl InstanceState {
    /// Every state, in the reference's order.
    pub const ALL: [InstanceState; 15] = [
        InstanceState::Pending,
        InstanceState::LaunchFailed,
        InstanceState::Running,
        InstanceState::Stopped,
        InstanceState::Starting,
        InstanceState::Stopping,
        InstanceState::Rebooting,
        InstanceState::Shutdown,
        InstanceState::Terminating,
        InstanceState::EnterRescueMode,
        InstanceState::RescueMode,
        InstanceState::ExitRescueMode,
        InstanceState::EnterServiceLiveMigrate,
        InstanceState::ServiceLiveMigrate,
        InstanceState::ExitServiceLiveMigrate,
    ];

    /// The API's spelling, e.g. `STOPPED`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "PENDING",
            InstanceState::LaunchFailed => "LAUNCH_FAILED",
            InstanceState::Running => "RUNNING",
            InstanceState::Stopped => "STOPPED",
            InstanceState::Starting => "STARTING",
            InstanceState::Stopping => "STOPPING",
            InstanceState::Rebooting => "REBOOTING",
            InstanceState::Shutdown => "SHUTDOWN",
            InstanceState::Terminating => "TERMINATING",
            InstanceState::EnterRescueMode => "ENTER_RESCUE_MODE",
            InstanceState::RescueMode => "RESCUE_MODE",
            InstanceState::ExitRescueMode => "EXIT_RESCUE_MODE",
            InstanceState::EnterServiceLiveMigrate => "ENTER_SERVICE_LIVE_MIGRATE",
            InstanceState::ServiceLiveMigrate => "SERVICE_LIVE_MIGRATE",
            InstanceState::ExitServiceLiveMigrate => "EXIT_SERVICE_LIVE_MIGRATE",
        }
    }

    /// Where a transitional state ends up when the fleet does not say; `None` for final states.
    pub fn default_settle_target(self) -> Option<InstanceState> {
        use InstanceState::*;
        match self {
            Pending | Starting | Rebooting => Some(Running),
            Stopping | ExitRescueMode => Some(Stopped),
            EnterRescueMode => Some(RescueMode),
            EnterServiceLiveMigrate | ServiceLiveMigrate | ExitServiceLiveMigrate => Some(Running),
            LaunchFailed | Running | Stopped | Shutdown | Terminating | RescueMode => None,
        }
    }
}

/// One instance as the fleet file describes it. Durations count from the moment the
/// simulator starts (or, in a snapshot, from the moment the snapshot was taken).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
    pub os: Os,
    /// `OsName` as DescribeInstances reports it; a typical name for `os` when empty.
    #[serde(default)]
    pub os_name: String,
    pub state: InstanceState,
    /// Stopped in "no charges when shut down" mode: UnsupportedOperation.StoppedModeStopCharging.
    #[serde(default)]
    pub stop_charging: bool,
    /// Blocked by the provider: UnsupportedOperation.InstanceStateBanning.
    #[serde(default)]
    pub banned: bool,
    /// Frozen (arrears): UnsupportedOperation.InstanceStateFreezing.
    #[serde(default)]
    pub frozen: bool,
    /// The key pairs bound to the instance.
    #[serde(default)]
    pub key_ids: Vec<String>,
    /// For this long the instance answers OperationDenied.InstanceOperationInProgress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_for_ms: Option<u64>,
    /// The state this one settles into; defaults to the state's usual successor
    /// (see [`InstanceState::default_settle_target`]). Setting it on a final state
    /// makes that state change too (a RUNNING instance an operator stops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settles_to: Option<InstanceState>,
    /// When the state settles; defaults to the simulator's `settle_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_after_ms: Option<u64>,
    /// `Placement.Zone`, e.g. `ap-guangzhou-3` (it must start with the region); when
    /// absent the instance is in `{region}-1` (see [`Instance::zone_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `Tags`: key -> value, e.g. `service` -> `web`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Its OS never shuts down: every SOFT stop of it ends FAILED and it stays RUNNING
    /// (SOFT_FIRST then forces it off; HARD always works).
    #[serde(default, skip_serializing_if = "is_false")]
    pub soft_stop_fails: bool,
    /// Every start of it ends FAILED and it stays STOPPED (a start that fails for good).
    #[serde(default, skip_serializing_if = "is_false")]
    pub start_fails: bool,
}

pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

impl Instance {
    /// A STOPPED Linux instance with no keys: the one kind that may be unbound.
    pub fn new(instance_id: impl Into<String>, region: impl Into<String>) -> Instance {
        Instance {
            instance_id: instance_id.into(),
            region: region.into(),
            os: Os::Linux,
            os_name: Os::Linux.default_name().to_string(),
            state: InstanceState::Stopped,
            stop_charging: false,
            banned: false,
            frozen: false,
            key_ids: Vec::new(),
            busy_for_ms: None,
            settles_to: None,
            settle_after_ms: None,
            zone: None,
            tags: BTreeMap::new(),
            soft_stop_fails: false,
            start_fails: false,
        }
    }

    /// `Placement.Zone`: the given zone, or `{region}-1`.
    pub fn zone_name(&self) -> String {
        self.zone
            .clone()
            .unwrap_or_else(|| format!("{}-1", self.region))
    }

    /// Places it in `zone` (e.g. `ap-guangzhou-3`).
    pub fn zone(mut self, zone: impl Into<String>) -> Instance {
        self.zone = Some(zone.into());
        self
    }

    /// Adds the tag `key` = `value`.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Instance {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Every SOFT stop of it fails (see [`Instance::soft_stop_fails`]).
    pub fn soft_stop_fails(mut self) -> Instance {
        self.soft_stop_fails = true;
        self
    }

    /// Every start of it fails (see [`Instance::start_fails`]).
    pub fn start_fails(mut self) -> Instance {
        self.start_fails = true;
        self
    }

    /// Sets the OS family and its typical `os_name`.
    pub fn os(mut self, os: Os) -> Instance {
        self.os = os;
        self.os_name = os.default_name().to_string();
        self
    }

    pub fn state(mut self, state: InstanceState) -> Instance {
        self.state = state;
        self
    }

    pub fn keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Instance {
        self.key_ids = keys.into_iter().map(Into::into).collect();
        self
    }

    pub fn stop_charging(mut self) -> Instance {
        self.stop_charging = true;
        self
    }

    pub fn banned(mut self) -> Instance {
        self.banned = true;
        self
    }

    pub fn frozen(mut self) -> Instance {
        self.frozen = true;
        self
    }

    /// Busy (OperationDenied.InstanceOperationInProgress) for `window` from start.
    pub fn busy_for(mut self, window: Duration) -> Instance {
        self.busy_for_ms = Some(duration_ms(window));
        self
    }

    /// Settles into `to` after `after` from start.
    pub fn settles(mut self, to: InstanceState, after: Duration) -> Instance {
        self.settles_to = Some(to);
        self.settle_after_ms = Some(duration_ms(after));
        self
    }
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `LatestOperationState`, spelled as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperationState {
    Operating,
    Success,
    Failed,
}

impl OperationState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OperationState::Operating => "OPERATING",
            OperationState::Success => "SUCCESS",
            OperationState::Failed => "FAILED",
        }
    }
}

/// One thing an operation does to its instance at its moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// `InstanceState` becomes this one (recorded in the power timeline).
    Power(InstanceState),
    /// The keys change: Associate adds `keys`, Disassociate removes them.
    Keys { associate: bool, keys: Vec<String> },
    /// Stopped in `STOP_CHARGING` mode (true), or started again (false).
    StopCharging(bool),
    /// `LatestOperationState` becomes SUCCESS or FAILED: the operation is over.
    End(OperationState),
}

/// An accepted operation on one instance: asynchronous, as on the cloud. A key-pair
/// change, a stop, a start, or a key-pair change with ForceStop (a hard stop, the change,
/// and a start again): each is a list of timed steps (see `sim::power`).
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    /// `LatestOperation`: the action's name.
    pub action: &'static str,
    /// `LatestOperationRequestId`: the RequestId of the reply that accepted it.
    pub request_id: String,
    pub state: OperationState,
    /// What is still to happen, in time order; the last step is an [`Step::End`].
    pub steps: VecDeque<(Instant, Step)>,
}

impl Operation {
    /// An operation of `action` accepted with `request_id`, OPERATING until its steps end.
    pub(crate) fn new(
        action: &'static str,
        request_id: &str,
        steps: impl IntoIterator<Item = (Instant, Step)>,
    ) -> Operation {
        Operation {
            action,
            request_id: request_id.to_string(),
            state: OperationState::Operating,
            steps: steps.into_iter().collect(),
        }
    }

    /// When it ends, while it runs.
    pub(crate) fn completes_at(&self) -> Option<Instant> {
        if self.state != OperationState::Operating {
            return None;
        }
        self.steps.back().map(|(at, _)| *at)
    }
}
