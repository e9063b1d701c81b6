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

use crate::cvm::Action;
use crate::store::queue::QueuedJob;
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

/// What the executor needs from an API client.
pub trait Api: Send + Sync + 'static {
    /// Sends one call.
    fn call(&self, call: &Call) -> impl Future<Output = Result<Reply, Refused>> + Send;
    /// The access endpoint a call for `region` reaches (part of the limiter key).
    fn endpoint(&self, region: &str) -> String;
    /// The SecretId calls are signed with (part of the limiter key; not a secret).
    fn secret_id(&self) -> String;
}

impl Api for crate::api::CvmClient {
    async fn call(&self, call: &Call) -> Result<Reply, Refused> {
        crate::api::CvmClient::call(self, call.action.name(), &call.region, &call.body)
            .await
            .map(|(response, request_id)| Reply {
                request_id,
                http_status: 200,
                response,
            })
            .map_err(|error| Refused {
                code: error.code(),
                message: error.message(),
                request_id: error.request_id().map(str::to_string),
                http_status: error.http_status(),
                transport: matches!(error, crate::api::CallError::Transport(_)),
            })
    }

    fn endpoint(&self, region: &str) -> String {
        crate::api::CvmClient::endpoint_for(self, region)
    }

    fn secret_id(&self) -> String {
        crate::api::CvmClient::secret_id(self).to_string()
    }
}

/// What a success reply proves about its job's pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The API accepted the operation: every pending pair of the job is covered by
    /// the reply's RequestId.
    Accepted,
}

/// The (instance ids, key ids) of one child of a divided batch.
pub type Shape = (Vec<String>, Vec<String>);

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
            endpoint: api.endpoint_for(&job.region),
            secret_id: api.secret_id_for(),
        }
    }
}

/// The parts of an [`Api`] a limiter key needs, object-safe.
pub trait KeyParts {
    fn endpoint_for(&self, region: &str) -> String;
    fn secret_id_for(&self) -> String;
}

impl<A: Api> KeyParts for A {
    fn endpoint_for(&self, region: &str) -> String {
        self.endpoint(region)
    }
    fn secret_id_for(&self) -> String {
        self.secret_id()
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

static DISASSOCIATE: KeyPairOperation = KeyPairOperation(Action::DisassociateInstancesKeyPairs);
static ASSOCIATE: KeyPairOperation = KeyPairOperation(Action::AssociateInstancesKeyPairs);

/// The implementation for jobs of `action`; `None` for an action the queue does not hold.
pub fn job_action(action: Action) -> Option<&'static dyn JobAction> {
    match action {
        Action::DisassociateInstancesKeyPairs => Some(&DISASSOCIATE),
        Action::AssociateInstancesKeyPairs => Some(&ASSOCIATE),
        Action::DescribeInstances | Action::DescribeKeyPairs | Action::DescribeRegions => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(force_stop: bool) -> QueuedJob {
        QueuedJob {
            id: 1,
            action: Action::DisassociateInstancesKeyPairs,
            region: "ap-guangzhou".into(),
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
        let action = job_action(Action::DisassociateInstancesKeyPairs).unwrap();
        let call = action.call(&job(false));
        assert_eq!(call.action, Action::DisassociateInstancesKeyPairs);
        assert_eq!(
            call.body,
            json!({"InstanceIds": ["ins-00000001", "ins-00000002"], "KeyIds": ["skey-00000001"]})
        );
        let forced = action.call(&job(true));
        assert_eq!(forced.body["ForceStop"], Value::Bool(true));
        let associate = job_action(Action::AssociateInstancesKeyPairs).unwrap();
        assert_eq!(
            associate.call(&job(false)).action,
            Action::AssociateInstancesKeyPairs
        );
    }

    #[test]
    fn every_action_the_queue_holds_has_an_implementation_of_its_own_name() {
        for action in Action::ALL {
            if let Some(implementation) = job_action(action) {
                assert_eq!(implementation.action(), action);
            }
        }
    }
}
