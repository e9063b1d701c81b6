//! The CVM actions of a run (the incident's are in `incident`): parameter validation in
//! the API's order of concern, the all-or-nothing instance checks, the asynchronous key-pair
//! and power operations (their steps in `sim::power`), and the replies.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::fleet::{InstanceState, LiveFleet, LiveInstance, Operation, Os};
use super::power::{self, Power};
use super::request::{
    ApiError, Executed, bool_param, check_known, dedup, instance_malformed, instance_not_found,
    key_malformed, key_not_found, limit_exceeded, missing, paging, string_list, string_param,
};
use crate::cvm::{STOPPED_MODE_KEEP_CHARGING, STOPPED_MODE_STOP_CHARGING, StopType};
use crate::ids::{self, MAX_IDS_PER_REQUEST};

/// The actions the simulator serves: the API vocabulary shared with the client.
pub(crate) use crate::cvm::Action;

/// A request that passed validation: instances are indexes into the live fleet.
#[derive(Debug)]
pub(crate) enum Validated {
    Bind {
        associate: bool,
        instances: Vec<usize>,
        keys: Vec<String>,
        force_stop: bool,
    },
    DescribeInstances {
        selected: Vec<usize>,
        offset: usize,
        limit: usize,
    },
    DescribeKeyPairs {
        keys: Vec<String>,
        offset: usize,
        limit: usize,
    },
    DescribeRegions,
    /// StopInstances of RUNNING instances (`StopType`, default SOFT; `StoppedMode`,
    /// default KEEP_CHARGING; the deprecated `ForceStop=true` reads as HARD).
    Stop {
        instances: Vec<usize>,
        stop_type: StopType,
        stop_charging: bool,
    },
    /// StartInstances of STOPPED instances.
    Start {
        instances: Vec<usize>,
    },
    /// One of the incident's actions (key pairs, templates, launch configurations).
    Incident(super::incident::Validated),
}

/// How an accepted operation runs: the RequestId its reply carries, how long a
/// key-pair change stays OPERATING, whether it ends FAILED, and for the power actions
/// the timings and the seeded draws.
#[derive(Debug, Clone)]
pub(crate) struct Acceptance {
    pub request_id: String,
    pub operation_time: Duration,
    pub fails: bool,
    pub power: Power,
    /// One uniform draw in 0..1 per instance of a Stop or Start, in request order: below
    /// `soft_stop_fail` (or `start_fail`) that instance's operation fails.
    pub power_draws: Vec<f64>,
    /// A StartInstances refused outright (`ResourceInsufficient`), nothing started.
    pub start_refused: bool,
}

/// Checks a request's parameters against the fleet, in the API's order of concern:
/// unknown or mistyped parameters, MissingParameter, LimitExceeded, Malformed, NotFound.
/// An instance in another region than `region` is not found.
pub(crate) fn validate(
    action: Action,
    params: &Map<String, Value>,
    fleet: &LiveFleet,
    region: &str,
) -> Result<Validated, ApiError> {
    match action {
        Action::DisassociateInstancesKeyPairs | Action::AssociateInstancesKeyPairs => {
            check_known(params, &["InstanceIds", "KeyIds", "ForceStop"])?;
            let instance_ids = string_list(params, "InstanceIds")?.unwrap_or_default();
            let key_ids = string_list(params, "KeyIds")?.unwrap_or_default();
            let force_stop = bool_param(params, "ForceStop")?.unwrap_or(false);
            if instance_ids.is_empty() {
                return Err(missing("InstanceIds"));
            }
            if key_ids.is_empty() {
                return Err(missing("KeyIds"));
            }
            if instance_ids.len() > MAX_IDS_PER_REQUEST || key_ids.len() > MAX_IDS_PER_REQUEST {
                return Err(limit_exceeded());
            }
            if !instance_ids.iter().all(|id| ids::is_instance_id(id)) {
                return Err(instance_malformed());
            }
            if !key_ids.iter().all(|id| ids::is_key_id(id)) {
                return Err(key_malformed());
            }
            let instances = dedup(instance_ids)
                .iter()
                .map(|id| fleet.find(id, region).ok_or_else(instance_not_found))
                .collect::<Result<Vec<_>, _>>()?;
            let keys = dedup(key_ids);
            if !keys.iter().all(|k| fleet.keys.contains(k)) {
                return Err(key_not_found());
            }
            Ok(Validated::Bind {
                associate: action == Action::AssociateInstancesKeyPairs,
                instances,
                keys,
                force_stop,
            })
        }
        Action::DescribeInstances => {
            check_known(params, &["InstanceIds", "Offset", "Limit"])?;
            let instance_ids = string_list(params, "InstanceIds")?;
            let (offset, limit) = paging(params)?;
            let selected = match instance_ids {
                Some(list) => {
                    if list.len() > MAX_IDS_PER_REQUEST {
                        return Err(limit_exceeded());
                    }
                    if !list.iter().all(|id| ids::is_instance_id(id)) {
                        return Err(instance_malformed());
                    }
                    // Like the real API, ids that are not found are left out, not an error.
                    dedup(list)
                        .iter()
                        .filter_map(|id| fleet.find(id, region))
                        .collect()
                }
                None => (0..fleet.instances.len())
                    .filter(|&n| fleet.instances[n].spec.region == region)
                    .collect(),
            };
            // Sorted by instance id, so pages by Offset/Limit are stable and disjoint.
            let mut selected: Vec<usize> = selected;
            selected.sort_by(|&a, &b| {
                fleet.instances[a]
                    .spec
                    .instance_id
                    .cmp(&fleet.instances[b].spec.instance_id)
            });
            Ok(Validated::DescribeInstances {
                selected,
                offset,
                limit,
            })
        }
        Action::DescribeKeyPairs => {
            check_known(params, &["KeyIds", "Offset", "Limit"])?;
            let key_ids = string_list(params, "KeyIds")?;
            let (offset, limit) = paging(params)?;
            let keys = match key_ids {
                Some(list) => {
                    if list.len() > MAX_IDS_PER_REQUEST {
                        return Err(limit_exceeded());
                    }
                    if !list.iter().all(|id| ids::is_key_id(id)) {
                        return Err(key_malformed());
                    }
                    let list = dedup(list);
                    if !list.iter().all(|k| fleet.keys.contains(k)) {
                        return Err(key_not_found());
                    }
                    list
                }
                None => fleet.keys.iter().cloned().collect(),
            };
            Ok(Validated::DescribeKeyPairs {
                keys,
                offset,
                limit,
            })
        }
        Action::DescribeRegions => {
            check_known(params, &[])?;
            Ok(Validated::DescribeRegions)
        }
        Action::StopInstances | Action::StartInstances => {
            let stop = action == Action::StopInstances;
            let allowed: &[&str] = if stop {
                &["InstanceIds", "StopType", "StoppedMode", "ForceStop"]
            } else {
                &["InstanceIds"]
            };
            check_known(params, allowed)?;
            let instance_ids = string_list(params, "InstanceIds")?.unwrap_or_default();
            let (stop_type, stop_charging) = if stop {
                stop_parameters(params)?
            } else {
                (StopType::Soft, false)
            };
            if instance_ids.is_empty() {
                return Err(missing("InstanceIds"));
            }
            if instance_ids.len() > MAX_IDS_PER_REQUEST {
                return Err(limit_exceeded());
            }
            if !instance_ids.iter().all(|id| ids::is_instance_id(id)) {
                return Err(instance_malformed());
            }
            let instances = dedup(instance_ids)
                .iter()
                .map(|id| fleet.find(id, region).ok_or_else(instance_not_found))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if stop {
                Validated::Stop {
                    instances,
                    stop_type,
                    stop_charging,
                }
            } else {
                Validated::Start { instances }
            })
        }
        Action::ImportKeyPair
        | Action::DeleteKeyPairs
        | Action::DescribeLaunchTemplates
        | Action::DescribeLaunchTemplateVersions
        | Action::CreateLaunchTemplateVersion
        | Action::ModifyLaunchTemplateDefaultVersion
        | Action::DescribeLaunchConfigurations
        | Action::ModifyLaunchConfigurationAttributes => {
            super::incident::validate(action, params, fleet, region).map(Validated::Incident)
        }
        // One account has no one to assume a role into: `sim::accounts` serves these.
        Action::AssumeRole | Action::DescribeOrganizationMembers => Err(ApiError::new(
            "InvalidAction",
            "This simulator holds one account; start it with --add-account to serve STS and the Organization.",
        )),
    }
}

/// StopInstances' `StopType`, `StoppedMode` and the deprecated `ForceStop` (refused
/// together with `StopType`, as documented): the stop type and whether STOP_CHARGING.
fn stop_parameters(params: &Map<String, Value>) -> Result<(StopType, bool), ApiError> {
    let stop_type = string_param(params, "StopType")?;
    let stopped_mode = string_param(params, "StoppedMode")?;
    let force_stop = bool_param(params, "ForceStop")?;
    if stop_type.is_some() && force_stop.is_some() {
        return Err(ApiError::new(
            "InvalidParameterCombination",
            "The parameters `StopType` and `ForceStop` cannot be specified at the same time.",
        ));
    }
    let stop_type = match stop_type.as_deref() {
        None if force_stop == Some(true) => StopType::Hard,
        None => StopType::Soft,
        Some(name) => StopType::from_api_name(name).ok_or_else(|| {
            ApiError::new(
                "InvalidParameterValue",
                format!(
                    "Incorrect parameter value. `StopType` {:?} is not SOFT, SOFT_FIRST or HARD.",
                    ids::shorten(name)
                ),
            )
        })?,
    };
    let stop_charging = match stopped_mode.as_deref() {
        None | Some(STOPPED_MODE_KEEP_CHARGING) => false,
        Some(STOPPED_MODE_STOP_CHARGING) => true,
        Some(other) => {
            return Err(ApiError::new(
                "InvalidParameterValue",
                format!(
                    "Incorrect parameter value. `StoppedMode` {:?} is not KEEP_CHARGING or STOP_CHARGING.",
                    ids::shorten(other)
                ),
            ));
        }
    };
    Ok((stop_type, stop_charging))
}

/// Display names of the regions the real API names; any other region is named by its id.
const REGION_NAMES: &[(&str, &str)] = &[
    ("ap-beijing", "North China(Beijing)"),
    ("ap-chengdu", "Southwest China(Chengdu)"),
    ("ap-chongqing", "Southwest China(Chongqing)"),
    ("ap-guangzhou", "South China(Guangzhou)"),
    (
        "ap-hongkong",
        "Hong Kong, Macau and Taiwan (China)(Hong Kong, China)",
    ),
    ("ap-nanjing", "East China(Nanjing)"),
    ("ap-shanghai", "East China(Shanghai)"),
    ("ap-singapore", "Southeast Asia(Singapore)"),
    ("ap-tokyo", "Northeast Asia(Tokyo)"),
    ("eu-frankfurt", "Europe(Frankfurt)"),
    ("na-siliconvalley", "West US(Silicon Valley)"),
];

fn region_name(region: &str) -> &str {
    REGION_NAMES
        .iter()
        .find(|(id, _)| *id == region)
        .map_or(region, |(_, name)| name)
}

/// An `UnsupportedOperation.{code}` refusal.
fn unsupported(code: &str, message: &str) -> Option<ApiError> {
    Some(ApiError::new(
        &format!("UnsupportedOperation.{code}"),
        message,
    ))
}

fn in_progress() -> Option<ApiError> {
    Some(ApiError::new(
        "OperationDenied.InstanceOperationInProgress",
        "The instance has an operation in progress. Please try again later.",
    ))
}

/// The refusal for an instance in `state` when the action needs it STOPPED: `None`
/// for STOPPED, the documented code for every other state.
fn state_refusal(state: InstanceState) -> Option<ApiError> {
    use InstanceState::*;
    match state {
        Stopped => None,
        Running => unsupported(
            "InstanceStateRunning",
            "Running instances do not support this operation.",
        ),
        Pending => unsupported(
            "InstanceStatePending",
            "The instances are being created, and this operation is not supported.",
        ),
        LaunchFailed => Some(ApiError::new(
            "InvalidInstance.NotSupported",
            "This instance is not supported.",
        )),
        Starting => unsupported(
            "InstanceStateStarting",
            "The instance is starting up, and this operation is not supported.",
        ),
        Stopping => unsupported(
            "InstanceStateStopping",
            "The instance is being shut down, and this operation is not supported.",
        ),
        Rebooting => unsupported(
            "InstanceStateRebooting",
            "The instances are being restarted, and this operation is not supported.",
        ),
        Shutdown => unsupported(
            "InstanceStateShutdown",
            "Isolated instances do not support this operation.",
        ),
        Terminating => unsupported(
            "InstanceStateTerminating",
            "The instance is being terminated, and the operation is not supported.",
        ),
        EnterRescueMode => unsupported(
            "InstanceStateEnterRescueMode",
            "Instances are entering the rescue mode, and this operation is not supported.",
        ),
        RescueMode => unsupported(
            "InstanceStateRescueMode",
            "Instances in the rescue mode are not available for this operation.",
        ),
        // No documented code for these transitions: the generic "operation in progress".
        ExitRescueMode | EnterServiceLiveMigrate | ServiceLiveMigrate | ExitServiceLiveMigrate => {
            in_progress()
        }
    }
}

/// Banned or frozen instances take no operation at all.
fn account_refusal(instance: &LiveInstance) -> Option<ApiError> {
    if instance.spec.banned {
        return unsupported(
            "InstanceStateBanning",
            "This CVM is blocked. Please submit a ticket.",
        );
    }
    if instance.spec.frozen {
        return unsupported(
            "InstanceStateFreezing",
            "The operation is not supported for the frozen instances.",
        );
    }
    None
}

/// Why this instance may not be operated on now, with the documented code and message.
/// Checked in this order: banned, frozen, Windows, state, stop-charging, busy window.
fn blocker(instance: &LiveInstance, force_stop: bool, now: Instant) -> Option<ApiError> {
    let spec = &instance.spec;
    if let Some(refusal) = account_refusal(instance) {
        return Some(refusal);
    }
    if spec.os == Os::Windows {
        // The one documented message that names the instance.
        return Some(ApiError::new(
            "UnsupportedOperation.InstanceOsWindows",
            format!(
                "The instance {} with the {} operating system does not support this operation.",
                spec.instance_id, spec.os_name
            ),
        ));
    }
    let by_state = match spec.state {
        InstanceState::Running if force_stop => None,
        state => state_refusal(state),
    };
    if by_state.is_some() {
        return by_state;
    }
    if spec.stop_charging {
        return unsupported(
            "StoppedModeStopCharging",
            "The instance does not support the no charges when shut down feature.",
        );
    }
    // A busy window (an operation started elsewhere) or an accepted operation that has
    // not completed: the same refusal.
    if instance.is_busy(now) || instance.is_operating(now) {
        return in_progress();
    }
    None
}

/// Why this instance may not be stopped (`stop`) or started now. Checked in this order:
/// banned, frozen, state, busy window. Windows instances power off and on like any other.
fn power_blocker(instance: &LiveInstance, stop: bool, now: Instant) -> Option<ApiError> {
    use InstanceState::*;
    if let Some(refusal) = account_refusal(instance) {
        return Some(refusal);
    }
    let by_state = match (instance.spec.state, stop) {
        (Running, true) => None,
        (Stopped, true) => unsupported(
            "InstanceStateStopped",
            "The instance is already shut down, and this operation is not supported.",
        ),
        (Stopped, false) => None,
        (Running, false) => unsupported(
            "InstanceStateRunning",
            "The instance is already running, and this operation is not supported.",
        ),
        (state, _) => state_refusal(state),
    };
    if by_state.is_some() {
        return by_state;
    }
    if instance.is_busy(now) || instance.is_operating(now) {
        return in_progress();
    }
    None
}

/// `LatestOperation`, `LatestOperationState`, `LatestOperationRequestId` of an instance:
/// its last key-pair, stop or start operation; a busy window shows as an unnamed OPERATING one; null
/// when there was none, as the real API reports an instance nothing was done to.
fn latest_operation(live: &LiveInstance, now: Instant) -> (Value, Value, Value) {
    if live.is_busy(now) && !live.is_operating(now) {
        return (Value::Null, json!("OPERATING"), Value::Null);
    }
    match &live.operation {
        Some(op) => (
            json!(op.action),
            json!(op.state.as_str()),
            json!(op.request_id),
        ),
        None => (Value::Null, Value::Null, Value::Null),
    }
}

fn page<T: Clone>(items: &[T], offset: usize, limit: usize) -> Vec<T> {
    items.iter().skip(offset).take(limit).cloned().collect()
}

/// Carries out a validated request. A bind is all-or-nothing: the first instance (in
/// request order) that may not be operated on fails the whole request, unchanged;
/// otherwise it starts one operation per instance as `acceptance` says.
pub(crate) fn execute(
    request: &Validated,
    fleet: &mut LiveFleet,
    region: &str,
    now: Instant,
    acceptance: &Acceptance,
) -> Result<Executed, ApiError> {
    match request {
        Validated::Bind {
            associate,
            instances,
            keys,
            force_stop,
        } => {
            if let Some(err) = instances
                .iter()
                .find_map(|&n| blocker(&fleet.instances[n], *force_stop, now))
            {
                return Err(err);
            }
            let action = if *associate {
                Action::AssociateInstancesKeyPairs
            } else {
                Action::DisassociateInstancesKeyPairs
            };
            for &n in instances {
                let running_force_stop =
                    *force_stop && fleet.instances[n].spec.state == InstanceState::Running;
                let steps = power::key_pair_steps(
                    now,
                    *associate,
                    keys,
                    acceptance.fails,
                    acceptance.operation_time,
                    running_force_stop,
                    &acceptance.power,
                );
                fleet.start_operation(
                    n,
                    Operation::new(action.name(), &acceptance.request_id, steps),
                    now,
                );
            }
            Ok(Executed {
                data: Map::new(),
                applied: true,
            })
        }
        Validated::Stop {
            instances,
            stop_type,
            stop_charging,
        } => {
            if let Some(err) = instances
                .iter()
                .find_map(|&n| power_blocker(&fleet.instances[n], true, now))
            {
                return Err(err);
            }
            for (i, &n) in instances.iter().enumerate() {
                let draw = acceptance.power_draws.get(i).copied().unwrap_or(1.0);
                let soft_fails = fleet.instances[n].spec.soft_stop_fails
                    || draw < acceptance.power.soft_stop_fail;
                let steps = power::stop_steps(
                    now,
                    *stop_type,
                    *stop_charging,
                    soft_fails,
                    &acceptance.power,
                );
                fleet.start_operation(
                    n,
                    Operation::new(Action::StopInstances.name(), &acceptance.request_id, steps),
                    now,
                );
            }
            Ok(Executed {
                data: Map::new(),
                applied: true,
            })
        }
        Validated::Start { instances } => {
            if let Some(err) = instances
                .iter()
                .find_map(|&n| power_blocker(&fleet.instances[n], false, now))
            {
                return Err(err);
            }
            if acceptance.start_refused {
                return Err(ApiError::new(
                    "ResourceInsufficient",
                    "Insufficient resources to start the instance. Please try again later.",
                ));
            }
            for (i, &n) in instances.iter().enumerate() {
                let draw = acceptance.power_draws.get(i).copied().unwrap_or(1.0);
                let fails =
                    fleet.instances[n].spec.start_fails || draw < acceptance.power.start_fail;
                let steps = power::start_steps(now, fails, &acceptance.power);
                fleet.start_operation(
                    n,
                    Operation::new(Action::StartInstances.name(), &acceptance.request_id, steps),
                    now,
                );
            }
            Ok(Executed {
                data: Map::new(),
                applied: true,
            })
        }
        Validated::DescribeInstances {
            selected,
            offset,
            limit,
        } => {
            let set: Vec<Value> = page(selected, *offset, *limit)
                .into_iter()
                .map(|n| {
                    let live = &fleet.instances[n];
                    let spec = &live.spec;
                    let (operation, state, request_id) = latest_operation(live, now);
                    json!({
                        "InstanceId": spec.instance_id,
                        "InstanceState": spec.state.as_str(),
                        "OsName": spec.os_name,
                        "LoginSettings": { "KeyIds": spec.key_ids },
                        "LatestOperation": operation,
                        "LatestOperationState": state,
                        "LatestOperationRequestId": request_id,
                        "Placement": { "Zone": spec.zone_name() },
                        "Tags": spec
                            .tags
                            .iter()
                            .map(|(key, value)| json!({ "Key": key, "Value": value }))
                            .collect::<Vec<_>>(),
                        "StopChargingMode": match (spec.stop_charging, spec.state) {
                            (true, _) => STOPPED_MODE_STOP_CHARGING,
                            (false, InstanceState::Stopped) => STOPPED_MODE_KEEP_CHARGING,
                            _ => "NOT_APPLICABLE",
                        },
                    })
                })
                .collect();
            let mut data = Map::new();
            data.insert("TotalCount".into(), json!(selected.len()));
            data.insert("InstanceSet".into(), Value::Array(set));
            Ok(Executed {
                data,
                applied: false,
            })
        }
        Validated::DescribeKeyPairs {
            keys,
            offset,
            limit,
        } => {
            let set: Vec<Value> = page(keys, *offset, *limit)
                .into_iter()
                .map(|key| super::incident::key_pair_json(fleet, &key, region))
                .collect();
            let mut data = Map::new();
            data.insert("TotalCount".into(), json!(keys.len()));
            data.insert("KeyPairSet".into(), Value::Array(set));
            Ok(Executed {
                data,
                applied: false,
            })
        }
        Validated::DescribeRegions => {
            // Every region something lives in: instances, launch templates, launch
            // configurations.
            let regions: std::collections::BTreeSet<&str> = fleet
                .instances
                .iter()
                .map(|i| i.spec.region.as_str())
                .chain(fleet.incident.templates.iter().map(|t| t.region.as_str()))
                .chain(
                    fleet
                        .incident
                        .configurations
                        .iter()
                        .map(|c| c.region.as_str()),
                )
                .collect();
            let set: Vec<Value> = regions
                .iter()
                .map(|r| {
                    json!({
                        "Region": r,
                        "RegionName": region_name(r),
                        "RegionState": "AVAILABLE",
                    })
                })
                .collect();
            let mut data = Map::new();
            data.insert("TotalCount".into(), json!(set.len()));
            data.insert("RegionSet".into(), Value::Array(set));
            Ok(Executed {
                data,
                applied: false,
            })
        }
        Validated::Incident(request) => super::incident::execute(request, fleet),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::fleet::{Fleet, Instance};

    const GZ: &str = "ap-guangzhou";

    fn fleet(start: Instant) -> LiveFleet {
        let fleet = Fleet::new()
            .with(Instance::new("ins-00000002", GZ).keys(["skey-0000000a", "skey-0000000b"]))
            .with(Instance::new("ins-00000001", GZ).keys(["skey-0000000a"]))
            .with(Instance::new("ins-00000009", "ap-shanghai").keys(["skey-0000000a"]));
        LiveFleet::new(fleet, start, Duration::from_secs(1))
    }

    fn bind(action: Action, fleet: &LiveFleet, instances: &[&str], keys: &[&str]) -> Validated {
        let params = json!({"InstanceIds": instances, "KeyIds": keys});
        validate(action, params.as_object().unwrap(), fleet, GZ).unwrap()
    }

    fn accepted(request_id: &str, operation_time: Duration, fails: bool) -> Acceptance {
        Acceptance {
            request_id: request_id.to_string(),
            operation_time,
            fails,
            power: Power::default(),
            power_draws: Vec::new(),
            start_refused: false,
        }
    }

    /// DescribeInstances' item for `id`, after settling at `now` as the server does.
    fn describe(fleet: &mut LiveFleet, id: &str, now: Instant) -> Value {
        fleet.settle(now);
        let params = json!({"InstanceIds": [id]});
        let request = validate(
            Action::DescribeInstances,
            params.as_object().unwrap(),
            fleet,
            GZ,
        )
        .unwrap();
        let done = execute(
            &request,
            fleet,
            GZ,
            now,
            &accepted("r-read", Duration::ZERO, false),
        )
        .unwrap();
        done.data["InstanceSet"][0].clone()
    }

    #[test]
    fn an_operation_is_operating_then_succeeds_and_only_then_changes_the_keys() {
        let t0 = Instant::now();
        let mut live = fleet(t0);
        let unbind = bind(
            Action::DisassociateInstancesKeyPairs,
            &live,
            &["ins-00000002"],
            &["skey-0000000a"],
        );
        let op_time = Duration::from_secs(5);
        let done = execute(&unbind, &mut live, GZ, t0, &accepted("r-1", op_time, false)).unwrap();
        assert!(done.applied);

        let during = describe(&mut live, "ins-00000002", t0 + Duration::from_secs(1));
        assert_eq!(during["LatestOperation"], "DisassociateInstancesKeyPairs");
        assert_eq!(during["LatestOperationState"], "OPERATING");
        assert_eq!(during["LatestOperationRequestId"], "r-1");
        assert_eq!(
            during["LoginSettings"]["KeyIds"],
            json!(["skey-0000000a", "skey-0000000b"]),
            "the keys change only when the operation completes"
        );
        // A second operation on it meanwhile is refused, and changes nothing.
        let again = bind(
            Action::AssociateInstancesKeyPairs,
            &live,
            &["ins-00000001", "ins-00000002"],
            &["skey-0000000b"],
        );
        let refused = execute(
            &again,
            &mut live,
            GZ,
            t0 + Duration::from_secs(1),
            &accepted("r-2", Duration::ZERO, false),
        )
        .unwrap_err();
        assert_eq!(refused.code, "OperationDenied.InstanceOperationInProgress");
        assert_eq!(live.instances[1].spec.key_ids, ["skey-0000000a"]);

        let after = describe(&mut live, "ins-00000002", t0 + op_time);
        assert_eq!(after["LatestOperationState"], "SUCCESS");
        assert_eq!(after["LatestOperationRequestId"], "r-1");
        assert_eq!(after["LoginSettings"]["KeyIds"], json!(["skey-0000000b"]));
        // Completed: the instance takes operations again. Associate adds, never removes.
        execute(
            &again,
            &mut live,
            GZ,
            t0 + op_time,
            &accepted("r-3", Duration::ZERO, false),
        )
        .unwrap();
        let added = describe(&mut live, "ins-00000001", t0 + op_time);
        assert_eq!(added["LatestOperation"], "AssociateInstancesKeyPairs");
        assert_eq!(
            added["LatestOperationState"], "SUCCESS",
            "zero time: at once"
        );
        assert_eq!(
            added["LoginSettings"]["KeyIds"],
            json!(["skey-0000000a", "skey-0000000b"])
        );
    }

    #[test]
    fn an_endless_operation_time_does_not_overflow_the_clock() {
        let t0 = Instant::now();
        let mut live = fleet(t0);
        let unbind = bind(
            Action::DisassociateInstancesKeyPairs,
            &live,
            &["ins-00000001"],
            &["skey-0000000a"],
        );
        execute(
            &unbind,
            &mut live,
            GZ,
            t0,
            &accepted("r", Duration::MAX, false),
        )
        .unwrap();
        let later = t0 + Duration::from_secs(3600 * 24 * 365);
        assert_eq!(
            describe(&mut live, "ins-00000001", later)["LatestOperationState"],
            "OPERATING"
        );
    }

    #[test]
    fn a_failed_operation_leaves_the_keys() {
        let t0 = Instant::now();
        let mut live = fleet(t0);
        let unbind = bind(
            Action::DisassociateInstancesKeyPairs,
            &live,
            &["ins-00000001", "ins-00000002"],
            &["skey-0000000a"],
        );
        let op_time = Duration::from_millis(200);
        execute(&unbind, &mut live, GZ, t0, &accepted("r-f", op_time, true)).unwrap();
        assert_eq!(
            describe(&mut live, "ins-00000001", t0)["LatestOperationState"],
            "OPERATING"
        );
        for id in ["ins-00000001", "ins-00000002"] {
            let item = describe(&mut live, id, t0 + op_time);
            assert_eq!(item["LatestOperationState"], "FAILED", "{id}");
            assert_eq!(item["LatestOperationRequestId"], "r-f", "{id}");
            assert!(
                item["LoginSettings"]["KeyIds"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("skey-0000000a")),
                "{id}: {item}"
            );
        }
    }

    #[test]
    fn nothing_done_reads_as_null_and_listing_is_sorted() {
        let t0 = Instant::now();
        let mut live = fleet(t0);
        let item = describe(&mut live, "ins-00000001", t0);
        assert_eq!(item["LatestOperation"], Value::Null);
        assert_eq!(item["LatestOperationState"], Value::Null);
        assert_eq!(item["LatestOperationRequestId"], Value::Null);
        let list = validate(Action::DescribeInstances, &Map::new(), &live, GZ).unwrap();
        let done = execute(
            &list,
            &mut live,
            GZ,
            t0,
            &accepted("r", Duration::ZERO, false),
        )
        .unwrap();
        assert_eq!(done.data["TotalCount"], json!(2));
        let ids: Vec<&str> = done.data["InstanceSet"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["InstanceId"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            ["ins-00000001", "ins-00000002"],
            "by id, not fleet order"
        );
    }

    #[test]
    fn describe_regions_lists_the_fleets_regions_from_any_region() {
        let t0 = Instant::now();
        let mut live = fleet(t0);
        for region in [GZ, "ap-tokyo"] {
            let request = validate(Action::DescribeRegions, &Map::new(), &live, region).unwrap();
            let done = execute(
                &request,
                &mut live,
                region,
                t0,
                &accepted("r", Duration::ZERO, false),
            )
            .unwrap();
            assert_eq!(done.data["TotalCount"], json!(2));
            assert_eq!(
                done.data["RegionSet"],
                json!([
                    {"Region": "ap-guangzhou", "RegionName": "South China(Guangzhou)", "RegionState": "AVAILABLE"},
                    {"Region": "ap-shanghai", "RegionName": "East China(Shanghai)", "RegionState": "AVAILABLE"},
                ])
            );
        }
        let params = json!({"Offset": 0});
        let err = validate(
            Action::DescribeRegions,
            params.as_object().unwrap(),
            &live,
            GZ,
        )
        .unwrap_err();
        assert_eq!(err.code, "UnknownParameter");
    }

    mod power {
        use super::*;
        use crate::sim::ForceStopReading;

        const S: Duration = Duration::from_millis(1000);
        const T: Duration = Duration::from_millis(1500);
        const OP: Duration = Duration::from_millis(300);

        /// Two RUNNING instances (one Windows) and one STOPPED, in zones 3 and 4.
        fn live(start: Instant) -> LiveFleet {
            let fleet = Fleet::new()
                .with(
                    Instance::new("ins-0000000r", GZ)
                        .state(InstanceState::Running)
                        .zone("ap-guangzhou-3")
                        .tag("service", "web")
                        .keys(["skey-0000000a"]),
                )
                .with(
                    Instance::new("ins-0000000w", GZ)
                        .os(Os::Windows)
                        .state(InstanceState::Running)
                        .zone("ap-guangzhou-4"),
                )
                .with(Instance::new("ins-0000000s", GZ).keys(["skey-0000000a"]));
            LiveFleet::new(fleet, start, Duration::from_secs(1))
        }

        fn timed() -> Power {
            Power {
                stop_time: S,
                start_time: T,
                ..Power::default()
            }
        }

        fn acceptance(id: &str, power: Power, draws: &[f64], refused: bool) -> Acceptance {
            Acceptance {
                request_id: id.to_string(),
                operation_time: OP,
                fails: false,
                power,
                power_draws: draws.to_vec(),
                start_refused: refused,
            }
        }

        fn request(
            fleet: &LiveFleet,
            action: Action,
            params: Value,
        ) -> Result<Validated, ApiError> {
            validate(action, params.as_object().unwrap(), fleet, GZ)
        }

        fn stop(fleet: &LiveFleet, ids: &[&str]) -> Validated {
            request(
                fleet,
                Action::StopInstances,
                json!({"InstanceIds": ids, "StopType": "SOFT", "StoppedMode": "KEEP_CHARGING"}),
            )
            .unwrap()
        }

        fn start(fleet: &LiveFleet, ids: &[&str]) -> Validated {
            request(fleet, Action::StartInstances, json!({"InstanceIds": ids})).unwrap()
        }

        fn state_of(fleet: &mut LiveFleet, id: &str, now: Instant) -> (String, Value, Value) {
            let item = describe(fleet, id, now);
            (
                item["InstanceState"].as_str().unwrap().to_string(),
                item["LatestOperationState"].clone(),
                item["LatestOperationRequestId"].clone(),
            )
        }

        fn states(fleet: &LiveFleet, id: &str) -> Vec<(i64, InstanceState)> {
            fleet
                .timeline
                .events()
                .into_iter()
                .filter(|e| e.instance_id == id)
                .map(|e| (e.at_ms, e.state))
                .collect()
        }

        #[test]
        fn a_stop_then_a_start_go_through_their_states_in_their_times() {
            use InstanceState::*;
            let t0 = Instant::now();
            let mut fleet = live(t0);
            let power = timed();
            let both = stop(&fleet, &["ins-0000000r", "ins-0000000w"]);
            execute(
                &both,
                &mut fleet,
                GZ,
                t0,
                &acceptance("r-stop", power, &[0.5, 0.5], false),
            )
            .unwrap();
            let during = describe(&mut fleet, "ins-0000000r", t0 + S / 2);
            assert_eq!(during["InstanceState"], "STOPPING");
            assert_eq!(during["LatestOperation"], "StopInstances");
            assert_eq!(during["LatestOperationState"], "OPERATING");
            assert_eq!(during["LatestOperationRequestId"], "r-stop");
            assert_eq!(during["Placement"]["Zone"], "ap-guangzhou-3");
            assert_eq!(during["Tags"], json!([{"Key": "service", "Value": "web"}]));
            // The keys cannot change while it stops.
            let unbind = bind(
                Action::DisassociateInstancesKeyPairs,
                &fleet,
                &["ins-0000000r"],
                &["skey-0000000a"],
            );
            let refused = execute(
                &unbind,
                &mut fleet,
                GZ,
                t0 + S / 2,
                &accepted("r-x", OP, false),
            )
            .unwrap_err();
            assert_eq!(refused.code, "UnsupportedOperation.InstanceStateStopping");
            let stopped = describe(&mut fleet, "ins-0000000r", t0 + S);
            assert_eq!(stopped["InstanceState"], "STOPPED");
            assert_eq!(stopped["LatestOperationState"], "SUCCESS");
            assert_eq!(stopped["StopChargingMode"], "KEEP_CHARGING");
            assert_eq!(
                state_of(&mut fleet, "ins-0000000w", t0 + S).0,
                "STOPPED",
                "Windows stops too"
            );

            let later = t0 + S + Duration::from_millis(200);
            execute(
                &start(&fleet, &["ins-0000000r"]),
                &mut fleet,
                GZ,
                later,
                &acceptance("r-start", power, &[0.5], false),
            )
            .unwrap();
            assert_eq!(
                state_of(&mut fleet, "ins-0000000r", later),
                ("STARTING".to_string(), json!("OPERATING"), json!("r-start"))
            );
            assert_eq!(
                state_of(&mut fleet, "ins-0000000r", later + T),
                ("RUNNING".to_string(), json!("SUCCESS"), json!("r-start"))
            );
            assert_eq!(
                states(&fleet, "ins-0000000r"),
                [
                    (0, Stopping),
                    (1000, Stopped),
                    (1200, Starting),
                    (2700, Running)
                ]
            );
            let event = &fleet.timeline.events()[0];
            assert_eq!(event.action.as_deref(), Some("StopInstances"));
            assert_eq!(event.request_id.as_deref(), Some("r-stop"));
            assert_eq!(event.zone, "ap-guangzhou-3");
        }

        #[test]
        fn already_there_is_refused_and_one_refusal_stops_the_whole_batch() {
            let t0 = Instant::now();
            let mut fleet = live(t0);
            let power = timed();
            let mixed = stop(&fleet, &["ins-0000000r", "ins-0000000s"]);
            let err = execute(
                &mixed,
                &mut fleet,
                GZ,
                t0,
                &acceptance("r", power, &[0.5, 0.5], false),
            )
            .unwrap_err();
            assert_eq!(err.code, "UnsupportedOperation.InstanceStateStopped");
            assert_eq!(
                state_of(&mut fleet, "ins-0000000r", t0).0,
                "RUNNING",
                "nothing changed"
            );
            let err = execute(
                &start(&fleet, &["ins-0000000s", "ins-0000000r"]),
                &mut fleet,
                GZ,
                t0,
                &acceptance("r", power, &[0.5, 0.5], false),
            )
            .unwrap_err();
            assert_eq!(err.code, "UnsupportedOperation.InstanceStateRunning");
            assert_eq!(state_of(&mut fleet, "ins-0000000s", t0).0, "STOPPED");
            assert!(fleet.timeline.events().is_empty());
            // A stop still running refuses a second stop as an operation in progress.
            execute(
                &stop(&fleet, &["ins-0000000r"]),
                &mut fleet,
                GZ,
                t0,
                &acceptance("r1", power, &[0.5], false),
            )
            .unwrap();
            let err = execute(
                &start(&fleet, &["ins-0000000r"]),
                &mut fleet,
                GZ,
                t0,
                &acceptance("r2", power, &[0.5], false),
            )
            .unwrap_err();
            assert_eq!(err.code, "UnsupportedOperation.InstanceStateStopping");
        }

        #[test]
        fn faults_fail_a_soft_stop_and_a_start() {
            use InstanceState::*;
            let t0 = Instant::now();
            let mut fleet = live(t0);
            let power = Power {
                soft_stop_fail: 0.3,
                start_fail: 0.3,
                ..timed()
            };
            // Draws below the probability fail: ins-r's soft stop fails, ins-w's works.
            execute(
                &stop(&fleet, &["ins-0000000r", "ins-0000000w"]),
                &mut fleet,
                GZ,
                t0,
                &acceptance("r-stop", power, &[0.1, 0.9], false),
            )
            .unwrap();
            assert_eq!(
                state_of(&mut fleet, "ins-0000000r", t0 + S),
                ("RUNNING".to_string(), json!("FAILED"), json!("r-stop"))
            );
            assert_eq!(
                states(&fleet, "ins-0000000r"),
                [(0, Stopping), (1000, Running)]
            );
            assert_eq!(state_of(&mut fleet, "ins-0000000w", t0 + S).0, "STOPPED");
            // SOFT_FIRST forces it off after the soft attempt's time.
            let soft_first = request(
                &fleet,
                Action::StopInstances,
                json!({"InstanceIds": ["ins-0000000r"], "StopType": "SOFT_FIRST"}),
            )
            .unwrap();
            let t1 = t0 + S;
            execute(
                &soft_first,
                &mut fleet,
                GZ,
                t1,
                &acceptance("r-sf", power, &[0.1], false),
            )
            .unwrap();
            assert_eq!(state_of(&mut fleet, "ins-0000000r", t1 + S).0, "STOPPING");
            assert_eq!(
                state_of(&mut fleet, "ins-0000000r", t1 + 2 * S).1,
                json!("SUCCESS")
            );
            // A start that fails ends FAILED, still STOPPED; a refused one changes nothing.
            let t2 = t1 + 2 * S;
            execute(
                &start(&fleet, &["ins-0000000w"]),
                &mut fleet,
                GZ,
                t2,
                &acceptance("r-s1", power, &[0.2], false),
            )
            .unwrap();
            assert_eq!(
                state_of(&mut fleet, "ins-0000000w", t2 + T),
                ("STOPPED".to_string(), json!("FAILED"), json!("r-s1"))
            );
            let err = execute(
                &start(&fleet, &["ins-0000000w"]),
                &mut fleet,
                GZ,
                t2 + T,
                &acceptance("r-s2", power, &[0.9], true),
            )
            .unwrap_err();
            assert_eq!(err.code, "ResourceInsufficient");
            assert_eq!(
                state_of(&mut fleet, "ins-0000000w", t2 + T).2,
                json!("r-s1")
            );
        }

        #[test]
        fn instances_that_always_fail_to_stop_softly_or_to_start() {
            let t0 = Instant::now();
            let fleet = Fleet::new()
                .with(
                    Instance::new("ins-0000000r", GZ)
                        .state(InstanceState::Running)
                        .soft_stop_fails(),
                )
                .with(Instance::new("ins-0000000s", GZ).start_fails());
            let mut fleet = LiveFleet::new(fleet, t0, Duration::from_secs(1));
            let power = timed();
            execute(
                &stop(&fleet, &["ins-0000000r"]),
                &mut fleet,
                GZ,
                t0,
                &acceptance("a", power, &[0.99], false),
            )
            .unwrap();
            execute(
                &start(&fleet, &["ins-0000000s"]),
                &mut fleet,
                GZ,
                t0,
                &acceptance("b", power, &[0.99], false),
            )
            .unwrap();
            assert_eq!(
                state_of(&mut fleet, "ins-0000000r", t0 + T).1,
                json!("FAILED")
            );
            assert_eq!(
                state_of(&mut fleet, "ins-0000000s", t0 + T),
                ("STOPPED".to_string(), json!("FAILED"), json!("b"))
            );
        }

        #[test]
        fn force_stop_restarts_or_leaves_stopped_as_configured() {
            use InstanceState::*;
            for (reading, end) in [
                (ForceStopReading::Restart, "RUNNING"),
                (ForceStopReading::LeftStopped, "STOPPED"),
            ] {
                let t0 = Instant::now();
                let mut fleet = live(t0);
                let power = Power {
                    force_stop: reading,
                    ..timed()
                };
                let params = json!({"InstanceIds": ["ins-0000000r", "ins-0000000s"], "KeyIds": ["skey-0000000a"], "ForceStop": true});
                let unbind =
                    request(&fleet, Action::DisassociateInstancesKeyPairs, params).unwrap();
                execute(
                    &unbind,
                    &mut fleet,
                    GZ,
                    t0,
                    &acceptance("r-fs", power, &[], false),
                )
                .unwrap();
                let mid = describe(&mut fleet, "ins-0000000r", t0 + S);
                assert_eq!(mid["InstanceState"], "STOPPED");
                assert_eq!(mid["LatestOperation"], "DisassociateInstancesKeyPairs");
                assert_eq!(mid["LatestOperationState"], "OPERATING");
                assert_eq!(
                    mid["LoginSettings"]["KeyIds"],
                    json!(["skey-0000000a"]),
                    "{reading:?}"
                );
                let done = describe(&mut fleet, "ins-0000000r", t0 + S + OP + T);
                assert_eq!(done["InstanceState"], end, "{reading:?}");
                assert_eq!(done["LatestOperationState"], "SUCCESS");
                assert_eq!(done["LoginSettings"]["KeyIds"], json!([]));
                let expected: Vec<(i64, InstanceState)> = match reading {
                    ForceStopReading::Restart => vec![
                        (0, Stopping),
                        (1000, Stopped),
                        (1300, Starting),
                        (2800, Running),
                    ],
                    ForceStopReading::LeftStopped => vec![(0, Stopping), (1000, Stopped)],
                };
                assert_eq!(states(&fleet, "ins-0000000r"), expected);
                // The STOPPED instance of the same request never changes power.
                assert!(states(&fleet, "ins-0000000s").is_empty());
                assert_eq!(
                    state_of(&mut fleet, "ins-0000000s", t0 + OP).1,
                    json!("SUCCESS")
                );
            }
        }

        #[test]
        fn stop_and_start_parameters_are_checked() {
            let t0 = Instant::now();
            let fleet = live(t0);
            let code = |action, params: Value| request(&fleet, action, params).unwrap_err().code;
            let ids = json!(["ins-0000000r"]);
            assert_eq!(
                code(
                    Action::StopInstances,
                    json!({"InstanceIds": ids, "StopType": "HARD", "ForceStop": true})
                ),
                "InvalidParameterCombination"
            );
            assert_eq!(
                code(
                    Action::StopInstances,
                    json!({"InstanceIds": ids, "StopType": "GENTLE"})
                ),
                "InvalidParameterValue"
            );
            assert_eq!(
                code(
                    Action::StopInstances,
                    json!({"InstanceIds": ids, "StoppedMode": "MAYBE"})
                ),
                "InvalidParameterValue"
            );
            assert_eq!(
                code(
                    Action::StopInstances,
                    json!({"InstanceIds": ids, "StopType": 3})
                ),
                "InvalidParameter"
            );
            assert_eq!(
                code(Action::StopInstances, json!({"StopType": "SOFT"})),
                "MissingParameter"
            );
            assert_eq!(
                code(
                    Action::StartInstances,
                    json!({"InstanceIds": ids, "StopType": "SOFT"})
                ),
                "UnknownParameter"
            );
            assert_eq!(
                code(Action::StartInstances, json!({"InstanceIds": ["ins-1"]})),
                "InvalidInstanceId.Malformed"
            );
            assert_eq!(
                code(
                    Action::StartInstances,
                    json!({"InstanceIds": ["ins-00000077"]})
                ),
                "InvalidInstanceId.NotFound"
            );
            let many: Vec<String> = (0..101).map(|n| format!("ins-{n:08}")).collect();
            assert_eq!(
                code(Action::StopInstances, json!({"InstanceIds": many})),
                "InvalidParameterValue.LimitExceeded"
            );
            let Validated::Stop {
                stop_type,
                stop_charging,
                ..
            } = request(
                &fleet,
                Action::StopInstances,
                json!({"InstanceIds": ids, "ForceStop": true}),
            )
            .unwrap()
            else {
                panic!("a stop");
            };
            assert_eq!(
                (stop_type, stop_charging),
                (StopType::Hard, false),
                "the deprecated ForceStop is HARD"
            );
            let Validated::Stop {
                stop_type,
                stop_charging,
                ..
            } = request(
                &fleet,
                Action::StopInstances,
                json!({"InstanceIds": ids, "StoppedMode": "STOP_CHARGING"}),
            )
            .unwrap()
            else {
                panic!("a stop");
            };
            assert_eq!((stop_type, stop_charging), (StopType::Soft, true));
        }

        #[test]
        fn stop_charging_takes_effect_when_stopped_and_ends_with_the_start() {
            let t0 = Instant::now();
            let mut fleet = live(t0);
            let power = timed();
            let stop = request(
                &fleet,
                Action::StopInstances,
                json!({"InstanceIds": ["ins-0000000r"], "StoppedMode": "STOP_CHARGING"}),
            )
            .unwrap();
            execute(
                &stop,
                &mut fleet,
                GZ,
                t0,
                &acceptance("r", power, &[0.5], false),
            )
            .unwrap();
            assert_eq!(
                describe(&mut fleet, "ins-0000000r", t0 + S)["StopChargingMode"],
                "STOP_CHARGING"
            );
            let unbind = bind(
                Action::DisassociateInstancesKeyPairs,
                &fleet,
                &["ins-0000000r"],
                &["skey-0000000a"],
            );
            let err =
                execute(&unbind, &mut fleet, GZ, t0 + S, &accepted("r2", OP, false)).unwrap_err();
            assert_eq!(err.code, "UnsupportedOperation.StoppedModeStopCharging");
            execute(
                &start(&fleet, &["ins-0000000r"]),
                &mut fleet,
                GZ,
                t0 + S,
                &acceptance("r3", power, &[0.5], false),
            )
            .unwrap();
            assert_eq!(
                describe(&mut fleet, "ins-0000000r", t0 + S + T)["StopChargingMode"],
                "NOT_APPLICABLE"
            );
        }
    }
}
