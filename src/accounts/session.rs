//! An account's credentials while a run uses them: the base credentials, a tccli
//! profile's, or a role's temporary ones (STS AssumeRole, signed with the base
//! credentials), fetched again well before they expire ([`refresh_at`]), also in the
//! middle of a run and after a resume (nothing of them is stored: a new process
//! assumes the role again). The temporary SecretKey and token live only in
//! [`Secret`]s, zeroized when dropped; messages carry the account's name, the role
//! and the error code, never a credential.
//!
//! [`AccountClient`] is what the executor, `discover` and `retire` send through for
//! one account: a [`CvmClient`] signing with the account's current credentials, and
//! the account's limiter identity ([`AccountClient::identity`]): the account's name
//! and role, never the temporary SecretId that changes at each refresh.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Account, Role, Source};
use crate::api::{CallError, CvmClient, TransportError, TransportKind};
use crate::credentials::Credentials;
use crate::cvm::Action;
use crate::secret::Secret;

/// The region AssumeRole names (`X-TC-Region` is required; the SDKs use this one).
pub const STS_REGION: &str = "ap-guangzhou";
/// Credentials are fetched again at most this long before they expire...
pub const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;
/// ... or once this share of their lifetime has passed, whichever comes first,
/// but never before half of it (short lifetimes, as the simulator's).
const REFRESH_SHARE: (i64, i64) = (4, 5);

/// The wall clock in Unix milliseconds: AssumeRole's `ExpiredTime` is wall-clock time.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The moment (Unix ms) credentials issued at `issued_ms` and expiring at
/// `expires_ms` are fetched again: at 80% of the lifetime or 5 minutes before the
/// expiry, whichever comes first, and not before half of the lifetime.
pub fn refresh_at(issued_ms: i64, expires_ms: i64) -> i64 {
    let lifetime = (expires_ms - issued_ms).max(0);
    let share = issued_ms + lifetime * REFRESH_SHARE.0 / REFRESH_SHARE.1;
    let margin = expires_ms - REFRESH_MARGIN_MS;
    share.min(margin).max(issued_ms + lifetime / 2)
}

/// Temporary credentials and their lifetime.
#[derive(Debug)]
struct Temporary {
    client: CvmClient,
    refresh_at_ms: i64,
}

/// How an account's requests are signed.
#[derive(Debug)]
enum Signer {
    /// Long-term credentials (the base ones, or a profile's).
    Fixed(CvmClient),
    /// A role, assumed with `base`; `current` is `None` until first needed.
    Assumed {
        base: CvmClient,
        role: Role,
        current: Mutex<Option<Temporary>>,
    },
}

/// One account's sender. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct AccountClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    identity: String,
    signer: Signer,
}

/// How an account's credentials could not be had: AssumeRole refused (its code,
/// e.g. `ResourceNotFound.RoleNotFound`) or its reply unusable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("account {account}: {error}")]
pub struct SessionError {
    pub account: String,
    pub error: CallError,
}

impl SessionError {
    /// The AssumeRole refusal as the refusal of the call that needed it, the
    /// account and the role named in its message.
    pub fn into_call_error(self) -> CallError {
        match self.error {
            CallError::Api(mut api) => {
                api.message = format!("account {}: AssumeRole: {}", self.account, api.message);
                CallError::Api(api)
            }
            CallError::Transport(mut transport) => {
                transport.detail =
                    format!("account {}: AssumeRole: {}", self.account, transport.detail);
                CallError::Transport(transport)
            }
        }
    }
}

impl AccountClient {
    /// The sender of `account`. `base` signs with the base credentials (and sends
    /// AssumeRole); `profile` builds a client for a tccli profile's credentials.
    pub fn new(
        account: &Account,
        base: &CvmClient,
        profile: &dyn Fn(&str) -> Result<CvmClient, String>,
    ) -> Result<AccountClient, String> {
        let (identity, signer) = match &account.source {
            // Long-term credentials: the SecretId is the limit's scope, as for a command
            // without --account (both share one pacer key).
            Source::Base => (base.secret_id().to_string(), Signer::Fixed(base.clone())),
            Source::Profile(name) => {
                let client = profile(name)?;
                (client.secret_id().to_string(), Signer::Fixed(client))
            }
            Source::Role(role) => (
                format!("account {} (role {})", account.name, role.arn),
                Signer::Assumed {
                    base: base.clone(),
                    role: role.clone(),
                    current: Mutex::new(None),
                },
            ),
        };
        Ok(AccountClient {
            inner: Arc::new(Inner {
                name: account.name.clone(),
                identity,
                signer,
            }),
        })
    }

    /// The account's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What the account's rate limits are keyed by: its name and its role, stable
    /// across refreshes; for long-term credentials, their SecretId.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// A client signing with the account's credentials, valid for a while yet
    /// (assumed again first when due). Concurrent callers wait for one AssumeRole.
    pub async fn client(&self) -> Result<CvmClient, SessionError> {
        match &self.inner.signer {
            Signer::Fixed(client) => Ok(client.clone()),
            Signer::Assumed {
                base,
                role,
                current,
            } => {
                let mut current = current.lock().await;
                if let Some(temporary) = current.as_ref()
                    && unix_ms() < temporary.refresh_at_ms
                {
                    return Ok(temporary.client.clone());
                }
                let fresh = assume(base, role).await.map_err(|error| SessionError {
                    account: self.inner.name.clone(),
                    error,
                })?;
                tracing::info!(
                    account = %self.inner.name,
                    role = %role.arn,
                    refresh_in_ms = fresh.refresh_at_ms - unix_ms(),
                    "assumed the account's role"
                );
                let client = fresh.client.clone();
                *current = Some(fresh);
                Ok(client)
            }
        }
    }

    /// Sends one call of `service` as the account. Credentials the server calls
    /// expired or invalid (`AuthFailure.TokenFailure`) are assumed again and the call
    /// sent once more; a role that cannot be assumed is the call's refusal, with
    /// AssumeRole's code (`ResourceNotFound.RoleNotFound`...) and the account named.
    pub async fn call_service(
        &self,
        service: crate::cvm::Service,
        action: &str,
        region: &str,
        body: &Value,
    ) -> Result<(Value, String), CallError> {
        let mut retried = false;
        loop {
            let client = self.client().await.map_err(SessionError::into_call_error)?;
            let result = client.call_service(service, action, region, body).await;
            match &result {
                Err(error) if error.code() == TOKEN_FAILURE && self.is_assumed() && !retried => {
                    tracing::warn!(account = %self.name(), "temporary credentials refused; assuming the role again");
                    self.invalidate().await;
                    retried = true;
                }
                _ => return result,
            }
        }
    }

    /// A client that sends every call as this account ([`crate::api::Delegate`]).
    pub fn into_client(self) -> CvmClient {
        let base = self.base().clone();
        CvmClient::delegating(&base, std::sync::Arc::new(self))
    }

    /// Forgets the temporary credentials (a reply said they are no longer valid):
    /// the next [`AccountClient::client`] assumes the role again.
    pub async fn invalidate(&self) {
        if let Signer::Assumed { current, .. } = &self.inner.signer {
            *current.lock().await = None;
        }
    }

    /// The client of the account's endpoint (for URLs and limiter keys; it may sign
    /// with other credentials than the account's).
    pub fn base(&self) -> &CvmClient {
        match &self.inner.signer {
            Signer::Fixed(client) => client,
            Signer::Assumed { base, .. } => base,
        }
    }

    /// True when the account's credentials are temporary (a role).
    pub fn is_assumed(&self) -> bool {
        matches!(self.inner.signer, Signer::Assumed { .. })
    }
}

/// The executor's view of one account: every call signed with the account's
/// current credentials, paced under its identity. Credentials the server calls
/// expired or invalid (`AuthFailure.TokenFailure`) are assumed again and the call
/// sent once more; a role that cannot be assumed is the call's refusal, with
/// AssumeRole's code (`ResourceNotFound.RoleNotFound`...).
impl crate::api::Delegate for AccountClient {
    fn identity(&self) -> &str {
        AccountClient::identity(self)
    }

    fn call_service<'a>(
        &'a self,
        service: crate::cvm::Service,
        action: &'a str,
        region: &'a str,
        body: &'a Value,
    ) -> crate::api::DelegatedCall<'a> {
        Box::pin(AccountClient::call_service(
            self, service, action, region, body,
        ))
    }
}

impl crate::executor::Api for AccountClient {
    async fn call(
        &self,
        call: &crate::executor::Call,
    ) -> Result<crate::executor::Reply, crate::executor::Refused> {
        self.call_service(
            call.action.service(),
            call.action.name(),
            &call.region,
            &call.body,
        )
        .await
        .map(|(response, request_id)| crate::executor::Reply {
            request_id,
            http_status: 200,
            response,
        })
        .map_err(crate::executor::Refused::from)
    }

    fn endpoint(&self, region: &str) -> String {
        self.base().endpoint_for(region)
    }

    fn secret_id(&self) -> String {
        self.identity().to_string()
    }

    fn endpoint_of(&self, action: Action, region: &str) -> String {
        self.base().endpoint_for_service(action.service(), region)
    }
}

/// The code of a request signed with expired or unknown temporary credentials.
pub const TOKEN_FAILURE: &str = "AuthFailure.TokenFailure";

/// Members listed per DescribeOrganizationMembers page (the API's maximum).
const MEMBERS_PER_PAGE: u64 = 50;

/// The Organization's members (`DescribeOrganizationMembers`, every page), as its
/// administrator's `base` credentials see them.
pub async fn organization_members(base: &CvmClient) -> Result<Vec<super::Member>, CallError> {
    let mut members = Vec::new();
    loop {
        let body = json!({ "Offset": members.len(), "Limit": MEMBERS_PER_PAGE });
        let (response, request_id) = base
            .call_action(Action::DescribeOrganizationMembers, STS_REGION, &body)
            .await?;
        let items = response
            .get("Items")
            .and_then(Value::as_array)
            .ok_or_else(|| bad_reply(&request_id, "the reply has no Items"))?;
        for item in items {
            let uin = match item.get("MemberUin") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => return Err(bad_reply(&request_id, "a member has no MemberUin")),
            };
            let name = item
                .get("Name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            members.push(super::Member { uin, name });
        }
        let total = response.get("Total").and_then(Value::as_u64).unwrap_or(0);
        if items.is_empty() || members.len() as u64 >= total {
            return Ok(members);
        }
    }
}

/// AssumeRole's body for `role`.
pub fn assume_role_body(role: &Role) -> Value {
    let mut body = json!({
        "RoleArn": role.arn,
        "RoleSessionName": role.session_name,
        "DurationSeconds": role.duration.as_secs(),
    });
    if let Some(external) = &role.external_id {
        body["ExternalId"] = Value::String(external.expose().to_string());
    }
    body
}

async fn assume(base: &CvmClient, role: &Role) -> Result<Temporary, CallError> {
    let issued_ms = unix_ms();
    let (mut response, request_id) = base
        .call_action(Action::AssumeRole, STS_REGION, &assume_role_body(role))
        .await?;
    let parsed = parse_assume_role(&response, &request_id);
    // The reply held the temporary SecretKey and token: only the `Secret`s keep them.
    scrub(&mut response);
    let (credentials, expires_ms) = parsed?;
    let client = base
        .with_credentials(credentials)
        .map_err(|err| bad_reply(&request_id, &err.to_string()))?;
    Ok(Temporary {
        client,
        refresh_at_ms: refresh_at(issued_ms, expires_ms),
    })
}

fn bad_reply(request_id: &str, detail: &str) -> CallError {
    CallError::Transport(TransportError::new(
        TransportKind::BadBody,
        format!("AssumeRole (RequestId {request_id}): {detail}"),
    ))
}

/// The temporary credentials of an AssumeRole reply and their expiry (Unix ms).
pub fn parse_assume_role(
    response: &Value,
    request_id: &str,
) -> Result<(Credentials, i64), CallError> {
    let field = |name: &str| {
        response
            .get("Credentials")
            .and_then(|c| c.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad_reply(request_id, &format!("the reply has no Credentials.{name}")))
    };
    let secret_id = field("TmpSecretId")?.to_string();
    let secret_key = Secret::new(field("TmpSecretKey")?);
    let token = Secret::new(field("Token")?);
    let expires = response
        .get("ExpiredTime")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad_reply(request_id, "the reply has no ExpiredTime"))?;
    Ok((
        Credentials {
            secret_id,
            secret_key,
            token: Some(token),
            source: format!("AssumeRole (RequestId {request_id})"),
        },
        expires.saturating_mul(1000),
    ))
}

fn scrub(value: &mut Value) {
    use zeroize::Zeroize;
    match value {
        Value::String(text) => text.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(map) => map.values_mut().for_each(scrub),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_at_80_percent_or_5_minutes_before_whichever_first() {
        let h = 3_600_000;
        // Two hours: 80% (96 min) is before 115 min.
        assert_eq!(refresh_at(0, 2 * h), 2 * h * 4 / 5);
        // Fifteen minutes: 5 minutes before (10 min) is before 80% (12 min).
        assert_eq!(refresh_at(0, 15 * 60_000), 10 * 60_000);
        // Ten seconds (a simulator's): never before half the lifetime.
        assert_eq!(refresh_at(1000, 11_000), 6000);
        // Already expired: at once.
        assert_eq!(refresh_at(5000, 1000), 5000);
    }

    #[test]
    fn an_assume_role_reply_becomes_credentials_without_showing_them() {
        let reply = json!({
            "Credentials": {"TmpSecretId": "AKIDtmp", "TmpSecretKey": "tmpkey", "Token": "tok"},
            "ExpiredTime": 1_700_000_000_i64,
            "Expiration": "2023-11-14T22:13:20Z",
        });
        let (credentials, expires) = parse_assume_role(&reply, "rid-1").unwrap();
        assert_eq!(credentials.secret_id, "AKIDtmp");
        assert_eq!(credentials.secret_key.expose(), "tmpkey");
        assert_eq!(credentials.token.as_ref().map(Secret::expose), Some("tok"));
        assert_eq!(expires, 1_700_000_000_000);
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("tmpkey") && !shown.contains("tok\""),
            "{shown}"
        );
        let err = parse_assume_role(&json!({"Credentials": {}}), "rid-2").unwrap_err();
        assert!(err.to_string().contains("TmpSecretId"), "{err}");
    }

    #[test]
    fn the_body_names_the_role_and_its_options() {
        let mut role = Role::new("qcs::cam::uin/2:roleName/R");
        role.external_id = Some(Secret::new("ext"));
        let body = assume_role_body(&role);
        assert_eq!(body["RoleArn"], "qcs::cam::uin/2:roleName/R");
        assert_eq!(body["RoleSessionName"], "keyfleet");
        assert_eq!(body["DurationSeconds"], 7200);
        assert_eq!(body["ExternalId"], "ext");
    }
}
