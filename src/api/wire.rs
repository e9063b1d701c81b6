//! The JSON on the wire: a reply's envelope, the reads' replies, the power requests' bodies.

use serde_json::{Value, json};

use super::{
    ApiError, CallError, InstanceInfo, InstancePage, KeyPairInfo, RegionInfo, StopType,
    TransportError, TransportKind,
};

/// Sorts a 200 reply's body into success, API error or bad body.
pub(super) fn parse_envelope(body: &[u8]) -> Result<(Value, String), CallError> {
    let bad =
        |detail: &str| CallError::Transport(TransportError::new(TransportKind::BadBody, detail));
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| bad(&format!("the reply is not JSON ({err})")))?;
    let Some(Value::Object(response)) = value.get("Response") else {
        return Err(bad("the reply is not the {\"Response\": {...}} envelope"));
    };
    let request_id = match response.get("RequestId") {
        Some(Value::String(id)) if !id.trim().is_empty() => Some(id.clone()),
        _ => None,
    };
    if let Some(error) = response.get("Error") {
        let code = error.get("Code").and_then(Value::as_str);
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Err(bad("Response.Error has no Code"));
        };
        return Err(CallError::Api(ApiError {
            code: code.to_string(),
            message: string_field(error, "Message"),
            request_id: request_id.unwrap_or_default(),
        }));
    }
    match request_id {
        Some(id) => Ok((Value::Object(response.clone()), id)),
        None => Err(bad("the reply has neither an Error nor a RequestId")),
    }
}

/// Reads a `DescribeInstances` reply (its `Response` object) asked from `offset`
/// with `limit`: the instances, `TotalCount` and the next page's offset. Shared by the
/// client and the executor's verification batches, which get the reply as JSON.
pub fn parse_instance_page(
    response: &Value,
    request_id: &str,
    offset: u64,
    limit: u64,
) -> Result<InstancePage, CallError> {
    let instances = parse_set(response, "InstanceSet", request_id, |item| {
        let login = item.get("LoginSettings");
        Some(InstanceInfo {
            instance_id: item.get("InstanceId")?.as_str()?.to_string(),
            instance_state: string_field(item, "InstanceState"),
            os_name: string_field(item, "OsName"),
            key_ids: string_list(login.and_then(|l| l.get("KeyIds"))),
            latest_operation: optional_string(item.get("LatestOperation")),
            latest_operation_state: optional_string(item.get("LatestOperationState")),
            latest_operation_request_id: optional_string(item.get("LatestOperationRequestId")),
            zone: optional_string(item.get("Placement").and_then(|p| p.get("Zone"))),
            tags: tags(item.get("Tags")),
        })
    })?;
    let total_count = total_count(response, request_id)?;
    let returned = instances.len() as u64;
    let next = offset.saturating_add(returned);
    let more = match total_count {
        Some(total) => next < total,
        // Without a total, a full page may have a successor.
        None => returned == limit,
    };
    let next_offset = (more && returned > 0 && next > offset).then_some(next);
    Ok(InstancePage {
        instances,
        total_count,
        next_offset,
    })
}

/// Reads a `DescribeRegions` reply's `RegionSet`.
pub fn parse_regions(response: &Value, request_id: &str) -> Result<Vec<RegionInfo>, CallError> {
    parse_set(response, "RegionSet", request_id, |item| {
        Some(RegionInfo {
            region: item.get("Region")?.as_str()?.to_string(),
            region_name: string_field(item, "RegionName"),
            region_state: string_field(item, "RegionState"),
        })
    })
}

/// Reads a `DescribeKeyPairs` reply's `KeyPairSet`.
pub fn parse_key_pairs(response: &Value, request_id: &str) -> Result<Vec<KeyPairInfo>, CallError> {
    parse_set(response, "KeyPairSet", request_id, |item| {
        Some(KeyPairInfo {
            key_id: item.get("KeyId")?.as_str()?.to_string(),
            associated_instance_ids: string_list(item.get("AssociatedInstanceIds")),
        })
    })
}

/// Reads `Response.<set_name>[]` with `item`; any item it cannot read makes the reply a bad body.
pub(super) fn parse_set<T>(
    response: &Value,
    set_name: &str,
    request_id: &str,
    item: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, CallError> {
    let bad = |detail: String| {
        let mut err = TransportError::new(TransportKind::BadBody, detail);
        err.status = Some(200);
        CallError::Transport(err)
    };
    let set = match response.get(set_name) {
        Some(Value::Array(set)) => set,
        Some(Value::Null) | None => return Ok(Vec::new()),
        Some(_) => {
            return Err(bad(format!(
                "{set_name} is not a list (RequestId {request_id})"
            )));
        }
    };
    set.iter()
        .enumerate()
        .map(|(index, value)| {
            item(value).ok_or_else(|| {
                bad(format!(
                    "{set_name}[{index}] lacks its id (RequestId {request_id})"
                ))
            })
        })
        .collect()
}

/// `Response.TotalCount`: absent or null is `None`; anything but a whole number is a bad body.
pub(super) fn total_count(response: &Value, request_id: &str) -> Result<Option<u64>, CallError> {
    match response.get("TotalCount") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            let mut err = TransportError::new(
                TransportKind::BadBody,
                format!("TotalCount is not a whole number (RequestId {request_id})"),
            );
            err.status = Some(200);
            CallError::Transport(err)
        }),
    }
}

/// `Tags` of an instance: every `{Key, Value}` item with a non-empty string `Key`;
/// anything else (absent, null, not a list, an item without a key) is left out.
pub(super) fn tags(value: Option<&Value>) -> std::collections::BTreeMap<String, String> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|tag| {
            let key = optional_string(tag.get("Key"))?;
            let value = tag
                .get("Value")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            Some((key, value))
        })
        .collect()
}

/// The body of a `StopInstances` request: up to 100 instances (the caller checks),
/// `StopType` as asked, and `StoppedMode` always `KEEP_CHARGING` (`STOP_CHARGING`
/// releases CPU, memory and the public IP, so the restart may fail; reference, section 1).
/// `ForceStop` is never sent: it is deprecated and refused together with `StopType`.
pub fn stop_instances_body(instance_ids: &[String], stop_type: StopType) -> Value {
    json!({
        "InstanceIds": instance_ids,
        "StopType": stop_type.as_str(),
        "StoppedMode": crate::cvm::STOPPED_MODE_KEEP_CHARGING,
    })
}

/// The body of a `StartInstances` request: up to 100 instances (the caller checks).
pub fn start_instances_body(instance_ids: &[String]) -> Value {
    json!({ "InstanceIds": instance_ids })
}

/// An optional string field: absent, null, empty or not a string is `None`.
pub(super) fn optional_string(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub(super) fn string_field(value: &Value, name: &str) -> String {
    value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub(super) fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
