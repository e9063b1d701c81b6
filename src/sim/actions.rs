//! The CVM actions of a run (the incident's are in `incident`): parameter validation in the API's order of concern, the
//! all-or-nothing instance checks, the asynchronous key-pair operations, and the replies.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::fleet::{InstanceState, LiveFleet, LiveInstance, Operation, Os};
use crate::ids::{self, MAX_IDS_PER_REQUEST};

/// The actions the simulator serves: the API vocabulary shared with the client.
pub(crate) use crate::cvm::Action;

/// An API error reply: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

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
    /// One of the incident's actions (key pairs, templates, launch configurations).
    Incident(super::incident::Validated),
}

/// How an accepted Associate/Disassociate runs: the RequestId its reply carries, how
/// long it stays OPERATING, and whether it ends FAILED.
#[derive(Debug, Clone)]
pub(crate) struct Acceptance {
    pub request_id: String,
    pub operation_time: Duration,
    pub fails: bool,
}

/// A processed request: the reply's fields besides RequestId, and whether it took effect.
#[derive(Debug)]
pub(crate) struct Executed {
    pub data: Map<String, Value>,
    pub applied: bool,
}

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

pub(crate) fn missing(name: &str) -> ApiError {
    ApiError::new(
        "MissingParameter",
        format!("The request is missing a required parameter `{name}`."),
    )
}

pub(crate) fn limit_exceeded() -> ApiError {
    ApiError::new(
        "InvalidParameterValue.LimitExceeded",
        "The number of parameter values exceeds the limit.",
    )
}

fn instance_malformed() -> ApiError {
    ApiError::new(
        "InvalidInstanceId.Malformed",
        "Invalid instance ID. The specified instance ID has an invalid format. For example, ins-1122 has an invalid ID length.",
    )
}

pub(crate) fn key_malformed() -> ApiError {
    ApiError::new(
        "InvalidKeyPairId.Malformed",
        "Invalid key pair ID. The specified key pair ID has an invalid format. For example, skey-1122 has an invalid ID length.",
    )
}

fn instance_not_found() -> ApiError {
    ApiError::new("InvalidInstanceId.NotFound", "No instance found.")
}

pub(crate) fn key_not_found() -> ApiError {
    ApiError::new(
        "InvalidKeyPairId.NotFound",
        "Invalid key pair ID. The specified key pair ID does not exist.",
    )
}

pub(crate) fn check_known(params: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::new(
            "UnknownParameter",
            format!(
                "The parameter `{}` is not recognized.",
                ids::shorten(unknown)
            ),
        )),
        None => Ok(()),
    }
}

/// An array-of-strings parameter; `None` when absent.
pub(crate) fn string_list(
    params: &Map<String, Value>,
    name: &str,
) -> Result<Option<Vec<String>>, ApiError> {
    let wrong = || {
        ApiError::new(
            "InvalidParameter",
            format!("The parameter `{name}` must be an array of strings."),
        )
    };
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(wrong))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(wrong()),
    }
}

/// A boolean parameter: JSON true/false, or the strings a GET query carries.
pub(crate) fn bool_param(
    params: &Map<String, Value>,
    name: &str,
) -> Result<Option<bool>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") || s == "0" => Ok(Some(false)),
        Some(_) => Err(ApiError::new(
            "InvalidParameter",
            format!("The parameter `{name}` must be a boolean."),
        )),
    }
}

/// An integer parameter: a JSON number, or the string a GET query carries.
pub(crate) fn int_param(params: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    let wrong = || {
        ApiError::new(
            "InvalidParameter",
            format!("The parameter `{name}` must be an integer."),
        )
    };
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(wrong),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| wrong()),
        Some(_) => Err(wrong()),
    }
}

pub(crate) fn paging(params: &Map<String, Value>) -> Result<(usize, usize), ApiError> {
    let offset = int_param(params, "Offset")?.unwrap_or(0);
    let limit = int_param(params, "Limit")?.unwrap_or(DEFAULT_LIMIT);
    if offset < 0 {
        return Err(ApiError::new(
            "InvalidParameterValue",
            "Incorrect parameter value. `Offset` must not be negative.",
        ));
    }
    if !(0..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            "InvalidParameterValue",
            format!("Incorrect parameter value. `Limit` must be between 0 and {MAX_LIMIT}."),
        ));
    }
    Ok((
        usize::try_from(offset).unwrap_or(usize::MAX),
        usize::try_from(limit).unwrap_or(0),
    ))
}

pub(crate) fn dedup(values: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    values
        .into_iter()
        .filter(|v| seen.insert(v.clone()))
        .collect()
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
    }
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

/// Why this instance may not be operated on now, with the documented code and message.
/// Checked in this order: banned, frozen, Windows, state, stop-charging, busy window.
fn blocker(instance: &LiveInstance, force_stop: bool, now: Instant) -> Option<ApiError> {
    use InstanceState::*;
    let spec = &instance.spec;
    let unsupported = |code: &str, message: &str| {
        Some(ApiError::new(
            &format!("UnsupportedOperation.{code}"),
            message,
        ))
    };
    if spec.banned {
        return unsupported(
            "InstanceStateBanning",
            "This CVM is blocked. Please submit a ticket.",
        );
    }
    if spec.frozen {
        return unsupported(
            "InstanceStateFreezing",
            "The operation is not supported for the frozen instances.",
        );
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
    let in_progress = || {
        Some(ApiError::new(
            "OperationDenied.InstanceOperationInProgress",
            "The instance has an operation in progress. Please try again later.",
        ))
    };
    let by_state = match spec.state {
        Stopped => None,
        Running if force_stop => None,
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
    // A busy window (an operation started elsewhere) or an accepted key-pair operation
    // that has not completed: the same refusal.
    if instance.is_busy(now) || instance.is_operating(now) {
        return in_progress();
    }
    None
}

/// Longest an operation can take: beyond the clock's range (a huge `--operation-time`)
/// it simply never completes while the simulator runs.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// When an operation started at `now` that takes `time` completes; never overflows.
fn completion(now: Instant, time: Duration) -> Instant {
    now.checked_add(time).unwrap_or_else(|| now + NEVER)
}

/// `LatestOperation`, `LatestOperationState`, `LatestOperationRequestId` of an instance:
/// its last key-pair operation; a busy window shows as an unnamed OPERATING one; null
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
                fleet.start_operation(
                    n,
                    Operation {
                        action: action.name(),
                        request_id: acceptance.request_id.clone(),
                        state: super::fleet::OperationState::Operating,
                        completes_at: completion(now, acceptance.operation_time),
                        associate: *associate,
                        keys: keys.clone(),
                        fails: acceptance.fails,
                    },
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
                        "Placement": { "Zone": format!("{region}-1") },
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
}
