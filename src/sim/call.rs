//! One API request as received: its query and body decoded, and the protocol checks
//! (method, path, signature, Action, Version, Region) in the order the API makes them.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Map, Value, json};

use super::SimConfig;
use super::actions::Action;
use super::request::ApiError;
use crate::cvm::Service;
use crate::sign;

/// Query parameters of the common request parameters, not the action's own.
pub(super) const COMMON_QUERY_PARAMS: &[&str] = &[
    "Action",
    "Version",
    "Region",
    "Timestamp",
    "Nonce",
    "SecretId",
    "Signature",
    "SignatureMethod",
    "Token",
    "Language",
    "RequestClient",
];

/// One API request as received.
pub(super) struct Call {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Bytes,
    /// Decoded query parameters, common ones included.
    pub(super) query_params: Vec<(String, String)>,
}

impl Call {
    pub(super) fn new(parts: &hyper::http::request::Parts, body: Bytes) -> Call {
        let query = parts.uri.query().unwrap_or("").to_string();
        Call {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query_params: parse_query(&query),
            query,
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        }
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A common parameter: its `X-TC-` header, or for GET-style calls its query parameter.
    pub(super) fn common(&self, name: &str) -> Option<String> {
        self.header(&format!("x-tc-{name}"))
            .or_else(|| {
                self.query_params
                    .iter()
                    .rev()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            })
            .map(|v| v.trim().to_string())
    }

    /// The action's parameters: the JSON body of a POST, the flattened query of a GET.
    pub(super) fn params(&self) -> Result<Map<String, Value>, ApiError> {
        if self.method == Method::GET {
            return Ok(unflatten(
                self.query_params
                    .iter()
                    .filter(|(k, _)| !COMMON_QUERY_PARAMS.contains(&k.as_str())),
            ));
        }
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(ApiError::new(
                "InvalidParameter",
                "The request body is not a JSON object.",
            )),
        }
    }

    /// The service the request's signature names (its credential scope): every service
    /// is served on this one port. CVM when the header cannot be read (the signature
    /// check then says why); an unknown service fails the signature check.
    pub(super) fn service(&self) -> Service {
        self.header("authorization")
            .and_then(|a| sign::parse_authorization(a).ok())
            .and_then(|a| Service::from_name(&a.service))
            .unwrap_or(Service::Cvm)
    }

    pub(super) fn verify(
        &self,
        config: &SimConfig,
        service: Service,
    ) -> Result<String, sign::VerifyError> {
        let received = sign::Received {
            method: self.method.as_str(),
            path: &self.path,
            query: &self.query,
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            payload: &self.body,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        sign::verify(&received, service.name(), now, |id| {
            (id == config.secret_id).then(|| config.secret_key.clone())
        })
    }
}

/// Splits a raw query string into decoded (name, value) pairs.
pub(super) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Turns `InstanceIds.0=a&InstanceIds.1=b&ForceStop=true` into
/// `{"InstanceIds": ["a", "b"], "ForceStop": "true"}`. Deeper nesting (`Filters.0.Name`)
/// keeps only its top name, with a value no action accepts.
pub(super) fn unflatten<'a>(
    pairs: impl Iterator<Item = &'a (String, String)>,
) -> Map<String, Value> {
    let mut arrays: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    let mut map = Map::new();
    for (key, value) in pairs {
        match key.split_once('.') {
            Some((name, index)) => match index.parse::<usize>() {
                Ok(n) => arrays
                    .entry(name.to_string())
                    .or_default()
                    .push((n, value.clone())),
                Err(_) => {
                    map.insert(name.to_string(), json!({ index: value }));
                }
            },
            None => {
                map.insert(key.clone(), Value::String(value.clone()));
            }
        }
    }
    for (name, mut items) in arrays {
        items.sort_by_key(|(n, _)| *n);
        map.insert(
            name,
            Value::Array(items.into_iter().map(|(_, v)| Value::String(v)).collect()),
        );
    }
    map
}

pub(super) fn strings(params: &Result<Map<String, Value>, ApiError>, name: &str) -> Vec<String> {
    params
        .as_ref()
        .ok()
        .and_then(|p| p.get(name))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A journal entry's copy of a header value: short, so a failed request stores little.
pub(super) fn kept(value: Option<String>) -> String {
    value.map(|v| crate::ids::shorten(&v)).unwrap_or_default()
}

/// The protocol checks, in order: method, path, signature, Action, Version, action,
/// Region. Returns the action, the region and the SecretId that signed the request.
pub(super) fn check_protocol(
    call: &Call,
    config: &SimConfig,
    revoked: bool,
) -> Result<(Action, String, String), ApiError> {
    if call.method != Method::POST && call.method != Method::GET {
        return Err(ApiError::new(
            "UnsupportedProtocol",
            "Only POST with a JSON body and GET with query parameters are supported.",
        ));
    }
    if call.path != "/" {
        return Err(ApiError::new(
            "InvalidRequest",
            format!(
                "The path {:?} is not served; API calls go to /.",
                crate::ids::shorten(&call.path)
            ),
        ));
    }
    let service = call.service();
    let secret_id = call
        .verify(config, service)
        .map_err(|err| ApiError::new(err.code(), err.to_string()))?;
    if revoked {
        return Err(ApiError::new(
            "AuthFailure.SecretIdNotFound",
            "The SecretId is not found, please ensure that your SecretId is correct.",
        ));
    }
    let action = call
        .common("action")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                "MissingParameter",
                "The request is missing a required parameter `Action`.",
            )
        })?;
    let version = call
        .common("version")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                "MissingParameter",
                "The request is missing a required parameter `Version`.",
            )
        })?;
    if version != service.version() {
        return Err(ApiError::new(
            "NoSuchVersion",
            format!(
                "The requested version `{}` of service `{service}` does not exist.",
                crate::ids::shorten(&version)
            ),
        ));
    }
    // An action of another service does not exist in this one.
    let action = Action::from_service_name(service, &action).ok_or_else(|| {
        ApiError::new(
            "InvalidAction",
            format!(
                "The requested action `{}` does not exist.",
                crate::ids::shorten(&action)
            ),
        )
    })?;
    let region = call
        .common("region")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                "MissingParameter",
                "The request is missing a required parameter `Region`.",
            )
        })?;
    if !crate::ids::is_region(&region) {
        return Err(ApiError::new(
            "UnsupportedRegion",
            format!(
                "The region `{}` is not supported.",
                crate::ids::shorten(&region)
            ),
        ));
    }
    Ok((action, region, secret_id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn query_is_decoded_and_unflattened() {
        let pairs = parse_query(
            "Action=DescribeInstances&InstanceIds.1=ins-2&InstanceIds.0=ins-1&ForceStop=true&Name=a%20b+c&Filters.0.Name=x",
        );
        assert_eq!(pairs[0], ("Action".into(), "DescribeInstances".into()));
        let map = unflatten(
            pairs
                .iter()
                .filter(|(k, _)| !COMMON_QUERY_PARAMS.contains(&k.as_str())),
        );
        assert_eq!(map["InstanceIds"], json!(["ins-1", "ins-2"]));
        assert_eq!(map["ForceStop"], json!("true"));
        assert_eq!(map["Name"], json!("a b c"));
        assert!(map.contains_key("Filters"));
        assert!(!map.contains_key("Action"));
    }

    #[test]
    fn percent_decoding_tolerates_junk() {
        assert_eq!(percent_decode("%41%zz%4"), "A%zz%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%E4%B8%AD"), "中");
    }
}
