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
}

impl Action {
    /// Every action, in a fixed order (tables and tests walk it).
    pub const ALL: [Action; 5] = [
        Action::DisassociateInstancesKeyPairs,
        Action::AssociateInstancesKeyPairs,
        Action::DescribeInstances,
        Action::DescribeKeyPairs,
        Action::DescribeRegions,
    ];

    /// The name sent in `X-TC-Action`.
    pub fn name(self) -> &'static str {
        match self {
            Action::DisassociateInstancesKeyPairs => "DisassociateInstancesKeyPairs",
            Action::AssociateInstancesKeyPairs => "AssociateInstancesKeyPairs",
            Action::DescribeInstances => "DescribeInstances",
            Action::DescribeKeyPairs => "DescribeKeyPairs",
            Action::DescribeRegions => "DescribeRegions",
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
        }
    }

    /// True for the actions that change an instance (and are asynchronous on the cloud).
    pub fn is_key_pair_operation(self) -> bool {
        matches!(
            self,
            Action::DisassociateInstancesKeyPairs | Action::AssociateInstancesKeyPairs
        )
    }
}

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
    }
}
