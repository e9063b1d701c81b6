//! The API's vocabulary, defined once for the client, the executor and the
//! simulator: each service (name, version, host) and each action's name, service and
//! documented rate.
//!
//! Adding an action starts here: a variant, its name, its service and its limit. The
//! simulator serves the same names (it keeps its own messages: it is the test oracle).
//! Adding a service (`sts` and `organization` were the last) is one more [`Service`] variant with its name, version
//! and host; the client signs, routes and paces by it without further change.

use std::fmt;

/// Tencent Cloud's CVM endpoint (it resolves to the nearest access region).
pub const DEFAULT_ENDPOINT: &str = "https://cvm.tencentcloudapi.com";
/// The CVM API version every CVM call names in `X-TC-Version`.
pub const API_VERSION: &str = "2017-03-12";
/// The CVM service name in the signature's credential scope.
pub const SERVICE: &str = "cvm";

/// A Tencent Cloud service keyfleet calls. Each has its own name (the first label
/// of its host and the service in the signature's credential scope), API version and
/// documented host; all are regional (`X-TC-Region`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Cloud Virtual Machine: instances, key pairs, launch templates.
    Cvm,
    /// Auto Scaling: launch configurations.
    As,
    /// Security Token Service: AssumeRole, an account's temporary credentials.
    Sts,
    /// Tencent Cloud Organization: its member accounts.
    Organization,
}

impl Service {
    /// Every service, in a fixed order.
    pub const ALL: [Service; 4] = [
        Service::Cvm,
        Service::As,
        Service::Sts,
        Service::Organization,
    ];

    /// The name in the credential scope and in the host (`cvm`, `as`).
    pub fn name(self) -> &'static str {
        match self {
            Service::Cvm => SERVICE,
            Service::As => "as",
            Service::Sts => "sts",
            Service::Organization => "organization",
        }
    }

    /// The version every call to the service names in `X-TC-Version`.
    pub fn version(self) -> &'static str {
        match self {
            Service::Cvm => API_VERSION,
            Service::As => "2018-04-19",
            Service::Sts => "2018-08-13",
            Service::Organization => "2021-03-31",
        }
    }

    /// The documented host (it resolves to the nearest access region).
    pub fn host(self) -> &'static str {
        match self {
            Service::Cvm => "cvm.tencentcloudapi.com",
            Service::As => "as.tencentcloudapi.com",
            Service::Sts => "sts.tencentcloudapi.com",
            Service::Organization => "organization.tencentcloudapi.com",
        }
    }

    /// The service with this name (exact, as the credential scope carries it).
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A CVM API action keyfleet calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    DisassociateInstancesKeyPairs,
    AssociateInstancesKeyPairs,
    DescribeInstances,
    DescribeKeyPairs,
    DescribeRegions,
    StopInstances,
    StartInstances,
    // Template changes (issue 22): queued like every job (migration 0012).
    DescribeLaunchTemplateVersions,
    CreateLaunchTemplateVersion,
    ModifyLaunchTemplateDefaultVersion,
    DescribeLaunchConfigurations,
    ModifyLaunchConfigurationAttributes,
    // Closing an incident (issue 22): read and sent directly by `discover` and `retire`,
    // never queued (the jobs table's CHECK does not name them), so not in `ALL`.
    ImportKeyPair,
    DeleteKeyPairs,
    DescribeLaunchTemplates,
    // Many accounts (issue 23): sent directly when an account's credentials are
    // needed or the Organization is listed, never queued.
    AssumeRole,
    DescribeOrganizationMembers,
}

impl Action {
    /// Every action the queue can hold, in a fixed order (tables and tests walk it).
    pub const ALL: [Action; 12] = [
        Action::DisassociateInstancesKeyPairs,
        Action::AssociateInstancesKeyPairs,
        Action::DescribeInstances,
        Action::DescribeKeyPairs,
        Action::DescribeRegions,
        Action::StopInstances,
        Action::StartInstances,
        Action::DescribeLaunchTemplateVersions,
        Action::CreateLaunchTemplateVersion,
        Action::ModifyLaunchTemplateDefaultVersion,
        Action::DescribeLaunchConfigurations,
        Action::ModifyLaunchConfigurationAttributes,
    ];

    /// The actions that close an incident sent directly (by `discover` and `retire`),
    /// never queued.
    pub const INCIDENT: [Action; 3] = [
        Action::ImportKeyPair,
        Action::DeleteKeyPairs,
        Action::DescribeLaunchTemplates,
    ];

    /// The actions of many accounts: an account's credentials, the Organization's members.
    pub const ACCOUNTS: [Action; 2] = [Action::AssumeRole, Action::DescribeOrganizationMembers];

    /// Every action of every service: [`Action::ALL`], then [`Action::INCIDENT`], then
    /// [`Action::ACCOUNTS`].
    pub fn every() -> impl Iterator<Item = Action> {
        Action::ALL
            .into_iter()
            .chain(Action::INCIDENT)
            .chain(Action::ACCOUNTS)
    }

    /// The name sent in `X-TC-Action`.
    pub fn name(self) -> &'static str {
        match self {
            Action::DisassociateInstancesKeyPairs => "DisassociateInstancesKeyPairs",
            Action::AssociateInstancesKeyPairs => "AssociateInstancesKeyPairs",
            Action::DescribeInstances => "DescribeInstances",
            Action::DescribeKeyPairs => "DescribeKeyPairs",
            Action::DescribeRegions => "DescribeRegions",
            Action::StopInstances => "StopInstances",
            Action::StartInstances => "StartInstances",
            Action::ImportKeyPair => "ImportKeyPair",
            Action::DeleteKeyPairs => "DeleteKeyPairs",
            Action::DescribeLaunchTemplates => "DescribeLaunchTemplates",
            Action::DescribeLaunchTemplateVersions => "DescribeLaunchTemplateVersions",
            Action::CreateLaunchTemplateVersion => "CreateLaunchTemplateVersion",
            Action::ModifyLaunchTemplateDefaultVersion => "ModifyLaunchTemplateDefaultVersion",
            Action::DescribeLaunchConfigurations => "DescribeLaunchConfigurations",
            Action::ModifyLaunchConfigurationAttributes => "ModifyLaunchConfigurationAttributes",
            Action::AssumeRole => "AssumeRole",
            Action::DescribeOrganizationMembers => "DescribeOrganizationMembers",
        }
    }

    /// The action with this `X-TC-Action` name (exact, as the API matches it), in any service.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::every().find(|a| a.name() == name)
    }

    /// The action with this name in `service` (an action belongs to one service).
    pub fn from_service_name(service: Service, name: &str) -> Option<Action> {
        Action::from_name(name).filter(|a| a.service() == service)
    }

    /// The service the action belongs to: its host, version and signing scope.
    pub fn service(self) -> Service {
        match self {
            Action::DescribeLaunchConfigurations | Action::ModifyLaunchConfigurationAttributes => {
                Service::As
            }
            Action::AssumeRole => Service::Sts,
            Action::DescribeOrganizationMembers => Service::Organization,
            _ => Service::Cvm,
        }
    }

    /// True for the actions that change something in the account (the ones a
    /// `--dry-run` never sends).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Action::DisassociateInstancesKeyPairs
                | Action::AssociateInstancesKeyPairs
                | Action::StopInstances
                | Action::StartInstances
                | Action::ImportKeyPair
                | Action::DeleteKeyPairs
                | Action::CreateLaunchTemplateVersion
                | Action::ModifyLaunchTemplateDefaultVersion
                | Action::ModifyLaunchConfigurationAttributes
        )
    }

    /// The documented limit in requests per second, per access region and sub-account
    /// (reference, section 1; the incident's actions: live-fleets-and-incident.md,
    /// sections 2 and 3). CreateLaunchTemplateVersion and ModifyLaunchTemplateDefaultVersion
    /// have no published limit: 10, the lowest of CVM's.
    pub fn rate_limit(self) -> u32 {
        match self {
            Action::DisassociateInstancesKeyPairs | Action::AssociateInstancesKeyPairs => 10,
            Action::DescribeInstances => 40,
            Action::DescribeRegions => 20,
            Action::DescribeKeyPairs => 10,
            Action::StopInstances | Action::StartInstances => 10,
            Action::ImportKeyPair | Action::DeleteKeyPairs => 10,
            Action::DescribeLaunchTemplates | Action::DescribeLaunchTemplateVersions => 20,
            Action::CreateLaunchTemplateVersion | Action::ModifyLaunchTemplateDefaultVersion => 10,
            Action::DescribeLaunchConfigurations | Action::ModifyLaunchConfigurationAttributes => {
                20
            }
            // STS: 600/s (live-fleets-and-incident.md, section 4). The Organization's
            // limit is not published: 10, the lowest documented.
            Action::AssumeRole => 600,
            Action::DescribeOrganizationMembers => 10,
        }
    }

    /// True for the actions that change an instance (and are asynchronous on the cloud).
    pub fn is_key_pair_operation(self) -> bool {
        matches!(
            self,
            Action::DisassociateInstancesKeyPairs | Action::AssociateInstancesKeyPairs
        )
    }

    /// True for the actions that power an instance off or on (asynchronous too:
    /// STOPPING then STOPPED, STARTING then RUNNING).
    pub fn is_power_operation(self) -> bool {
        matches!(self, Action::StopInstances | Action::StartInstances)
    }
}

/// `StopType` of StopInstances (reference, section 1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StopType {
    /// Shut the OS down; it can fail (the operation ends FAILED, the instance RUNNING).
    #[default]
    Soft,
    /// Soft first, then forced if the soft shutdown fails.
    SoftFirst,
    /// Power off: the documentation warns of data loss and file-system damage.
    Hard,
}

impl StopType {
    pub const ALL: [StopType; 3] = [StopType::Soft, StopType::SoftFirst, StopType::Hard];

    /// The API's spelling, e.g. `SOFT_FIRST`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopType::Soft => "SOFT",
            StopType::SoftFirst => "SOFT_FIRST",
            StopType::Hard => "HARD",
        }
    }

    /// The command line's spelling, e.g. `soft-first`.
    pub fn flag_name(self) -> &'static str {
        match self {
            StopType::Soft => "soft",
            StopType::SoftFirst => "soft-first",
            StopType::Hard => "hard",
        }
    }

    /// The stop type the API spells `name` (exact, as the API matches it).
    pub fn from_api_name(name: &str) -> Option<StopType> {
        StopType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for StopType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StopType {
    type Err = String;

    /// Parses the command line's `soft`, `soft-first` or `hard` (the API's spellings too).
    fn from_str(text: &str) -> Result<StopType, String> {
        StopType::ALL
            .into_iter()
            .find(|t| text == t.flag_name() || text == t.as_str())
            .ok_or_else(|| format!("{text:?} is not a stop type: use soft, soft-first or hard"))
    }
}

/// `StoppedMode` keyfleet always sends: the instance keeps its CPU, memory and public IP
/// while stopped. `STOP_CHARGING` releases them, so the restart may fail and the address
/// changes (reference, section 1): keyfleet never asks for it.
pub const STOPPED_MODE_KEEP_CHARGING: &str = "KEEP_CHARGING";
/// The `StoppedMode` keyfleet never sends (the simulator records it, the audit flags it).
pub const STOPPED_MODE_STOP_CHARGING: &str = "STOP_CHARGING";

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for action in Action::every() {
            assert_eq!(Action::from_name(action.name()), Some(action));
            assert_eq!(
                Action::from_service_name(action.service(), action.name()),
                Some(action)
            );
        }
        assert_eq!(Action::from_name("disassociateinstanceskeypairs"), None);
        assert_eq!(
            Action::from_service_name(Service::As, "DescribeInstances"),
            None
        );
        for service in Service::ALL {
            assert_eq!(Service::from_name(service.name()), Some(service));
            assert!(service.host().starts_with(&format!("{}.", service.name())));
        }
    }

    #[test]
    fn incident_services_versions_and_limits() {
        assert_eq!(Action::DescribeLaunchConfigurations.service(), Service::As);
        assert_eq!(Service::As.version(), "2018-04-19");
        assert_eq!(Service::As.host(), "as.tencentcloudapi.com");
        assert_eq!(Action::DeleteKeyPairs.service(), Service::Cvm);
        assert_eq!(Action::DeleteKeyPairs.rate_limit(), 10);
        assert_eq!(Action::DescribeLaunchTemplateVersions.rate_limit(), 20);
        assert_eq!(Action::ModifyLaunchConfigurationAttributes.rate_limit(), 20);
        // The queue's actions are exactly ALL; no incident action is queued yet.
        assert!(Action::INCIDENT.iter().all(|a| !Action::ALL.contains(a)));
        assert!(!Action::DescribeKeyPairs.is_write());
        assert!(Action::DeleteKeyPairs.is_write());
    }

    #[test]
    fn documented_limits() {
        assert_eq!(Action::DisassociateInstancesKeyPairs.rate_limit(), 10);
        assert_eq!(Action::AssociateInstancesKeyPairs.rate_limit(), 10);
        assert_eq!(Action::DescribeInstances.rate_limit(), 40);
        assert_eq!(Action::DescribeRegions.rate_limit(), 20);
        assert_eq!(Action::DescribeKeyPairs.rate_limit(), 10);
        assert_eq!(Action::StopInstances.rate_limit(), 10);
        assert_eq!(Action::StartInstances.rate_limit(), 10);
    }

    #[test]
    fn power_actions_are_not_key_pair_operations() {
        for action in Action::ALL {
            assert!(!(action.is_power_operation() && action.is_key_pair_operation()));
        }
        assert!(Action::StopInstances.is_power_operation());
        assert!(Action::StartInstances.is_power_operation());
    }

    #[test]
    fn stop_types_parse_from_both_spellings() {
        for stop_type in StopType::ALL {
            assert_eq!(stop_type.flag_name().parse(), Ok(stop_type));
            assert_eq!(stop_type.as_str().parse(), Ok(stop_type));
            assert_eq!(StopType::from_api_name(stop_type.as_str()), Some(stop_type));
        }
        assert_eq!(StopType::default(), StopType::Soft);
        assert!(
            "gentle"
                .parse::<StopType>()
                .unwrap_err()
                .contains("soft-first")
        );
        assert_eq!(StopType::from_api_name("soft"), None);
    }
}
