//! A request's parameters read and checked, the API errors that reading gives, and what an
//! executed request returns: shared by the CVM actions (`actions`) and the incident's
//! (`incident`).

use serde_json::{Map, Value};

use crate::ids::{self};

/// An API error reply: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.to_string(),
            message: message.into(),
        }
    }
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

pub(crate) fn instance_malformed() -> ApiError {
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

pub(crate) fn instance_not_found() -> ApiError {
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

/// A string parameter; `None` when absent.
pub(crate) fn string_param(
    params: &Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::new(
            "InvalidParameter",
            format!("The parameter `{name}` must be a string."),
        )),
    }
}
