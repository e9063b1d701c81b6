//! What the executor sends and how it reads the answer, per API action.
//!
//! Two contracts meet here:
//!
//! - [`Api`]: sends one [`Call`] (action, region, JSON body) and returns the reply
//!   or why there was none. [`crate::api::CvmClient`] implements it; so does the
//!   executor tests' fake. The client knows nothing of jobs.
//! - [`JobAction`]: one implementation per action the queue can hold. It builds a
//!   job's call, reads a success reply into what it proves, divides a refused batch,
//!   and names the limiter key the call is paced under. The dispatcher, the writer,
//!   crash recovery and the pacer are the same for every action.
//!
//! Adding an action to the queue is one `JobAction` implementation plus a row in
//! [`job_action`] (and its name in `src/cvm.rs`).

use std::future::Future;

use serde_json::{Value, json};

use crate::api::{self, InstanceInfo};
use crate::cvm::Action;
use crate::rules::power;
use crate::rules::template::{self, Change};
use crate::states::JobKind;
use crate::store::Verified;
use crate::store::now_ms;
use crate::store::queue::QueuedJob;
use crate::store::verify::VerifyPayload;
use crate::taxonomy::Classification;

use super::isolate;
use super::pacer::LimiterKey;

/// One request as the executor asks the API for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub action: Action,
    pub region: String,
    pub body: Value,
}

/// A success reply: its RequestId, HTTP status and `Response` object.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub request_id: String,
    pub http_status: u16,
    pub response: Value,
}

/// A failed request: an API error reply or a transport failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub http_status: Option<u16>,
    /// No reply was read (connection, timeout, malformed body).
    pub transport: bool,
}

impl Refused {
    /// A reply that arrived but does not say what the action needs: treated like a
    /// body that could not be read (`Transport.BadBody`, retried).
    pub fn bad_body(reply: &Reply, detail: String) -> Refused {
        Refused {
            code: format!("{}BadBody", crate::taxonomy::TRANSPORT_PREFIX),
            message: detail,
            request_id: Some(reply.request_id.clone()),
            http_status: Some(reply.http_status),
            transport: true,
        }
    }
}

impl From<crate::api::CallError> for Refused {
    fn from(error: crate::api::CallError) -> Refused {
        Refused {
            code: error.code(),
            message: error.message(),
            request_id: error.request_id().map(str::to_string),
            http_status: error.http_status(),
            transport: matches!(error, crate::api::CallError::Transport(_)),
        }
    }
}

/// What the executor needs from an API client.
pub trait Api: Send + Sync + 'static {
    /// Sends one call.
    fn call(&self, call: &Call) -> impl Future<Output = Result<Reply, Refused>> + Send;
    /// Sends one call as `account` (a job's; `None`: the run's own). A client of one
    /// account has only its own: by default, [`Api::call`].
    fn call_as(
        &self,
        account: Option<&str>,
        call: &Call,
    ) -> impl Future<Output = Result<Reply, Refused>> + Send {
        let _ = account;
        self.call(call)
    }
    /// Whose rate limit `account`'s calls count against (part of the limiter key):
    /// by default [`Api::secret_id`], the one account's.
    fn identity(&self, account: Option<&str>) -> String {
        let _ = account;
        self.secret_id()
    }
    /// The access endpoint a call for `region` reaches (part of the limiter key).
    fn endpoint(&self, region: &str) -> String;
    /// The SecretId calls are signed with (part of the limiter key; not a secret).
    fn secret_id(&self) -> String;
    /// The access endpoint a call of `action` for `region` reaches: its service's
    /// (part of the limiter key). By default [`Api::endpoint`], one for every service.
    fn endpoint_of(&self, action: Action, region: &str) -> String {
        let _ = action;
        self.endpoint(region)
    }
}

impl Api for crate::api::CvmClient {
    async fn call(&self, call: &Call) -> Result<Reply, Refused> {
        crate::api::CvmClient::call_action(self, call.action, &call.region, &call.body)
            .await
            .map(|(response, request_id)| Reply {
                request_id,
                http_status: 200,
                response,
            })
            .map_err(Refused::from)
    }

    fn endpoint(&self, region: &str) -> String {
        crate::api::CvmClient::endpoint_for(self, region)
    }

    fn secret_id(&self) -> String {
        crate::api::CvmClient::secret_id(self).to_string()
    }

    fn endpoint_of(&self, action: Action, region: &str) -> String {
        crate::api::CvmClient::endpoint_for_service(self, action.service(), region)
    }
}

/// What a success reply proves about its job's pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The API accepted the operation: every pending pair of the job is covered by
    /// the reply's RequestId.
    Accepted,
    /// A read of the cloud's state: what it says of each item (by id). With
    /// `recheck_at`, some instance's operation was still running and the job is to
    /// look again then; the verdicts so far are kept meanwhile.
    Observed {
        verified: Vec<(i64, Verified)>,
        recheck_at: Option<i64>,
        /// The keys each instance shown holds (a `--keep-one-key` look decides on them).
        keys: Vec<(String, Vec<String>)>,
        /// What a live run's read (survey, settle) saw of each instance.
        seen: Vec<crate::rules::power::Seen>,
        /// What a template change's look read (its template's versions, its configuration).
        listed: Option<template::Listed>,
    },
}

/// The (instance ids, key ids) of one child of a divided batch.
pub(super) type Shape = (Vec<String>, Vec<String>);

/// One action the queue can hold. Implementations are stateless and `'static`.
pub trait JobAction: Send + Sync {
    /// The API action this sends.
    fn action(&self) -> Action;

    /// The call for one job.
    fn call(&self, job: &QueuedJob) -> Call;

    /// What a success reply proves; `Err` when the reply lacks what the action
    /// needs (it is then retried as `Transport.BadBody`).
    fn read(&self, job: &QueuedJob, reply: &Reply) -> Result<Proof, String>;

    /// The children that replace a batch refused for `error`, or `None` when the
    /// job cannot be divided further for it and its pairs fail.
    fn split(&self, job: &QueuedJob, error: Classification, message: &str) -> Option<Vec<Shape>>;

    /// The limiter the call is paced under: its action, where it goes, as whom.
    fn limiter_key(&self, job: &QueuedJob, api: &dyn KeyParts) -> LimiterKey {
        LimiterKey {
            action: self.action(),
            endpoint: api.endpoint_of_for(self.action(), &job.region),
            secret_id: api.identity_for(job.account.as_deref()),
        }
    }
}

/// The parts of an [`Api`] a limiter key needs, object-safe.
pub trait KeyParts {
    fn endpoint_for(&self, region: &str) -> String;
    /// The endpoint of `action`'s service for `region` (`as` has a host of its own).
    fn endpoint_of_for(&self, action: Action, region: &str) -> String;
    /// The identity `account`'s calls are paced under ([`Api::identity`]).
    fn identity_for(&self, account: Option<&str>) -> String;
}

impl<A: Api> KeyParts for A {
    fn endpoint_for(&self, region: &str) -> String {
        self.endpoint(region)
    }
    fn endpoint_of_for(&self, action: Action, region: &str) -> String {
        self.endpoint_of(action, region)
    }
    fn identity_for(&self, account: Option<&str>) -> String {
        self.identity(account)
    }
}

/// Associate or Disassociate: the cross product of `InstanceIds` x `KeyIds`.
struct KeyPairOperation(Action);

impl JobAction for KeyPairOperation {
    fn action(&self) -> Action {
        self.0
    }

    fn call(&self, job: &QueuedJob) -> Call {
        let mut body = json!({ "InstanceIds": job.instance_ids, "KeyIds": job.key_ids });
        if job.force_stop {
            body["ForceStop"] = Value::Bool(true);
        }
        Call {
            action: self.0,
            region: job.region.clone(),
            body,
        }
    }

    fn read(&self, _job: &QueuedJob, _reply: &Reply) -> Result<Proof, String> {
        // The RequestId is the whole proof of acceptance; the caller has checked it.
        Ok(Proof::Accepted)
    }

    fn split(&self, job: &QueuedJob, error: Classification, message: &str) -> Option<Vec<Shape>> {
        isolate::split(&job.instance_ids, &job.key_ids, error.scope, message)
    }
}

/// How long a verification batch waits before looking again at an instance whose
/// operation is still running.
pub(super) const RECHECK_EVERY_MS: i64 = 2_000;

/// `LatestOperationState` while an operation runs, and when it ended badly.
const OPERATING: &str = "OPERATING";
const FAILED: &str = "FAILED";

/// What the cloud says of one pair: the instance as DescribeInstances showed it (or
/// `None`: not there), the key, the RequestId of the operation that claimed it, and
/// whether the key is to be bound (a rotation's new key) rather than gone.
pub(super) fn verdict(
    instance: Option<&InstanceInfo>,
    key_id: &str,
    request_id: Option<&str>,
    bind: bool,
) -> Verified {
    let Some(instance) = instance else {
        return Verified::InstanceMissing;
    };
    let present = instance.key_ids.iter().any(|k| k == key_id);
    let state = instance.latest_operation_state.as_deref();
    let ours =
        request_id.is_some() && instance.latest_operation_request_id.as_deref() == request_id;
    match (bind, present, state) {
        // Our Associate still runs: the key may be in the list before it is usable.
        (true, _, Some(OPERATING)) if ours || !present => Verified::Operating,
        // Confirmed means listed *and* our operation not FAILED: a key listed because an
        // earlier request (whose reply was lost) bound it is confirmed by sending again.
        (true, _, Some(FAILED)) if ours => Verified::OperationFailed,
        (true, true, _) => Verified::Bound,
        (true, false, _) => Verified::NotBound,
        (false, false, _) => Verified::Gone,
        (false, true, Some(OPERATING)) => Verified::Operating,
        (false, true, Some(FAILED)) if ours => Verified::OperationFailed,
        (false, true, _) => Verified::StillBound,
    }
}

/// A verification batch: `DescribeInstances` of up to 100 instances, read against
/// the items in the job's payload (those of its instances, after any split).
struct VerifyBatch;

impl VerifyBatch {
    fn payload(job: &QueuedJob) -> Result<VerifyPayload, String> {
        let text = job
            .payload
            .as_deref()
            .ok_or("a verification job has no payload")?;
        serde_json::from_str(text).map_err(|e| format!("job {}: unreadable payload: {e}", job.id))
    }
}

impl JobAction for VerifyBatch {
    fn action(&self) -> Action {
        Action::DescribeInstances
    }

    fn call(&self, job: &QueuedJob) -> Call {
        Call {
            action: Action::DescribeInstances,
            region: job.region.clone(),
            body: json!({ "InstanceIds": job.instance_ids, "Limit": crate::ids::MAX_IDS_PER_REQUEST }),
        }
    }

    fn read(&self, job: &QueuedJob, reply: &Reply) -> Result<Proof, String> {
        let payload = Self::payload(job)?;
        let limit = crate::ids::MAX_IDS_PER_REQUEST as u64;
        let page = api::parse_instance_page(&reply.response, &reply.request_id, 0, limit)
            .map_err(|e| e.message())?;
        let now = now_ms();
        let mut operating = false;
        let verified: Vec<(i64, Verified)> = payload
            .items
            .iter()
            .filter(|item| job.instance_ids.binary_search(&item.instance_id).is_ok())
            .map(|item| {
                let instance = page
                    .instances
                    .iter()
                    .find(|i| i.instance_id == item.instance_id);
                let value = verdict(
                    instance,
                    &item.key_id,
                    item.request_id.as_deref(),
                    item.bind,
                );
                operating |= value == Verified::Operating;
                (item.item_id, value)
            })
            .collect();
        let shown = || {
            page.instances
                .iter()
                .filter(|i| job.instance_ids.binary_search(&i.instance_id).is_ok())
        };
        // A `--keep-one-key` look carries what it saw of each instance: its rules wait
        // out an operation in progress (issue 26, M2).
        let look = job.kind == crate::states::JobKind::Look;
        let recheck_at = (operating && now < payload.recheck_until)
            .then(|| (now + RECHECK_EVERY_MS).min(payload.recheck_until));
        let keys = shown()
            .map(|i| (i.instance_id.clone(), i.key_ids.clone()))
            .collect();
        Ok(Proof::Observed {
            verified,
            recheck_at,
            keys,
            seen: if look {
                shown().map(seen).collect()
            } else {
                Vec::new()
            },
            listed: None,
        })
    }

    fn split(&self, job: &QueuedJob, error: Classification, message: &str) -> Option<Vec<Shape>> {
        // Only instances divide a read; every child keeps the whole key list.
        isolate::split(&job.instance_ids, &job.key_ids, error.scope, message).map(|children| {
            children
                .into_iter()
                .filter(|(i, _)| !i.is_empty())
                .collect()
        })
    }
}

/// A live run's read (`survey`, `settle`): `DescribeInstances` of up to 100
/// instances, each as seen ([`crate::rules::power::Seen`]); a settle looks again every
/// [`power::Target::look_again_ms`] while an instance is not yet where it waits for it.
struct PowerRead;

/// What a read saw of one instance, as the rules take it.
fn seen(info: &InstanceInfo) -> power::Seen {
    power::Seen {
        instance_id: info.instance_id.clone(),
        state: info.instance_state.clone(),
        zone: info.zone.clone(),
        tags: info.tags.clone(),
        windows: info.os_name.to_ascii_lowercase().contains("windows"),
        latest_operation: info.latest_operation.clone(),
        latest_state: info.latest_operation_state.clone(),
        latest_request_id: info.latest_operation_request_id.clone(),
    }
}

impl JobAction for PowerRead {
    fn action(&self) -> Action {
        Action::DescribeInstances
    }

    fn call(&self, job: &QueuedJob) -> Call {
        VerifyBatch.call(job)
    }

    fn read(&self, job: &QueuedJob, reply: &Reply) -> Result<Proof, String> {
        let limit = crate::ids::MAX_IDS_PER_REQUEST as u64;
        let page = api::parse_instance_page(&reply.response, &reply.request_id, 0, limit)
            .map_err(|e| e.message())?;
        let seen: Vec<power::Seen> = page
            .instances
            .iter()
            .filter(|i| job.instance_ids.binary_search(&i.instance_id).is_ok())
            .map(seen)
            .collect();
        let mut recheck_at = None;
        if job.kind == crate::states::JobKind::Settle {
            let text = job
                .payload
                .as_deref()
                .ok_or("a settle job has no payload")?;
            let payload: power::SettlePayload = serde_json::from_str(text)
                .map_err(|e| format!("job {}: unreadable payload: {e}", job.id))?;
            let now = now_ms();
            let waiting = job.instance_ids.iter().any(|id| {
                seen.iter()
                    .find(|s| &s.instance_id == id)
                    .is_some_and(|s| !s.settled(payload.target, payload.request_id.as_deref()))
            });
            if waiting && now < payload.until {
                recheck_at = Some((now + payload.target.look_again_ms()).min(payload.until));
            }
        }
        Ok(Proof::Observed {
            verified: Vec::new(),
            recheck_at,
            keys: Vec::new(),
            seen,
            listed: None,
        })
    }

    fn split(&self, job: &QueuedJob, error: Classification, message: &str) -> Option<Vec<Shape>> {
        VerifyBatch.split(job, error, message)
    }
}

/// StopInstances or StartInstances of up to 100 instances.
struct PowerOperation(Action);

impl JobAction for PowerOperation {
    fn action(&self) -> Action {
        self.0
    }

    fn call(&self, job: &QueuedJob) -> Call {
        let body = match self.0 {
            Action::StopInstances => {
                let stop_type = job
                    .payload
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<power::StopPayload>(p).ok())
                    .map(|p| p.stop_type)
                    .unwrap_or_default();
                api::stop_instances_body(&job.instance_ids, stop_type)
            }
            _ => api::start_instances_body(&job.instance_ids),
        };
        Call {
            action: self.0,
            region: job.region.clone(),
            body,
        }
    }

    fn read(&self, _job: &QueuedJob, _reply: &Reply) -> Result<Proof, String> {
        // Accepted: the settle that follows shows where each instance went.
        Ok(Proof::Accepted)
    }

    fn split(&self, job: &QueuedJob, error: Classification, message: &str) -> Option<Vec<Shape>> {
        // Only instances divide a power request (it names no key).
        let keys = [String::new()];
        isolate::split(&job.instance_ids, &keys, error.scope, message).map(|children| {
            children
                .into_iter()
                .filter(|(i, _)| !i.is_empty())
                .map(|(i, _)| (i, Vec::new()))
                .collect()
        })
    }
}

/// A template change's job (`rules::template`): one template or launch configuration,
/// named in its payload; never divided.
struct TemplateStep(JobKind);

impl TemplateStep {
    fn change(job: &QueuedJob) -> Result<Change, String> {
        let text = job
            .payload
            .as_deref()
            .ok_or_else(|| format!("template job {} has no payload", job.id))?;
        Change::decode(text).map_err(|e| format!("job {}: {e}", job.id))
    }
}

impl JobAction for TemplateStep {
    fn action(&self) -> Action {
        self.0.action()
    }

    fn call(&self, job: &QueuedJob) -> Call {
        // A payload the store wrote always reads back; an unreadable one sends a
        // request the API refuses (no id), which fails the job with its code.
        let change = Self::change(job).unwrap_or_else(|_| Change {
            kind: crate::states::TemplateKind::LaunchTemplate,
            template_id: String::new(),
            version: 0,
            was_default: false,
            leaked: Vec::new(),
            add: Vec::new(),
            marker: String::new(),
            keys: Vec::new(),
            keep_image_login: false,
            created_by: None,
            made: None,
            doubts: 0,
        });
        let body = match self.0 {
            JobKind::TemplateLook => json!({
                "LaunchTemplateId": change.template_id,
                "Limit": crate::ids::MAX_IDS_PER_REQUEST,
            }),
            JobKind::Template => json!({
                "LaunchTemplateId": change.template_id,
                "LaunchTemplateVersion": change.version,
                "LaunchTemplateVersionDescription": change.marker,
                "LoginSettings": { "KeyIds": change.keys },
            }),
            JobKind::TemplateDefault => json!({
                "LaunchTemplateId": change.template_id,
                "DefaultVersion": change.made.unwrap_or(0),
            }),
            JobKind::LaunchConfigLook => json!({
                "LaunchConfigurationIds": [change.template_id],
                "Limit": crate::ids::MAX_IDS_PER_REQUEST,
            }),
            _ => {
                // The new LoginSettings replaces the old whole: the keys computed from
                // what the look read, and KeepImageLogin as it was.
                let mut login = json!({ "KeyIds": change.keys });
                if change.keep_image_login {
                    login["KeepImageLogin"] = Value::Bool(true);
                }
                json!({
                    "LaunchConfigurationId": change.template_id,
                    "LoginSettings": login,
                })
            }
        };
        Call {
            action: self.0.action(),
            region: job.region.clone(),
            body,
        }
    }

    fn read(&self, job: &QueuedJob, reply: &Reply) -> Result<Proof, String> {
        let change = Self::change(job)?;
        let listed = match self.0 {
            JobKind::TemplateLook => {
                let page = api::templates::parse_launch_template_versions(
                    &reply.response,
                    &reply.request_id,
                )
                .map_err(|e| e.message())?;
                if page
                    .total_count
                    .is_some_and(|n| n as usize > page.items.len())
                {
                    return Err(format!(
                        "{} lists more versions than one page holds",
                        change.template_id
                    ));
                }
                template::Listed::Versions(
                    page.items
                        .into_iter()
                        .filter(|v| v.template_id == change.template_id)
                        .map(|v| template::VersionSeen {
                            version: v.version,
                            is_default: v.is_default,
                            key_ids: v.key_ids,
                            description: v.description,
                        })
                        .collect(),
                )
            }
            JobKind::LaunchConfigLook => {
                let page =
                    api::templates::parse_launch_configurations(&reply.response, &reply.request_id)
                        .map_err(|e| e.message())?;
                template::Listed::Configuration(
                    page.items
                        .into_iter()
                        .find(|c| c.configuration_id == change.template_id)
                        .map(|c| template::ConfigSeen {
                            key_ids: c.key_ids,
                            keep_image_login: c.keep_image_login,
                        }),
                )
            }
            // A write: the RequestId is the proof.
            _ => return Ok(Proof::Accepted),
        };
        Ok(Proof::Observed {
            verified: Vec::new(),
            recheck_at: None,
            keys: Vec::new(),
            seen: Vec::new(),
            listed: Some(listed),
        })
    }

    fn split(
        &self,
        _job: &QueuedJob,
        _error: Classification,
        _message: &str,
    ) -> Option<Vec<Shape>> {
        // One template per job: nothing to divide; the change fails with the code.
        None
    }
}

static TEMPLATE_LOOK: TemplateStep = TemplateStep(JobKind::TemplateLook);
static TEMPLATE_CREATE: TemplateStep = TemplateStep(JobKind::Template);
static TEMPLATE_DEFAULT: TemplateStep = TemplateStep(JobKind::TemplateDefault);
static CONFIG_LOOK: TemplateStep = TemplateStep(JobKind::LaunchConfigLook);
static CONFIG_WRITE: TemplateStep = TemplateStep(JobKind::LaunchConfig);

static VERIFY: VerifyBatch = VerifyBatch;
static POWER_READ: PowerRead = PowerRead;
static STOP: PowerOperation = PowerOperation(Action::StopInstances);
static START: PowerOperation = PowerOperation(Action::StartInstances);

static DISASSOCIATE: KeyPairOperation = KeyPairOperation(Action::DisassociateInstancesKeyPairs);
static ASSOCIATE: KeyPairOperation = KeyPairOperation(Action::AssociateInstancesKeyPairs);

/// The implementation for jobs of `kind`.
pub fn job_action(kind: JobKind) -> Option<&'static dyn JobAction> {
    Some(match kind {
        JobKind::Unbind => &DISASSOCIATE,
        JobKind::Bind => &ASSOCIATE,
        JobKind::Confirm | JobKind::Look | JobKind::Verify => &VERIFY,
        JobKind::Survey | JobKind::Settle => &POWER_READ,
        JobKind::Stop => &STOP,
        JobKind::Start => &START,
        JobKind::TemplateLook => &TEMPLATE_LOOK,
        JobKind::Template => &TEMPLATE_CREATE,
        JobKind::TemplateDefault => &TEMPLATE_DEFAULT,
        JobKind::LaunchConfigLook => &CONFIG_LOOK,
        JobKind::LaunchConfig => &CONFIG_WRITE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(force_stop: bool) -> QueuedJob {
        QueuedJob {
            id: 1,
            kind: crate::states::JobKind::Unbind,
            action: Action::DisassociateInstancesKeyPairs,
            region: "ap-guangzhou".into(),
            account: None,
            force_stop,
            instance_ids: vec!["ins-00000001".into(), "ins-00000002".into()],
            key_ids: vec!["skey-00000001".into()],
            payload: None,
            attempts: 0,
            pair_count: 2,
        }
    }

    #[test]
    fn key_pair_calls_name_the_cross_product_and_force_stop_only_when_asked() {
        let action = job_action(JobKind::Unbind).unwrap();
        let call = action.call(&job(false));
        assert_eq!(call.action, Action::DisassociateInstancesKeyPairs);
        assert_eq!(
            call.body,
            json!({"InstanceIds": ["ins-00000001", "ins-00000002"], "KeyIds": ["skey-00000001"]})
        );
        let forced = action.call(&job(true));
        assert_eq!(forced.body["ForceStop"], Value::Bool(true));
        let associate = job_action(JobKind::Bind).unwrap();
        assert_eq!(
            associate.call(&job(false)).action,
            Action::AssociateInstancesKeyPairs
        );
    }

    fn instance(keys: &[&str], state: Option<&str>, request_id: Option<&str>) -> InstanceInfo {
        InstanceInfo {
            instance_id: "ins-00000001".into(),
            instance_state: "STOPPED".into(),
            os_name: "TencentOS".into(),
            key_ids: keys.iter().map(|k| k.to_string()).collect(),
            latest_operation: Some("DisassociateInstancesKeyPairs".into()),
            latest_operation_state: state.map(str::to_string),
            latest_operation_request_id: request_id.map(str::to_string),
            zone: None,
            tags: Default::default(),
        }
    }

    #[test]
    fn verdicts_follow_the_clouds_own_state() {
        let key = "skey-00000001";
        let ours = Some("req-1");
        assert_eq!(verdict(None, key, ours, false), Verified::InstanceMissing);
        let gone = instance(&["skey-00000002"], Some("SUCCESS"), ours);
        assert_eq!(verdict(Some(&gone), key, ours, false), Verified::Gone);
        let running = instance(&[key], Some("OPERATING"), ours);
        assert_eq!(
            verdict(Some(&running), key, ours, false),
            Verified::Operating
        );
        let failed = instance(&[key], Some("FAILED"), ours);
        assert_eq!(
            verdict(Some(&failed), key, ours, false),
            Verified::OperationFailed
        );
        // Someone else's failed operation says nothing of ours: the key is still bound.
        assert_eq!(
            verdict(Some(&failed), key, Some("req-2"), false),
            Verified::StillBound
        );
        assert_eq!(
            verdict(Some(&failed), key, None, false),
            Verified::StillBound
        );
        let untouched = instance(&[key], None, None);
        assert_eq!(
            verdict(Some(&untouched), key, None, false),
            Verified::StillBound
        );

        // A new key (rotation): bound once it is in the list and our Associate is done.
        let bound = instance(&[key], Some("SUCCESS"), ours);
        assert_eq!(verdict(Some(&bound), key, ours, true), Verified::Bound);
        let binding = instance(&[], Some("OPERATING"), ours);
        assert_eq!(
            verdict(Some(&binding), key, ours, true),
            Verified::Operating
        );
        let listed_early = instance(&[key], Some("OPERATING"), ours);
        assert_eq!(
            verdict(Some(&listed_early), key, ours, true),
            Verified::Operating
        );
        let bind_failed = instance(&[], Some("FAILED"), ours);
        assert_eq!(
            verdict(Some(&bind_failed), key, ours, true),
            Verified::OperationFailed
        );
        let listed_but_failed = instance(&[key], Some("FAILED"), ours);
        assert_eq!(
            verdict(Some(&listed_but_failed), key, ours, true),
            Verified::OperationFailed
        );
        assert_eq!(
            verdict(Some(&untouched), "skey-00000009", None, true),
            Verified::NotBound
        );
        // Bound by someone else's later operation: the list is the cloud's word.
        let later = instance(&[key], Some("SUCCESS"), Some("req-7"));
        assert_eq!(verdict(Some(&later), key, ours, true), Verified::Bound);
        assert_eq!(verdict(None, key, ours, true), Verified::InstanceMissing);
    }

    #[test]
    fn a_verification_batch_reads_its_items_and_rechecks_while_operating() {
        let payload = VerifyPayload {
            recheck_until: now_ms() + 60_000,
            items: vec![
                crate::store::verify::VerifyItem {
                    item_id: 10,
                    instance_id: "ins-00000001".into(),
                    key_id: "skey-00000001".into(),
                    request_id: Some("req-1".into()),
                    bind: false,
                },
                crate::store::verify::VerifyItem {
                    item_id: 11,
                    instance_id: "ins-00000002".into(),
                    key_id: "skey-00000001".into(),
                    request_id: Some("req-1".into()),
                    bind: false,
                },
            ],
        };
        let mut job = job(false);
        job.action = Action::DescribeInstances;
        job.payload = Some(serde_json::to_string(&payload).unwrap());
        let action = job_action(JobKind::Verify).unwrap();
        assert_eq!(
            action.call(&job).body["InstanceIds"],
            json!(job.instance_ids)
        );
        let reply = Reply {
            request_id: "req-9".into(),
            http_status: 200,
            response: json!({
                "TotalCount": 1,
                "InstanceSet": [{
                    "InstanceId": "ins-00000001",
                    "LoginSettings": {"KeyIds": ["skey-00000001"]},
                    "LatestOperationState": "OPERATING",
                    "LatestOperationRequestId": "req-1"
                }],
                "RequestId": "req-9"
            }),
        };
        let Proof::Observed {
            verified,
            recheck_at,
            ..
        } = action.read(&job, &reply).unwrap()
        else {
            panic!("a read observes");
        };
        assert_eq!(
            verified,
            [(10, Verified::Operating), (11, Verified::InstanceMissing)]
        );
        assert!(recheck_at.is_some(), "still operating: look again");
        // A split child reads only its own instances.
        job.instance_ids = vec!["ins-00000002".into()];
        let Proof::Observed {
            verified,
            recheck_at,
            ..
        } = action.read(&job, &reply).unwrap()
        else {
            panic!("a read observes");
        };
        assert_eq!(verified, [(11, Verified::InstanceMissing)]);
        assert_eq!(recheck_at, None);
        job.payload = Some("{".into());
        assert!(action.read(&job, &reply).is_err());
    }

    #[test]
    fn every_kind_has_an_implementation_that_sends_its_action() {
        for kind in JobKind::ALL {
            let implementation = job_action(*kind).expect("every kind is sendable");
            assert_eq!(implementation.action(), kind.action(), "{kind}");
        }
    }
}
