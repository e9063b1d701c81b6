//! What closing an incident meets: key pairs with their public keys and the images
//! that reference them (ImportKeyPair, DeleteKeyPairs, DescribeKeyPairs' details),
//! CVM launch templates with immutable versions and a default, and the Auto Scaling
//! service's launch configurations (reference: live-fleets-and-incident.md, sections
//! 2 and 3). The fleet file holds them beside the instances; validation follows the
//! API's order of concern like `actions`.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::fleet::LiveFleet;
use super::request::{self, ApiError, Executed, string_param};
use crate::cvm::Action;
use crate::ids::{self, MAX_IDS_PER_REQUEST};
use crate::pubkey::PublicKey;

pub(crate) use super::holdings::is_resource_id;
pub use super::holdings::{
    KeyPair, LaunchConfiguration, LaunchTemplate, MAX_KEY_NAME_CHARS, MAX_KEY_PAIRS,
    MAX_TEMPLATE_VERSIONS, TemplateVersion, derived_public_key,
};

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

fn required_string(params: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    string_param(params, name)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| request::missing(name))
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
    match request::int_param(params, name)? {
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
            request::check_known(
                params,
                &["KeyName", "ProjectId", "PublicKey", "TagSpecification"],
            )?;
            let name = required_string(params, "KeyName")?;
            let text = required_string(params, "PublicKey")?;
            request::int_param(params, "ProjectId")?;
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
            request::check_known(params, &["KeyIds"])?;
            let key_ids = request::string_list(params, "KeyIds")?.unwrap_or_default();
            if key_ids.is_empty() {
                return Err(request::missing("KeyIds"));
            }
            if key_ids.len() > MAX_IDS_PER_REQUEST {
                return Err(request::limit_exceeded());
            }
            if !key_ids.iter().all(|id| ids::is_key_id(id)) {
                return Err(request::key_malformed());
            }
            let keys = request::dedup(key_ids);
            if !keys.iter().all(|k| fleet.keys.contains(k)) {
                return Err(request::key_not_found());
            }
            Ok(Validated::DeleteKeyPairs { keys })
        }
        Action::DescribeLaunchTemplates => {
            request::check_known(params, &["LaunchTemplateIds", "Offset", "Limit"])?;
            let wanted = request::string_list(params, "LaunchTemplateIds")?;
            let (offset, limit) = request::paging(params)?;
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
            request::check_known(
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
            let (offset, limit) = request::paging(params)?;
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
            if request::bool_param(params, "DefaultVersion")?.unwrap_or(false) {
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
            request::check_known(
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
                    let keys = request::string_list(login, "KeyIds")?.unwrap_or_default();
                    if !keys.iter().all(|k| ids::is_key_id(k)) {
                        return Err(request::key_malformed());
                    }
                    if !keys.iter().all(|k| fleet.keys.contains(k)) {
                        return Err(request::key_not_found());
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
            request::check_known(params, &["LaunchTemplateId", "DefaultVersion"])?;
            let id = required_string(params, "LaunchTemplateId")?;
            let version = version_param(params, "DefaultVersion")?
                .ok_or_else(|| request::missing("DefaultVersion"))?;
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
            request::check_known(params, &["LaunchConfigurationIds", "Offset", "Limit"])?;
            let wanted = request::string_list(params, "LaunchConfigurationIds")?;
            let (offset, limit) = request::paging(params)?;
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
            request::check_known(
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
                    request::check_known(login, &["Password", "KeyIds", "KeepImageLogin"])?;
                    let key_ids = request::string_list(login, "KeyIds")?.unwrap_or_default();
                    if !key_ids.iter().all(|k| ids::is_key_id(k)) {
                        return Err(request::key_malformed());
                    }
                    if !key_ids.iter().all(|k| fleet.keys.contains(k)) {
                        return Err(request::key_not_found());
                    }
                    Some(Login {
                        key_ids,
                        keep_image_login: request::bool_param(login, "KeepImageLogin")?
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
