//! The CVM API's vocabulary, defined once for the client, the executor and the
//! simulator: service, version, endpoint, and each action's name and documented rate.
//!
//! Adding an action starts here: a variant, its name and its limit. The simulator
//! serves the same names (it keeps its own messages: it is the test oracle).

use std::fmt;

/// Tencent Cloud's CVM endpoint (it resolves to the nearest access region).
pub const DEFAULT_ENDPOINT: &str = "https://cvm.tencentcloudapi.com";
/// The CVM API version every call names in `X-TC-Version`.
pub const API_VERSION: &str = "2017-03-12";
/// The service name in the signature's credential scope.
pub const SERVICE: &str = "cvm";

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
}

impl Action {
    /// Every action, in a fixed order (tables and tests walk it).
    pub const ALL: [Action; 7] = [
        Action::DisassociateInstancesKeyPairs,
        Action::AssociateInstancesKeyPairs,
        Action::DescribeInstances,
        Action::DescribeKeyPairs,
        Action::DescribeRegions,
        Action::StopInstances,
        Action::StartInstances,
    ];

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
        }
    }

    /// The action with this `X-TC-Action` name (exact, as the API matches it).
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The documented limit in requests per second, per access region and sub-account
    /// (reference, section 1).
    pub fn rate_limit(self) -> u32 {
        match self {
            Action::DisassociateInstancesKeyPairs | Action::AssociateInstancesKeyPairs => 10,
            Action::DescribeInstances => 40,
            Action::DescribeRegions => 20,
            Action::DescribeKeyPairs => 10,
            Action::StopInstances | Action::StartInstances => 10,
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
        for action in Action::ALL {
            assert_eq!(Action::from_name(action.name()), Some(action));
        }
        assert_eq!(Action::from_name("disassociateinstanceskeypairs"), None);
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
