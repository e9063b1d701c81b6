//! Every account one run works as: the run's own client (rows without an account)
//! and one client per account its rows name, each signing as its account
//! ([`super::session::AccountClient::into_client`]). The executor sends a job's calls
//! through [`Estate`] as the job's account ([`Api::call_as`]) and paces them under that
//! account's identity ([`Api::identity`]): N accounts go N times as fast, and one
//! account's throttles slow only it.

use std::collections::BTreeMap;

use crate::api::CvmClient;
use crate::cvm::Action;
use crate::executor::{Api, Call, Refused, Reply};

/// The code a call for an account the run has no client for gets (never sent). The
/// binary checks every account a run names before it starts, so this is a bug or a
/// database edited by hand; Fatal, so only that account stops.
pub const UNKNOWN_ACCOUNT: &str = "KeyFleet.UnknownAccount";

/// The clients of a run's accounts, by name, and the run's own.
#[derive(Debug, Clone)]
pub struct Estate {
    own: CvmClient,
    named: BTreeMap<String, CvmClient>,
}

impl Estate {
    /// A run of one account: every call goes through `own`.
    pub fn single(own: CvmClient) -> Estate {
        Estate {
            own,
            named: BTreeMap::new(),
        }
    }

    /// The run's own client and one per named account.
    pub fn new(own: CvmClient, named: BTreeMap<String, CvmClient>) -> Estate {
        Estate { own, named }
    }

    /// The client of `account` (`None`: the run's own).
    pub fn client(&self, account: Option<&str>) -> Option<&CvmClient> {
        match account {
            None => Some(&self.own),
            Some(name) => self.named.get(name),
        }
    }
}

impl Api for Estate {
    async fn call(&self, call: &Call) -> Result<Reply, Refused> {
        Api::call(&self.own, call).await
    }

    async fn call_as(&self, account: Option<&str>, call: &Call) -> Result<Reply, Refused> {
        match self.client(account) {
            Some(client) => Api::call(client, call).await,
            None => Err(Refused {
                code: UNKNOWN_ACCOUNT.to_string(),
                message: format!(
                    "account {} is not among the accounts this command was given (--accounts)",
                    account.unwrap_or_default()
                ),
                request_id: None,
                http_status: None,
                transport: false,
            }),
        }
    }

    fn identity(&self, account: Option<&str>) -> String {
        match self.client(account) {
            Some(client) => client.secret_id().to_string(),
            // Unknown: paced apart from every real account; its call is refused unsent.
            None => format!("unknown account {}", account.unwrap_or_default()),
        }
    }

    fn endpoint(&self, region: &str) -> String {
        self.own.endpoint_for(region)
    }

    fn secret_id(&self) -> String {
        self.own.secret_id().to_string()
    }

    fn endpoint_of(&self, action: Action, region: &str) -> String {
        self.own.endpoint_for_service(action.service(), region)
    }
}
