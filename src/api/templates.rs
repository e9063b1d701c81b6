//! Replies of the actions that close an incident: key pairs with their public keys,
//! CVM launch templates and their versions, Auto Scaling launch configurations.
//!
//! Strict about the envelope and each item's id (a reply that breaks them is a
//! [`TransportKind::BadBody`](super::TransportKind::BadBody)), tolerant of every other
//! field being absent or null, like the other reads.

use serde_json::Value;

use super::CallError;
use super::wire::{parse_set, string_field, string_list, total_count};

/// One key pair as `DescribeKeyPairs` lists it, with what matching and retiring need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyPairDetail {
    pub key_id: String,
    /// `KeyName` (empty when omitted).
    pub key_name: String,
    /// `PublicKey`, OpenSSH text whose comment the API replaced by the key id (empty
    /// when omitted).
    pub public_key: String,
    /// The instances it is bound to, in any region (`AssociatedInstanceIds`).
    pub associated_instance_ids: Vec<String>,
}

/// A page of any Describe: its items and `TotalCount` (`None` when omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page<T> {
    pub items: Vec<T>,
    pub total_count: Option<u64>,
}

impl<T> Page<T> {
    /// The `Offset` of the next page after one asked from `offset` with `limit`, or
    /// `None` when this one is the last (without a total: when it was not full).
    pub(crate) fn next_offset(&self, offset: u64, limit: u64) -> Option<u64> {
        let returned = self.items.len() as u64;
        let next = offset.saturating_add(returned);
        let more = match self.total_count {
            Some(total) => next < total,
            None => returned == limit,
        };
        (more && returned > 0).then_some(next)
    }
}

/// Reads a `DescribeKeyPairs` reply with the public keys and names.
pub(crate) fn parse_key_pair_details(
    response: &Value,
    request_id: &str,
) -> Result<Page<KeyPairDetail>, CallError> {
    let items = parse_set(response, "KeyPairSet", request_id, |item| {
        Some(KeyPairDetail {
            key_id: item.get("KeyId")?.as_str()?.to_string(),
            key_name: string_field(item, "KeyName"),
            public_key: string_field(item, "PublicKey"),
            associated_instance_ids: string_list(item.get("AssociatedInstanceIds")),
        })
    })?;
    Ok(Page {
        items,
        total_count: total_count(response, request_id)?,
    })
}

/// One CVM launch template (`DescribeLaunchTemplates`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct LaunchTemplate {
    /// `lt-...`.
    pub template_id: String,
    pub name: String,
    /// `DefaultVersionNumber` (`None` when omitted).
    pub default_version: Option<u64>,
}

/// Reads a `DescribeLaunchTemplates` reply.
pub(crate) fn parse_launch_templates(
    response: &Value,
    request_id: &str,
) -> Result<Page<LaunchTemplate>, CallError> {
    let items = parse_set(response, "LaunchTemplateSet", request_id, |item| {
        Some(LaunchTemplate {
            template_id: item.get("LaunchTemplateId")?.as_str()?.to_string(),
            name: string_field(item, "LaunchTemplateName"),
            default_version: item.get("DefaultVersionNumber").and_then(Value::as_u64),
        })
    })?;
    Ok(Page {
        items,
        total_count: total_count(response, request_id)?,
    })
}

/// One version of a launch template (`DescribeLaunchTemplateVersions`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct LaunchTemplateVersion {
    pub template_id: String,
    /// `LaunchTemplateVersion`.
    pub version: u64,
    /// `IsDefaultVersion`.
    pub is_default: bool,
    /// `LaunchTemplateVersionData.LoginSettings.KeyIds`.
    pub key_ids: Vec<String>,
    /// `LaunchTemplateVersionDescription` (a template change marks its version with it).
    #[serde(skip)]
    pub description: String,
}

/// Reads a `DescribeLaunchTemplateVersions` reply; a version without its template id
/// or its number is a bad body.
pub(crate) fn parse_launch_template_versions(
    response: &Value,
    request_id: &str,
) -> Result<Page<LaunchTemplateVersion>, CallError> {
    let items = parse_set(response, "LaunchTemplateVersionSet", request_id, |item| {
        let login = item
            .get("LaunchTemplateVersionData")
            .and_then(|d| d.get("LoginSettings"));
        Some(LaunchTemplateVersion {
            template_id: item.get("LaunchTemplateId")?.as_str()?.to_string(),
            version: item.get("LaunchTemplateVersion")?.as_u64()?,
            is_default: item
                .get("IsDefaultVersion")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            key_ids: string_list(login.and_then(|l| l.get("KeyIds"))),
            description: string_field(item, "LaunchTemplateVersionDescription"),
        })
    })?;
    Ok(Page {
        items,
        total_count: total_count(response, request_id)?,
    })
}

/// One Auto Scaling launch configuration (`DescribeLaunchConfigurations`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct LaunchConfiguration {
    /// `asc-...`.
    pub configuration_id: String,
    pub name: String,
    /// `LoginSettings.KeyIds`.
    pub key_ids: Vec<String>,
    /// `LoginSettings.KeepImageLogin` (kept when the key set is rewritten).
    #[serde(skip)]
    pub keep_image_login: bool,
}

/// Reads a `DescribeLaunchConfigurations` reply.
pub(crate) fn parse_launch_configurations(
    response: &Value,
    request_id: &str,
) -> Result<Page<LaunchConfiguration>, CallError> {
    let items = parse_set(response, "LaunchConfigurationSet", request_id, |item| {
        Some(LaunchConfiguration {
            configuration_id: item.get("LaunchConfigurationId")?.as_str()?.to_string(),
            name: string_field(item, "LaunchConfigurationName"),
            key_ids: string_list(item.get("LoginSettings").and_then(|l| l.get("KeyIds"))),
            keep_image_login: item
                .get("LoginSettings")
                .and_then(|l| l.get("KeepImageLogin"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    })?;
    Ok(Page {
        items,
        total_count: total_count(response, request_id)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_are_read_strictly_about_ids_and_tolerantly_about_the_rest() {
        let keys = parse_key_pair_details(
            &json!({"KeyPairSet": [
                {"KeyId": "skey-aaaa1111", "KeyName": "ops", "PublicKey": "ssh-ed25519 AAAA skey-aaaa1111",
                 "AssociatedInstanceIds": ["ins-00000001"]},
                {"KeyId": "skey-bbbb2222", "PublicKey": null}
            ], "TotalCount": 2}),
            "r",
        )
        .unwrap();
        assert_eq!(keys.total_count, Some(2));
        assert_eq!(keys.items[0].key_name, "ops");
        assert_eq!(keys.items[1].public_key, "");
        assert_eq!(keys.next_offset(0, 100), None);
        let versions = parse_launch_template_versions(
            &json!({"LaunchTemplateVersionSet": [
                {"LaunchTemplateId": "lt-aaaa1111", "LaunchTemplateVersion": 3, "IsDefaultVersion": true,
                 "LaunchTemplateVersionData": {"LoginSettings": {"KeyIds": ["skey-aaaa1111"]}}}
            ], "TotalCount": 120}),
            "r",
        )
        .unwrap();
        assert_eq!(versions.items[0].version, 3);
        assert!(versions.items[0].is_default);
        assert_eq!(versions.items[0].key_ids, ["skey-aaaa1111"]);
        assert_eq!(versions.next_offset(0, 100), Some(1));
        let bad = parse_launch_template_versions(
            &json!({"LaunchTemplateVersionSet": [{"LaunchTemplateId": "lt-aaaa1111"}]}),
            "r",
        )
        .unwrap_err();
        assert_eq!(bad.code(), "Transport.BadBody");
        let configurations = parse_launch_configurations(
            &json!({"LaunchConfigurationSet": [
                {"LaunchConfigurationId": "asc-aaaa1111", "LoginSettings": {"KeyIds": null}}
            ]}),
            "r",
        )
        .unwrap();
        assert!(configurations.items[0].key_ids.is_empty());
        assert_eq!(configurations.next_offset(0, 100), None);
        assert!(parse_launch_templates(&json!({"LaunchTemplateSet": [{}]}), "r").is_err());
    }
}
