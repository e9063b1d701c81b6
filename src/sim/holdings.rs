//! What an account holds besides its instances: key pairs (with their public keys),
//! launch templates with their versions, Auto Scaling launch configurations; and the
//! fleet file's checks of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids;
use crate::pubkey::PublicKey;

/// The most key pairs an account holds.
pub const MAX_KEY_PAIRS: usize = 100;
/// The most versions a launch template holds.
pub const MAX_TEMPLATE_VERSIONS: usize = 30;
/// The longest `KeyName` ImportKeyPair accepts.
pub const MAX_KEY_NAME_CHARS: usize = 25;

/// A key pair's details in the fleet file. A key without an entry is named by its id
/// and has a public key derived from its id ([`derived_public_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    pub key_id: String,
    /// `KeyName`; the key id when empty.
    #[serde(default)]
    pub name: String,
    /// The OpenSSH public key (its comment is ignored: replies carry the key id
    /// there); derived from the key id when empty. Two key pairs may hold the same
    /// one, as keys imported before the API's duplicate check do.
    #[serde(default)]
    pub public_key: String,
    /// Custom images that reference the key: DeleteKeyPairs refuses it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_ids: Vec<String>,
}

impl KeyPair {
    pub fn new(key_id: impl Into<String>) -> KeyPair {
        KeyPair {
            key_id: key_id.into(),
            name: String::new(),
            public_key: String::new(),
            image_ids: Vec::new(),
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> KeyPair {
        self.name = name.into();
        self
    }

    pub fn public_key(mut self, public_key: impl Into<String>) -> KeyPair {
        self.public_key = public_key.into();
        self
    }

    /// An image that references the key.
    pub fn image(mut self, image_id: impl Into<String>) -> KeyPair {
        self.image_ids.push(image_id.into());
        self
    }
}

/// One immutable version of a launch template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateVersion {
    pub version: u64,
    /// `LaunchTemplateVersionData.LoginSettings.KeyIds`.
    #[serde(default)]
    pub key_ids: Vec<String>,
    /// `LaunchTemplateVersionData.InstanceType`: a setting a new version keeps.
    #[serde(default)]
    pub instance_type: String,
    #[serde(default)]
    pub description: String,
}

/// A CVM launch template (regional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplate {
    /// `lt-` and 8 characters of 0-9 or a-z.
    pub template_id: String,
    pub name: String,
    pub region: String,
    pub default_version: u64,
    pub versions: Vec<TemplateVersion>,
}

impl LaunchTemplate {
    /// A template with no version yet: add them with [`LaunchTemplate::version`].
    pub fn new(
        template_id: impl Into<String>,
        name: impl Into<String>,
        region: impl Into<String>,
    ) -> LaunchTemplate {
        LaunchTemplate {
            template_id: template_id.into(),
            name: name.into(),
            region: region.into(),
            default_version: 1,
            versions: Vec::new(),
        }
    }

    /// Adds the next version, with these keys.
    pub fn version<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> LaunchTemplate {
        let version = self.versions.len() as u64 + 1;
        self.versions.push(TemplateVersion {
            version,
            key_ids: keys.into_iter().map(Into::into).collect(),
            instance_type: "S5.MEDIUM2".into(),
            description: String::new(),
        });
        self
    }

    /// Makes `version` the default.
    pub fn default_version(mut self, version: u64) -> LaunchTemplate {
        self.default_version = version;
        self
    }
}

/// An Auto Scaling launch configuration (regional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchConfiguration {
    /// `asc-` and 8 characters of 0-9 or a-z.
    pub configuration_id: String,
    pub name: String,
    pub region: String,
    /// `LoginSettings.KeyIds`.
    #[serde(default)]
    pub key_ids: Vec<String>,
    /// `LoginSettings.KeepImageLogin`.
    #[serde(default)]
    pub keep_image_login: bool,
    /// `LoginSettings.Password` was set (never shown back, as the API does not).
    #[serde(default)]
    pub password_set: bool,
    /// `InstanceType`: a setting ModifyLaunchConfigurationAttributes keeps.
    #[serde(default)]
    pub instance_type: String,
}

impl LaunchConfiguration {
    pub fn new(
        configuration_id: impl Into<String>,
        name: impl Into<String>,
        region: impl Into<String>,
    ) -> LaunchConfiguration {
        LaunchConfiguration {
            configuration_id: configuration_id.into(),
            name: name.into(),
            region: region.into(),
            key_ids: Vec::new(),
            keep_image_login: false,
            password_set: false,
            instance_type: "S5.MEDIUM2".into(),
        }
    }

    pub fn keys<S: Into<String>>(
        mut self,
        keys: impl IntoIterator<Item = S>,
    ) -> LaunchConfiguration {
        self.key_ids = keys.into_iter().map(Into::into).collect();
        self
    }
}

/// The public key a key pair without one in the fleet file has: an ed25519-shaped
/// key whose 32 bytes are the SHA-256 of its id, so every key differs and the same
/// id always has the same key.
pub fn derived_public_key(key_id: &str) -> PublicKey {
    let mut blob = Vec::with_capacity(51);
    let key_type = "ssh-ed25519";
    blob.extend_from_slice(&(key_type.len() as u32).to_be_bytes());
    blob.extend_from_slice(key_type.as_bytes());
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&Sha256::digest(format!("keyfleet-sim:{key_id}")));
    PublicKey::from_blob(key_type, blob)
}

/// The key pairs, templates and configurations of a live fleet.
#[derive(Debug, Clone, Default)]
pub(crate) struct Holdings {
    /// Details of the key pairs that have them (declared or imported).
    pub key_pairs: BTreeMap<String, KeyPair>,
    pub templates: Vec<LaunchTemplate>,
    pub configurations: Vec<LaunchConfiguration>,
}

impl Holdings {
    pub(crate) fn new(
        key_pairs: Vec<KeyPair>,
        templates: Vec<LaunchTemplate>,
        configurations: Vec<LaunchConfiguration>,
    ) -> Holdings {
        Holdings {
            key_pairs: key_pairs
                .into_iter()
                .map(|k| (k.key_id.clone(), k))
                .collect(),
            templates,
            configurations,
        }
    }

    /// The name of `key_id`.
    pub(crate) fn name(&self, key_id: &str) -> String {
        match self.key_pairs.get(key_id) {
            Some(k) if !k.name.is_empty() => k.name.clone(),
            _ => key_id.to_string(),
        }
    }

    /// The public key of `key_id` (a declared one that does not parse counts as derived;
    /// the fleet file's validation refuses those).
    pub(crate) fn public_key(&self, key_id: &str) -> PublicKey {
        self.key_pairs
            .get(key_id)
            .filter(|k| !k.public_key.is_empty())
            .and_then(|k| PublicKey::parse(&k.public_key).ok())
            .unwrap_or_else(|| derived_public_key(key_id))
    }

    pub(crate) fn images(&self, key_id: &str) -> &[String] {
        self.key_pairs
            .get(key_id)
            .map_or(&[][..], |k| k.image_ids.as_slice())
    }
}

/// Checks the fleet file's key pairs, templates and configurations; names the first
/// offending entry.
pub(crate) fn validate_fleet(
    key_pairs: &[KeyPair],
    templates: &[LaunchTemplate],
    configurations: &[LaunchConfiguration],
) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for (n, key) in key_pairs.iter().enumerate() {
        let at = format!("key_pairs[{n}]");
        if let Some(problem) = ids::key_id_problem(&key.key_id) {
            return Err(format!("{at}.key_id: {problem}"));
        }
        if !seen.insert(key.key_id.as_str()) {
            return Err(format!("{at}.key_id: {} appears twice", key.key_id));
        }
        if !key.public_key.is_empty()
            && let Err(problem) = PublicKey::parse(&key.public_key)
        {
            return Err(format!("{at}.public_key: {problem}"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (n, template) in templates.iter().enumerate() {
        let at = format!("launch_templates[{n}]");
        if !is_resource_id(&template.template_id, "lt-") {
            return Err(format!(
                "{at}.template_id: {:?} is not lt- followed by 8 characters of 0-9 or a-z",
                ids::shorten(&template.template_id)
            ));
        }
        if !seen.insert(template.template_id.as_str()) {
            return Err(format!("{at}.template_id: appears twice"));
        }
        if !ids::is_region(&template.region) {
            return Err(format!("{at}.region: not a region name"));
        }
        if template.versions.is_empty() || template.versions.len() > MAX_TEMPLATE_VERSIONS {
            return Err(format!(
                "{at}.versions: a template has 1 to {MAX_TEMPLATE_VERSIONS} versions"
            ));
        }
        let mut numbers: Vec<u64> = template.versions.iter().map(|v| v.version).collect();
        numbers.sort_unstable();
        numbers.dedup();
        if numbers.len() != template.versions.len() {
            return Err(format!("{at}.versions: a version number appears twice"));
        }
        if !numbers.contains(&template.default_version) {
            return Err(format!(
                "{at}.default_version: {} is not one of its versions",
                template.default_version
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (n, configuration) in configurations.iter().enumerate() {
        let at = format!("launch_configurations[{n}]");
        if !is_resource_id(&configuration.configuration_id, "asc-") {
            return Err(format!(
                "{at}.configuration_id: {:?} is not asc- followed by 8 characters of 0-9 or a-z",
                ids::shorten(&configuration.configuration_id)
            ));
        }
        if !seen.insert(configuration.configuration_id.as_str()) {
            return Err(format!("{at}.configuration_id: appears twice"));
        }
        if !ids::is_region(&configuration.region) {
            return Err(format!("{at}.region: not a region name"));
        }
    }
    Ok(())
}

/// `prefix` and 8 characters of 0-9 or a-z.
pub(crate) fn is_resource_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 8
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}
