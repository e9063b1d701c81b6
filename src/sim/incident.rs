//! What closing an incident meets: key pairs with their public keys and the images
//! that reference them (ImportKeyPair, DeleteKeyPairs, DescribeKeyPairs' details),
//! CVM launch templates with immutable versions and a default, and the Auto Scaling
//! service's launch configurations (reference: live-fleets-and-incident.md, sections
//! 2 and 3). The fleet file holds them beside the instances; validation follows the
//! API's order of concern like `actions`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::actions::{self, Action, ApiError, Executed};
use super::fleet::LiveFleet;
use crate::ids::{self, MAX_IDS_PER_REQUEST};
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
    pub fn new(
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
    fn name(&self, key_id: &str) -> String {
        match self.key_pairs.get(key_id) {
            Some(k) if !k.name.is_empty() => k.name.clone(),
            _ => key_id.to_string(),
        }
    }

    /// The public key of `key_id` (a declared one that does not parse counts as derived;
    /// the fleet file's validation refuses those).
    fn public_key(&self, key_id: &str) -> PublicKey {
        self.key_pairs
            .get(key_id)
            .filter(|k| !k.public_key.is_empty())
            .and_then(|k| PublicKey::parse(&k.public_key).ok())
            .unwrap_or_else(|| derived_public_key(key_id))
    }

    fn images(&self, key_id: &str) -> &[String] {
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
fn is_resource_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 8
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// A request of one of the incident's actions that passed validation.
#[derive(Debug)]
pub(crate) enum Validated {
    ImportKeyPair {
        name: String,
        public_key: PublicKey,
    },
    DeleteKeyPairs {
        keys: Vec<String>,
    },
    DescribeLaunchTemplates {
        selected: Vec<usize>,
        offset: usize,
        limit: usize,
    },
    DescribeLaunchTemplateVersions {
        template: usize,
        versions: Vec<u64>,
        offset: usize,
        limit: usize,
    },
    CreateLaunchTemplateVersion {
        template: usize,
        source: u64,
        key_ids: Option<Vec<String>>,
        description: String,
    },
    ModifyLaunchTemplateDefaultVersion {
        template: usize,
        version: u64,
    },
    DescribeLaunchConfigurations {
        selected: Vec<usize>,
        offset: usize,
        limit: usize,
    },
    ModifyLaunchConfigurationAttributes {
        configuration: usize,
        name: Option<String>,
        login: Option<Login>,
    },
}

/// A launch configuration's new `LoginSettings`: it replaces the old one whole.
#[derive(Debug)]
pub(crate) struct Login {
    key_ids: Vec<String>,
    keep_image_login: bool,
    password_set: bool,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new("InvalidParameterValue", message)
}

fn template_malformed() -> ApiError {
    ApiError::new(
        "InvalidParameterValue.LaunchTemplateIdMalformed",
        "The launch template id is malformed.",
    )
}

fn template_not_found() -> ApiError {
    ApiError::new(
        "InvalidParameterValue.LaunchTemplateIdNotExisted",
        "The launch template does not exist.",
    )
}

fn version_not_found() -> ApiError {
    ApiError::new(
        "InvalidParameterValue.LaunchTemplateIdVerNotExisted",
        "The launch template version does not exist.",
    )
}

fn configuration_malformed() -> ApiError {
    ApiError::new(
        "InvalidParameterValue.InvalidLaunchConfigurationId",
        "The launch configuration id is malformed.",
    )
}

fn configuration_not_found() -> ApiError {
    ApiError::new(
        "ResourceNotFound.LaunchConfigurationIdNotFound",
        "The launch configuration does not exist.",
    )
}

fn string_param(params: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::new(
            "InvalidParameter",
            format!("The parameter `{name}` must be a string."),
        )),
    }
}

fn required_string(params: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    string_param(params, name)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| actions::missing(name))
}

/// The template `id` names in `region`.
fn find_template(fleet: &LiveFleet, id: &str, region: &str) -> Result<usize, ApiError> {
    if !is_resource_id(id, "lt-") {
        return Err(template_malformed());
    }
    fleet
        .incident
        .templates
        .iter()
        .position(|t| t.template_id == id && t.region == region)
        .ok_or_else(template_not_found)
}

/// A version number parameter: a positive integer.
fn version_param(params: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match actions::int_param(params, name)? {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as u64)),
        Some(_) => Err(invalid(format!(
            "`{name}` must be a version number (1 or more)."
        ))),
    }
}

/// Checks a request of one of the incident's actions against the fleet.
pub(crate) fn validate(
    action: Action,
    params: &Map<String, Value>,
    fleet: &LiveFleet,
    region: &str,
) -> Result<Validated, ApiError> {
    match action {
        Action::ImportKeyPair => {
            actions::check_known(
                params,
                &["KeyName", "ProjectId", "PublicKey", "TagSpecification"],
            )?;
            let name = required_string(params, "KeyName")?;
            let text = required_string(params, "PublicKey")?;
            actions::int_param(params, "ProjectId")?;
            if name.chars().count() > MAX_KEY_NAME_CHARS {
                return Err(invalid(format!(
                    "`KeyName` is longer than {MAX_KEY_NAME_CHARS} characters."
                )));
            }
            let public_key = PublicKey::parse(&text).map_err(|_| {
                ApiError::new(
                    "InvalidPublicKey.Malformed",
                    "The public key is not in OpenSSH format.",
                )
            })?;
            if fleet.keys.iter().any(|k| fleet.incident.name(k) == name) {
                return Err(ApiError::new(
                    "InvalidKeyPairName.Duplicate",
                    "A key pair with this name already exists.",
                ));
            }
            if fleet
                .keys
                .iter()
                .any(|k| fleet.incident.public_key(k) == public_key)
            {
                return Err(ApiError::new(
                    "InvalidPublicKey.Duplicate",
                    "The public key already exists in this account.",
                ));
            }
            if fleet.keys.len() >= MAX_KEY_PAIRS {
                return Err(ApiError::new(
                    "InvalidKeyPair.LimitExceeded",
                    "The number of key pairs reaches the upper limit.",
                ));
            }
            Ok(Validated::ImportKeyPair { name, public_key })
        }
        Action::DeleteKeyPairs => {
            actions::check_known(params, &["KeyIds"])?;
            let key_ids = actions::string_list(params, "KeyIds")?.unwrap_or_default();
            if key_ids.is_empty() {
                return Err(actions::missing("KeyIds"));
            }
            if key_ids.len() > MAX_IDS_PER_REQUEST {
                return Err(actions::limit_exceeded());
            }
            if !key_ids.iter().all(|id| ids::is_key_id(id)) {
                return Err(actions::key_malformed());
            }
            let keys = actions::dedup(key_ids);
            if !keys.iter().all(|k| fleet.keys.contains(k)) {
                return Err(actions::key_not_found());
            }
            Ok(Validated::DeleteKeyPairs { keys })
        }
        Action::DescribeLaunchTemplates => {
            actions::check_known(params, &["LaunchTemplateIds", "Offset", "Limit"])?;
            let wanted = actions::string_list(params, "LaunchTemplateIds")?;
            let (offset, limit) = actions::paging(params)?;
            if let Some(list) = &wanted
                && !list.iter().all(|id| is_resource_id(id, "lt-"))
            {
                return Err(template_malformed());
            }
            let selected = (0..fleet.incident.templates.len())
                .filter(|&n| {
                    let t = &fleet.incident.templates[n];
                    t.region == region && wanted.as_ref().is_none_or(|w| w.contains(&t.template_id))
                })
                .collect();
            Ok(Validated::DescribeLaunchTemplates {
                selected,
                offset,
                limit,
            })
        }
        Action::DescribeLaunchTemplateVersions => {
            actions::check_known(
                params,
                &[
                    "LaunchTemplateId",
                    "LaunchTemplateVersions",
                    "DefaultVersion",
                    "Offset",
                    "Limit",
                ],
            )?;
            let id = required_string(params, "LaunchTemplateId")?;
            let (offset, limit) = actions::paging(params)?;
            let template = find_template(fleet, &id, region)?;
            let listed = &fleet.incident.templates[template];
            let mut versions: Vec<u64> = match params.get("LaunchTemplateVersions") {
                None | Some(Value::Null) => listed.versions.iter().map(|v| v.version).collect(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                            .ok_or_else(|| {
                                invalid("`LaunchTemplateVersions` holds version numbers.")
                            })
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(ApiError::new(
                        "InvalidParameter",
                        "The parameter `LaunchTemplateVersions` must be an array.",
                    ));
                }
            };
            if !versions
                .iter()
                .all(|n| listed.versions.iter().any(|v| v.version == *n))
            {
                return Err(version_not_found());
            }
            if actions::bool_param(params, "DefaultVersion")?.unwrap_or(false) {
                versions.retain(|&n| n == listed.default_version);
            }
            versions.sort_unstable();
            versions.dedup();
            Ok(Validated::DescribeLaunchTemplateVersions {
                template,
                versions,
                offset,
                limit,
            })
        }
        Action::CreateLaunchTemplateVersion => {
            actions::check_known(
                params,
                &[
                    "LaunchTemplateId",
                    "LaunchTemplateVersion",
                    "LaunchTemplateVersionDescription",
                    "LoginSettings",
                ],
            )?;
            let id = required_string(params, "LaunchTemplateId")?;
            let template = find_template(fleet, &id, region)?;
            let listed = &fleet.incident.templates[template];
            let source =
                version_param(params, "LaunchTemplateVersion")?.unwrap_or(listed.default_version);
            if !listed.versions.iter().any(|v| v.version == source) {
                return Err(version_not_found());
            }
            let key_ids = match params.get("LoginSettings") {
                None | Some(Value::Null) => None,
                Some(Value::Object(login)) => {
                    let keys = actions::string_list(login, "KeyIds")?.unwrap_or_default();
                    if !keys.iter().all(|k| ids::is_key_id(k)) {
                        return Err(actions::key_malformed());
                    }
                    if !keys.iter().all(|k| fleet.keys.contains(k)) {
                        return Err(actions::key_not_found());
                    }
                    Some(keys)
                }
                Some(_) => {
                    return Err(ApiError::new(
                        "InvalidParameter",
                        "The parameter `LoginSettings` must be an object.",
                    ));
                }
            };
            if listed.versions.len() >= MAX_TEMPLATE_VERSIONS {
                return Err(ApiError::new(
                    "LimitExceeded.LaunchTemplateVersionQuota",
                    "The launch template holds the most versions it may.",
                ));
            }
            Ok(Validated::CreateLaunchTemplateVersion {
                template,
                source,
                key_ids,
                description: string_param(params, "LaunchTemplateVersionDescription")?
                    .unwrap_or_default(),
            })
        }
        Action::ModifyLaunchTemplateDefaultVersion => {
            actions::check_known(params, &["LaunchTemplateId", "DefaultVersion"])?;
            let id = required_string(params, "LaunchTemplateId")?;
            let version = version_param(params, "DefaultVersion")?
                .ok_or_else(|| actions::missing("DefaultVersion"))?;
            let template = find_template(fleet, &id, region)?;
            if !fleet.incident.templates[template]
                .versions
                .iter()
                .any(|v| v.version == version)
            {
                return Err(version_not_found());
            }
            Ok(Validated::ModifyLaunchTemplateDefaultVersion { template, version })
        }
        Action::DescribeLaunchConfigurations => {
            actions::check_known(params, &["LaunchConfigurationIds", "Offset", "Limit"])?;
            let wanted = actions::string_list(params, "LaunchConfigurationIds")?;
            let (offset, limit) = actions::paging(params)?;
            if let Some(list) = &wanted
                && !list.iter().all(|id| is_resource_id(id, "asc-"))
            {
                return Err(configuration_malformed());
            }
            let selected = (0..fleet.incident.configurations.len())
                .filter(|&n| {
                    let c = &fleet.incident.configurations[n];
                    c.region == region
                        && wanted
                            .as_ref()
                            .is_none_or(|w| w.contains(&c.configuration_id))
                })
                .collect();
            Ok(Validated::DescribeLaunchConfigurations {
                selected,
                offset,
                limit,
            })
        }
        Action::ModifyLaunchConfigurationAttributes => {
            actions::check_known(
                params,
                &[
                    "LaunchConfigurationId",
                    "LaunchConfigurationName",
                    "LoginSettings",
                ],
            )?;
            let id = required_string(params, "LaunchConfigurationId")?;
            let name = string_param(params, "LaunchConfigurationName")?;
            let login = match params.get("LoginSettings") {
                None | Some(Value::Null) => None,
                Some(Value::Object(login)) => {
                    actions::check_known(login, &["Password", "KeyIds", "KeepImageLogin"])?;
                    let key_ids = actions::string_list(login, "KeyIds")?.unwrap_or_default();
                    if !key_ids.iter().all(|k| ids::is_key_id(k)) {
                        return Err(actions::key_malformed());
                    }
                    if !key_ids.iter().all(|k| fleet.keys.contains(k)) {
                        return Err(actions::key_not_found());
                    }
                    Some(Login {
                        key_ids,
                        keep_image_login: actions::bool_param(login, "KeepImageLogin")?
                            .unwrap_or(false),
                        password_set: string_param(login, "Password")?
                            .is_some_and(|p| !p.is_empty()),
                    })
                }
                Some(_) => {
                    return Err(ApiError::new(
                        "InvalidParameter",
                        "The parameter `LoginSettings` must be an object.",
                    ));
                }
            };
            if !is_resource_id(&id, "asc-") {
                return Err(configuration_malformed());
            }
            let configuration = fleet
                .incident
                .configurations
                .iter()
                .position(|c| c.configuration_id == id && c.region == region)
                .ok_or_else(configuration_not_found)?;
            Ok(Validated::ModifyLaunchConfigurationAttributes {
                configuration,
                name,
                login,
            })
        }
        _ => Err(ApiError::new(
            "InvalidAction",
            format!("The requested action `{action}` does not exist."),
        )),
    }
}

/// `DescribeKeyPairs`' item for `key_id`: the public key with its comment replaced by
/// the key id, and the instances of the request's region it is bound to. Key pairs are
/// account-wide; whether the real `AssociatedInstanceIds` covers other regions is not
/// documented, so the simulator takes the narrower reading and `retire` asks every region.
pub(crate) fn key_pair_json(fleet: &LiveFleet, key_id: &str, region: &str) -> Value {
    let mut holders: Vec<&str> = fleet
        .instances
        .iter()
        .filter(|i| i.spec.region == region && i.spec.key_ids.iter().any(|k| k == key_id))
        .map(|i| i.spec.instance_id.as_str())
        .collect();
    holders.sort_unstable();
    json!({
        "KeyId": key_id,
        "KeyName": fleet.incident.name(key_id),
        "ProjectId": 0,
        "Description": "",
        "PublicKey": fleet.incident.public_key(key_id).to_openssh(key_id),
        "AssociatedInstanceIds": holders,
        "CreatedTime": "2020-01-01T00:00:00Z",
    })
}

/// A new key id: derived from what is imported and how many keys exist, so a seeded
/// run gives the same ids; never one that exists.
fn new_key_id(fleet: &LiveFleet, name: &str, public_key: &PublicKey) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0u32..)
        .map(|n| {
            let digest = Sha256::digest(format!(
                "{name}\n{}\n{}\n{n}",
                public_key.body(),
                fleet.keys.len()
            ));
            let suffix: String = digest[..8]
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                .collect();
            format!("skey-{suffix}")
        })
        .find(|id| !fleet.keys.contains(id))
        .unwrap_or_default()
}

fn version_json(template: &LaunchTemplate, version: &TemplateVersion) -> Value {
    json!({
        "LaunchTemplateId": template.template_id,
        "LaunchTemplateVersion": version.version,
        "IsDefaultVersion": version.version == template.default_version,
        "LaunchTemplateVersionDescription": version.description,
        "LaunchTemplateVersionData": {
            "Placement": { "Zone": format!("{}-1", template.region) },
            "InstanceType": version.instance_type,
            "LoginSettings": { "KeyIds": version.key_ids },
        },
        "CreatedTime": "2020-01-01T00:00:00Z",
    })
}

fn configuration_json(c: &LaunchConfiguration) -> Value {
    json!({
        "LaunchConfigurationId": c.configuration_id,
        "LaunchConfigurationName": c.name,
        "InstanceType": c.instance_type,
        "LoginSettings": { "KeyIds": c.key_ids, "KeepImageLogin": c.keep_image_login },
        "CreatedTime": "2020-01-01T00:00:00Z",
    })
}

fn listing(set_name: &str, total: usize, set: Vec<Value>) -> Executed {
    let mut data = Map::new();
    data.insert("TotalCount".into(), json!(total));
    data.insert(set_name.into(), Value::Array(set));
    Executed {
        data,
        applied: false,
    }
}

/// Carries out a validated request.
pub(crate) fn execute(request: &Validated, fleet: &mut LiveFleet) -> Result<Executed, ApiError> {
    match request {
        Validated::ImportKeyPair { name, public_key } => {
            let key_id = new_key_id(fleet, name, public_key);
            fleet.keys.insert(key_id.clone());
            fleet.incident.key_pairs.insert(
                key_id.clone(),
                KeyPair::new(&key_id)
                    .name(name)
                    .public_key(public_key.to_openssh("")),
            );
            let mut data = Map::new();
            data.insert("KeyId".into(), json!(key_id));
            Ok(Executed {
                data,
                applied: true,
            })
        }
        Validated::DeleteKeyPairs { keys } => {
            // All or nothing: a key bound anywhere, or referenced by an image, refuses
            // the whole request (the caller lists again to see what is gone).
            for key in keys {
                if fleet
                    .instances
                    .iter()
                    .any(|i| i.spec.key_ids.iter().any(|k| k == key))
                {
                    return Err(ApiError::new(
                        "InvalidParameterValue.KeyPairNotSupported",
                        format!(
                            "The key pair {key} is bound to an instance and cannot be deleted."
                        ),
                    ));
                }
                if !fleet.incident.images(key).is_empty() {
                    return Err(ApiError::new(
                        "InvalidKeyPair.NotSupported",
                        format!(
                            "The key pair {key} is referenced by an image and cannot be deleted."
                        ),
                    ));
                }
            }
            for key in keys {
                fleet.keys.remove(key);
                fleet.incident.key_pairs.remove(key);
            }
            Ok(Executed {
                data: Map::new(),
                applied: true,
            })
        }
        Validated::DescribeLaunchTemplates {
            selected,
            offset,
            limit,
        } => {
            let set = selected
                .iter()
                .skip(*offset)
                .take(*limit)
                .map(|&n| {
                    let t = &fleet.incident.templates[n];
                    json!({
                        "LaunchTemplateId": t.template_id,
                        "LaunchTemplateName": t.name,
                        "DefaultVersionNumber": t.default_version,
                        "LatestVersionNumber": t.versions.iter().map(|v| v.version).max(),
                        "CreatedTime": "2020-01-01T00:00:00Z",
                    })
                })
                .collect();
            Ok(listing("LaunchTemplateSet", selected.len(), set))
        }
        Validated::DescribeLaunchTemplateVersions {
            template,
            versions,
            offset,
            limit,
        } => {
            let t = &fleet.incident.templates[*template];
            let set = versions
                .iter()
                .skip(*offset)
                .take(*limit)
                .filter_map(|n| t.versions.iter().find(|v| v.version == *n))
                .map(|v| version_json(t, v))
                .collect();
            Ok(listing("LaunchTemplateVersionSet", versions.len(), set))
        }
        Validated::CreateLaunchTemplateVersion {
            template,
            source,
            key_ids,
            description,
        } => {
            let t = &mut fleet.incident.templates[*template];
            let mut created = t
                .versions
                .iter()
                .find(|v| v.version == *source)
                .cloned()
                .ok_or_else(version_not_found)?;
            created.version = t.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            created.description.clone_from(description);
            if let Some(keys) = key_ids {
                created.key_ids.clone_from(keys);
            }
            let number = created.version;
            t.versions.push(created);
            let mut data = Map::new();
            data.insert("LaunchTemplateVersionNumber".into(), json!(number));
            Ok(Executed {
                data,
                applied: true,
            })
        }
        Validated::ModifyLaunchTemplateDefaultVersion { template, version } => {
            fleet.incident.templates[*template].default_version = *version;
            Ok(Executed {
                data: Map::new(),
                applied: true,
            })
        }
        Validated::DescribeLaunchConfigurations {
            selected,
            offset,
            limit,
        } => {
            let set = selected
                .iter()
                .skip(*offset)
                .take(*limit)
                .map(|&n| configuration_json(&fleet.incident.configurations[n]))
                .collect();
            Ok(listing("LaunchConfigurationSet", selected.len(), set))
        }
        Validated::ModifyLaunchConfigurationAttributes {
            configuration,
            name,
            login,
        } => {
            let c = &mut fleet.incident.configurations[*configuration];
            if let Some(name) = name {
                c.name.clone_from(name);
            }
            if let Some(login) = login {
                c.key_ids.clone_from(&login.key_ids);
                c.keep_image_login = login.keep_image_login;
                c.password_set = login.password_set;
            }
            Ok(Executed {
                data: Map::new(),
                applied: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Fleet;

    fn estate() -> Fleet {
        Fleet::new()
            .with_key_pair(KeyPair::new("skey-0000000a").name("deploy"))
            .with_template(
                LaunchTemplate::new("lt-0000000a", "web", "ap-guangzhou")
                    .version(["skey-0000000a"])
                    .version(Vec::<String>::new())
                    .default_version(2),
            )
            .with_configuration(
                LaunchConfiguration::new("asc-0000000a", "asg", "ap-shanghai")
                    .keys(["skey-0000000a"]),
            )
    }

    #[test]
    fn the_fleet_file_round_trips_and_names_what_is_wrong() {
        let fleet = estate();
        let text = fleet.to_json_pretty();
        assert_eq!(Fleet::from_json(&text).unwrap(), fleet);
        assert!(fleet.all_keys().contains("skey-0000000a"));
        // A fleet without any of it serializes as before.
        assert!(!Fleet::new().to_json_pretty().contains("launch_templates"));
        let refused = |edit: &dyn Fn(&mut Fleet), says: &str| {
            let mut fleet = estate();
            edit(&mut fleet);
            let err = Fleet::from_json(&fleet.to_json_pretty())
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{err}");
        };
        refused(
            &|f| f.launch_templates[0].template_id = "lt-1".into(),
            "launch_templates[0].template_id",
        );
        refused(
            &|f| f.launch_templates[0].default_version = 7,
            "is not one of its versions",
        );
        refused(
            &|f| {
                let t = f.launch_templates[0].clone();
                f.launch_templates[0] = (0..31).fold(t, |t, _| t.version(["skey-0000000a"]));
            },
            "1 to 30 versions",
        );
        refused(
            &|f| f.key_pairs.push(KeyPair::new("skey-0000000a")),
            "appears twice",
        );
        refused(
            &|f| f.key_pairs[0].public_key = "ssh-rsa !!".into(),
            "key_pairs[0].public_key",
        );
        refused(
            &|f| f.launch_configurations[0].region = "mars".into(),
            "launch_configurations[0].region",
        );
    }

    #[test]
    fn derived_keys_are_distinct_stable_public_keys() {
        let a = derived_public_key("skey-0000000a");
        assert_eq!(a, derived_public_key("skey-0000000a"));
        assert_ne!(a, derived_public_key("skey-0000000b"));
        assert_eq!(PublicKey::parse(&a.to_openssh("x")).unwrap(), a);
    }

    #[test]
    fn the_incident_actions_are_limited_at_their_documented_rates() {
        use crate::sim::server::action_limit;
        assert_eq!(action_limit(Action::DescribeLaunchTemplates, 10), 20);
        assert_eq!(action_limit(Action::DescribeLaunchConfigurations, 10), 20);
        assert_eq!(action_limit(Action::DeleteKeyPairs, 10), 10);
        assert_eq!(action_limit(Action::ImportKeyPair, 5), 5);
    }
}
