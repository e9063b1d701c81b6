//! TC3-HMAC-SHA256 request signing and verification, as pure functions.
//!
//! The client signs with [`sign`]; the simulator checks with [`verify`], which
//! rebuilds the canonical request from whatever headers `SignedHeaders` names, so
//! both sides share one implementation of the algorithm in the reference
//! (`shared/reference/tencentcloud-cvm-api.md`, section 3).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::secret::Secret;

/// The only algorithm the API 3.0 signature accepts.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// How far a request's `X-TC-Timestamp` may be from the server's clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
const TERMINATOR: &str = "tc3_request";

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The UTC calendar date (`YYYY-MM-DD`) of a Unix timestamp, as the credential scope uses it.
pub fn scope_date(timestamp: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(timestamp)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    let (y, m, d) = (date.year(), u8::from(date.month()), date.day());
    format!("{y:04}-{m:02}-{d:02}")
}

/// The derived keys of the TC3 key chain: each signs for a day, so they are
/// zeroed when dropped, like the SecretKey they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChain {
    pub k_date: [u8; 32],
    pub k_service: [u8; 32],
    pub k_signing: [u8; 32],
}

impl Drop for KeyChain {
    fn drop(&mut self) {
        self.k_date.zeroize();
        self.k_service.zeroize();
        self.k_signing.zeroize();
    }
}

/// Derives `kDate`, `kService` and `kSigning` from the secret key.
pub fn key_chain(secret_key: &str, date: &str, service: &str) -> KeyChain {
    let prefixed = Zeroizing::new(format!("TC3{secret_key}"));
    let k_date = hmac_sha256(prefixed.as_bytes(), date.as_bytes());
    let k_service = hmac_sha256(&k_date, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, TERMINATOR.as_bytes());
    KeyChain {
        k_date,
        k_service,
        k_signing,
    }
}

/// What a request looks like to the signature: everything the canonical request is built from.
#[derive(Debug, Clone)]
pub struct RequestParts<'a> {
    /// `POST` or `GET`.
    pub method: &'a str,
    /// The path, `/` for every API 3.0 call.
    pub path: &'a str,
    /// The query string exactly as sent (empty for POST).
    pub query: &'a str,
    /// The signed headers as (name, value); names in any case, in any order.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The exact body bytes.
    pub payload: &'a [u8],
}

impl RequestParts<'_> {
    /// The canonical request and the `SignedHeaders` list it signs.
    pub fn canonical(&self) -> (String, String) {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.trim().to_ascii_lowercase(),
                    value.trim().to_ascii_lowercase(),
                )
            })
            .collect();
        headers.sort();
        let canonical_headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}:{value}\n"))
            .collect();
        let signed_headers = headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.path,
            self.query,
            canonical_headers,
            signed_headers,
            sha256_hex(self.payload)
        );
        (canonical, signed_headers)
    }
}

/// The result of signing: the header value to send and the intermediate values tests check.
#[derive(Debug, Clone)]
pub struct Signature {
    pub authorization: String,
    pub signature: String,
    pub hashed_canonical_request: String,
    pub signed_headers: String,
}

/// Signs `request` for `service` at `timestamp` with the given credentials.
pub fn sign(
    request: &RequestParts<'_>,
    service: &str,
    timestamp: i64,
    secret_id: &str,
    secret_key: &Secret,
) -> Signature {
    let (canonical, signed_headers) = request.canonical();
    let hashed_canonical_request = sha256_hex(canonical.as_bytes());
    let date = scope_date(timestamp);
    let string_to_sign = format!(
        "{ALGORITHM}\n{timestamp}\n{date}/{service}/{TERMINATOR}\n{hashed_canonical_request}"
    );
    let keys = key_chain(secret_key.expose(), &date, service);
    let signature = hex::encode(hmac_sha256(&keys.k_signing, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={secret_id}/{date}/{service}/{TERMINATOR}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    Signature {
        authorization,
        signature,
        hashed_canonical_request,
        signed_headers,
    }
}

/// Why a request's signature was refused, each with the API's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the Authorization header is missing")]
    MissingAuthorization,
    #[error("the Authorization header is malformed: {0}")]
    MalformedAuthorization(String),
    #[error("the X-TC-Timestamp header is missing or not a whole number of seconds")]
    BadTimestamp,
    #[error(
        "the signature expired: the request's timestamp is {skew_secs} s from the server's clock (at most {MAX_CLOCK_SKEW_SECS} s)"
    )]
    Expired { skew_secs: u64 },
    #[error("the SecretId is not found")]
    UnknownSecretId,
    #[error("the request signature does not match")]
    BadSignature,
}

impl VerifyError {
    /// The API error code a server replies with.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingAuthorization | VerifyError::MalformedAuthorization(_) => {
                "AuthFailure.InvalidAuthorization"
            }
            VerifyError::BadTimestamp => "MissingParameter",
            VerifyError::Expired { .. } => "AuthFailure.SignatureExpire",
            VerifyError::UnknownSecretId => "AuthFailure.SecretIdNotFound",
            VerifyError::BadSignature => "AuthFailure.SignatureFailure",
        }
    }
}

/// A request as a server received it, for [`verify`].
#[derive(Debug, Clone)]
pub struct Received<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Every header received, names in any case.
    pub headers: Vec<(&'a str, &'a str)>,
    pub payload: &'a [u8],
}

impl<'a> Received<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub secret_id: String,
    pub date: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses `TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request, SignedHeaders=a;b, Signature=HEX`.
pub fn parse_authorization(value: &str) -> Result<Authorization, VerifyError> {
    let bad = |why: &str| VerifyError::MalformedAuthorization(why.to_string());
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| bad("it does not start with TC3-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in rest.split(',') {
        let (name, val) = field
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("a field is not name=value"))?;
        match name.trim() {
            "Credential" => credential = Some(val.trim()),
            "SignedHeaders" => signed = Some(val.trim()),
            "Signature" => signature = Some(val.trim()),
            _ => return Err(bad("unknown field")),
        }
    }
    let credential = credential.ok_or_else(|| bad("Credential is missing"))?;
    let signed = signed.ok_or_else(|| bad("SignedHeaders is missing"))?;
    let signature = signature.ok_or_else(|| bad("Signature is missing"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [secret_id, date, service, terminator] = scope[..] else {
        return Err(bad("Credential is not SecretId/date/service/tc3_request"));
    };
    if secret_id.is_empty() || terminator != TERMINATOR {
        return Err(bad("Credential is not SecretId/date/service/tc3_request"));
    }
    let signed_headers: Vec<String> = signed
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if signed_headers.iter().any(String::is_empty) {
        return Err(bad("SignedHeaders has an empty name"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("Signature is not 64 hex digits"));
    }
    Ok(Authorization {
        secret_id: secret_id.to_string(),
        date: date.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// Checks a received request's signature. `now` is the server's clock in Unix seconds;
/// `secret_for` returns the SecretKey for a SecretId, or `None` when it is unknown.
/// Returns the SecretId that signed the request.
pub fn verify(
    request: &Received<'_>,
    service: &str,
    now: i64,
    secret_for: impl Fn(&str) -> Option<Secret>,
) -> Result<String, VerifyError> {
    let auth = request
        .header("authorization")
        .filter(|v| !v.trim().is_empty())
        .ok_or(VerifyError::MissingAuthorization)?;
    let auth = parse_authorization(auth)?;
    let timestamp: i64 = request
        .header("x-tc-timestamp")
        .and_then(|v| v.trim().parse().ok())
        .ok_or(VerifyError::BadTimestamp)?;
    // `abs_diff`: a timestamp near i64::MIN must not overflow past the check.
    let skew_secs = now.abs_diff(timestamp);
    if skew_secs > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
        return Err(VerifyError::Expired { skew_secs });
    }
    let secret_key = secret_for(&auth.secret_id).ok_or(VerifyError::UnknownSecretId)?;
    if auth.service != service || auth.date != scope_date(timestamp) {
        return Err(VerifyError::BadSignature);
    }
    let headers = auth
        .signed_headers
        .iter()
        .map(|name| {
            Ok((
                name.as_str(),
                request.header(name).ok_or(VerifyError::BadSignature)?,
            ))
        })
        .collect::<Result<Vec<_>, VerifyError>>()?;
    let parts = RequestParts {
        method: request.method,
        path: request.path,
        query: request.query,
        headers,
        payload: request.payload,
    };
    let expected = sign(&parts, service, timestamp, &auth.secret_id, &secret_key);
    if constant_time_eq(expected.signature.as_bytes(), auth.signature.as_bytes()) {
        Ok(auth.secret_id)
    } else {
        Err(VerifyError::BadSignature)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    const TIMESTAMP: i64 = 1551113065;
    const SECRET_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
    const SECRET_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
    const CONTENT_TYPE: &str = "application/json; charset=utf-8";
    const HOST: &str = "cvm.tencentcloudapi.com";

    fn example(headers: Vec<(&'static str, &'static str)>) -> RequestParts<'static> {
        RequestParts {
            method: "POST",
            path: "/",
            query: "",
            headers,
            payload: BODY.as_bytes(),
        }
    }

    #[test]
    fn body_hash_matches_the_reference() {
        assert_eq!(
            sha256_hex(BODY.as_bytes()),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        assert_eq!(scope_date(TIMESTAMP), "2019-02-25");
    }

    #[test]
    fn first_worked_example() {
        let parts = example(vec![("Content-Type", CONTENT_TYPE), ("Host", HOST)]);
        let signed = sign(
            &parts,
            "cvm",
            TIMESTAMP,
            SECRET_ID,
            &Secret::new(SECRET_KEY),
        );
        assert_eq!(
            signed.hashed_canonical_request,
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(
            signed.signature,
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert_eq!(
            signed.authorization,
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    #[test]
    fn second_worked_example_with_key_chain() {
        let secret = "*".repeat(32);
        let parts = example(vec![
            ("Content-Type", CONTENT_TYPE),
            ("Host", HOST),
            ("X-TC-Action", "DescribeInstances"),
        ]);
        let signed = sign(
            &parts,
            "cvm",
            TIMESTAMP,
            SECRET_ID,
            &Secret::new(secret.clone()),
        );
        assert_eq!(signed.signed_headers, "content-type;host;x-tc-action");
        assert_eq!(
            signed.hashed_canonical_request,
            "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84"
        );
        let keys = key_chain(&secret, "2019-02-25", "cvm");
        assert_eq!(
            hex::encode(keys.k_date),
            "da98fb70dcf6b112dc21038d1eeeb3a95c74b4dcb12c1131f864f6066bd02be0"
        );
        assert_eq!(
            hex::encode(keys.k_service),
            "8d70cbefb03939f929db64d32dc2ba89b1095620119fe3e050e2b18c5bd2752f"
        );
        assert_eq!(
            hex::encode(keys.k_signing),
            "b596b923aad85185e2d1f6659d2a062e0a86731226e021e61bfe06f7ed05f5af"
        );
        assert_eq!(
            signed.signature,
            "10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f"
        );
    }

    /// A signed request as a client would send it, for the verify tests.
    struct Sent {
        headers: Vec<(String, String)>,
        body: String,
    }

    fn send(action: &str, region: &str, timestamp: i64, host: &str, body: &str, key: &str) -> Sent {
        let ts = timestamp.to_string();
        let mut headers = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Host".to_string(), host.to_string()),
            ("X-TC-Action".to_string(), action.to_string()),
            ("X-TC-Region".to_string(), region.to_string()),
            ("X-TC-Timestamp".to_string(), ts),
        ];
        let parts = RequestParts {
            method: "POST",
            path: "/",
            query: "",
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            payload: body.as_bytes(),
        };
        let signed = sign(&parts, "cvm", timestamp, SECRET_ID, &Secret::new(key));
        headers.push(("Authorization".to_string(), signed.authorization));
        Sent {
            headers,
            body: body.to_string(),
        }
    }

    fn check(sent: &Sent, now: i64) -> Result<String, VerifyError> {
        let received = Received {
            method: "POST",
            path: "/",
            query: "",
            headers: sent
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            payload: sent.body.as_bytes(),
        };
        verify(&received, "cvm", now, |id| {
            (id == SECRET_ID).then(|| Secret::new(SECRET_KEY))
        })
    }

    fn set_header(sent: &mut Sent, name: &str, value: &str) {
        for (n, v) in &mut sent.headers {
            if n.eq_ignore_ascii_case(name) {
                *v = value.to_string();
            }
        }
    }

    const NOW: i64 = 1_700_000_000;
    const ACTION: &str = "DisassociateInstancesKeyPairs";
    const JSON: &str = r#"{"InstanceIds":["ins-1a2b3c4d"],"KeyIds":["skey-1a2b3c4d"]}"#;

    #[test]
    fn verify_accepts_what_sign_produces() {
        let sent = send(
            ACTION,
            "ap-guangzhou",
            NOW,
            "127.0.0.1:9000",
            JSON,
            SECRET_KEY,
        );
        assert_eq!(check(&sent, NOW).as_deref(), Ok(SECRET_ID));
        // tccli's literal endpoint as Host is just another value to sign.
        let sent = send(
            ACTION,
            "ap-guangzhou",
            NOW,
            "http://127.0.0.1:9000",
            JSON,
            SECRET_KEY,
        );
        assert_eq!(check(&sent, NOW + 299).as_deref(), Ok(SECRET_ID));
    }

    #[test]
    fn verify_rejects_every_change() {
        let fresh = || {
            send(
                ACTION,
                "ap-guangzhou",
                NOW,
                "127.0.0.1:9000",
                JSON,
                SECRET_KEY,
            )
        };

        let mut body = fresh();
        body.body = body.body.replace("ins-1a2b3c4d", "ins-1a2b3c4e");
        assert_eq!(check(&body, NOW), Err(VerifyError::BadSignature));

        let mut action = fresh();
        set_header(&mut action, "X-TC-Action", "AssociateInstancesKeyPairs");
        assert_eq!(check(&action, NOW), Err(VerifyError::BadSignature));

        let mut region = fresh();
        set_header(&mut region, "X-TC-Region", "ap-shanghai");
        assert_eq!(check(&region, NOW), Err(VerifyError::BadSignature));

        let mut timestamp = fresh();
        set_header(&mut timestamp, "X-TC-Timestamp", &(NOW + 1).to_string());
        assert_eq!(check(&timestamp, NOW), Err(VerifyError::BadSignature));

        let mut host = fresh();
        set_header(&mut host, "Host", "127.0.0.1:9001");
        assert_eq!(check(&host, NOW), Err(VerifyError::BadSignature));

        let wrong_secret = send(
            ACTION,
            "ap-guangzhou",
            NOW,
            "127.0.0.1:9000",
            JSON,
            "another-secret",
        );
        assert_eq!(check(&wrong_secret, NOW), Err(VerifyError::BadSignature));
    }

    #[test]
    fn verify_reports_each_failure_with_its_code() {
        let sent = send(ACTION, "ap-guangzhou", NOW, "h", JSON, SECRET_KEY);
        let expired = check(&sent, NOW + 301).unwrap_err();
        assert_eq!(expired, VerifyError::Expired { skew_secs: 301 });
        assert_eq!(expired.code(), "AuthFailure.SignatureExpire");

        // now - 2^63 wrapped `(now - timestamp).abs()` and skipped the skew check
        // (or panicked in a debug build): it is simply expired.
        for timestamp in [i64::MIN, i64::MIN + 1, NOW.wrapping_sub(i64::MAX), i64::MAX] {
            let ancient = send(ACTION, "ap-guangzhou", timestamp, "h", JSON, SECRET_KEY);
            assert_eq!(
                check(&ancient, NOW),
                Err(VerifyError::Expired {
                    skew_secs: NOW.abs_diff(timestamp)
                }),
                "timestamp {timestamp}"
            );
        }

        let mut missing = send(ACTION, "ap-guangzhou", NOW, "h", JSON, SECRET_KEY);
        missing.headers.retain(|(n, _)| n != "Authorization");
        assert_eq!(
            check(&missing, NOW).unwrap_err().code(),
            "AuthFailure.InvalidAuthorization"
        );

        let mut malformed = send(ACTION, "ap-guangzhou", NOW, "h", JSON, SECRET_KEY);
        set_header(&mut malformed, "Authorization", "Basic dXNlcjpwYXNz");
        assert_eq!(
            check(&malformed, NOW).unwrap_err().code(),
            "AuthFailure.InvalidAuthorization"
        );

        let mut unknown = send(ACTION, "ap-guangzhou", NOW, "h", JSON, SECRET_KEY);
        let auth = unknown
            .headers
            .last()
            .unwrap()
            .1
            .replace(SECRET_ID, "AKIDunknown");
        set_header(&mut unknown, "Authorization", &auth);
        assert_eq!(
            check(&unknown, NOW).unwrap_err().code(),
            "AuthFailure.SecretIdNotFound"
        );
    }

    #[test]
    fn parses_authorization_fields() {
        let auth = parse_authorization(
            "TC3-HMAC-SHA256 Credential=AKID/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168",
        )
        .unwrap();
        assert_eq!(auth.secret_id, "AKID");
        assert_eq!(auth.signed_headers, ["content-type", "host"]);
        assert!(
            parse_authorization(
                "TC3-HMAC-SHA256 Credential=AKID/2019-02-25/cvm, SignedHeaders=host, Signature=00"
            )
            .is_err()
        );
    }
}
