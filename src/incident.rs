//! Closing an incident: from the leaked public key to its key ids, the templates that
//! hand the key to new instances, and the key pair's retirement.
//!
//! - [`find_key_pairs`]: lists the account's key pairs (DescribeKeyPairs, pages of
//!   100) and keeps those whose public key is the leaked one (type and body; the API
//!   puts the key id where the comment was) or has its fingerprint.
//! - [`find_templates`]: every launch template version (CVM) and Auto Scaling launch
//!   configuration, in every region given, whose `LoginSettings.KeyIds` holds a key.
//! - [`retire`]: deletes key pairs once nothing holds them: no instance
//!   (`AssociatedInstanceIds`, read now in every region), no default template version or launch
//!   configuration (unless told to ignore them); then DeleteKeyPairs and a listing
//!   that shows each one gone. A refusal names what holds the key and deletes nothing.
//!
//! Every request goes through discovery's sender: paced by the [`Limiter`] under its
//! service's endpoint, retried by the same classification and delays. Nothing here
//! prints or stores: results are data for the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;

use crate::api::templates::{self, KeyPairDetail, Page};
use crate::cvm::Action;
use crate::discover::{DiscoverOptions, Sender};
use crate::executor::{Api, Call, Limiter, Refused};
use crate::ids::{self, MAX_IDS_PER_REQUEST};
use crate::pubkey::KeyMatcher;

/// Items asked for per Describe page (the APIs' maximum).
pub const PAGE_LIMIT: u64 = MAX_IDS_PER_REQUEST as u64;
/// Pages one listing may take before it is taken for a loop: 100 key pairs is the
/// account's limit, templates and configurations are far fewer than 100 pages.
const MAX_PAGES: u64 = 1_000;
/// The codes DeleteKeyPairs refuses a key in use with (reference, section 2).
pub const IN_USE_CODES: [&str; 2] = [
    "InvalidParameterValue.KeyPairNotSupported",
    "InvalidKeyPair.NotSupported",
];

/// Why an incident command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error(
        "no key pair of this account holds the public key {fingerprint} ({listed} key pairs listed)"
    )]
    NoMatch { fingerprint: String, listed: usize },
    #[error("{0:?} is not a key pair id (skey- followed by 8 characters of 0-9 or a-z)")]
    MalformedKey(String),
    #[error("key pair {keys} does not exist in this account ({code})")]
    UnknownKey { keys: String, code: String },
    /// A templates file (`run --templates`) that is not what `discover
    /// --templates-output` writes: the place (file, line) and the problem.
    #[error("{place}: {problem}")]
    TemplatesFile { place: String, problem: String },
    #[error("{action} failed: {code}: {message}")]
    Refused {
        action: Action,
        code: String,
        message: String,
    },
}

impl IncidentError {
    fn refused(action: Action, refused: Refused) -> IncidentError {
        IncidentError::Refused {
            action,
            code: refused.code,
            message: refused.message,
        }
    }

    /// True when the input is at fault (exit 2), not the cloud.
    pub fn is_usage(&self) -> bool {
        !matches!(self, IncidentError::Refused { .. })
    }
}

/// The key pairs holding the looked-for public key.
#[derive(Debug, Clone)]
pub struct KeyHunt {
    /// Sorted by key id.
    pub matched: Vec<KeyPairDetail>,
    /// Key pairs the account holds (all listed).
    pub listed: usize,
}

impl KeyHunt {
    /// The matching key ids.
    pub fn key_ids(&self) -> Vec<String> {
        self.matched.iter().map(|k| k.key_id.clone()).collect()
    }
}

/// Lists the account's key pairs and keeps those holding the key `matcher` describes.
/// None: [`IncidentError::NoMatch`].
pub async fn find_key_pairs<A: Api>(
    api: Arc<A>,
    limiter: Arc<dyn Limiter>,
    options: &DiscoverOptions,
    matcher: &KeyMatcher,
) -> Result<KeyHunt, IncidentError> {
    let sender = Sender::new(api, limiter, options.clone());
    let all = list_key_pairs(&sender, &options.home_region).await?;
    let listed = all.len();
    let mut matched: Vec<KeyPairDetail> = all
        .into_iter()
        .filter(|k| matcher.matches(&k.public_key))
        .collect();
    matched.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    if matched.is_empty() {
        return Err(IncidentError::NoMatch {
            fingerprint: matcher.fingerprint().to_string(),
            listed,
        });
    }
    Ok(KeyHunt { matched, listed })
}

/// Walks `Offset`/`Limit` pages of one listing until the total (or a short page).
async fn pages<T, F>(
    sender: &Sender<impl Api>,
    action: Action,
    region: &str,
    body: serde_json::Value,
    parse: F,
) -> Result<Vec<T>, Refused>
where
    F: Fn(&serde_json::Value, &str) -> Result<Page<T>, crate::api::CallError>,
{
    let mut items = Vec::new();
    let mut offset = 0;
    for _ in 0..MAX_PAGES {
        let mut body = body.clone();
        body["Offset"] = json!(offset);
        body["Limit"] = json!(PAGE_LIMIT);
        let call = Call {
            action,
            region: region.to_string(),
            body,
        };
        let reply = sender.send(call).await?;
        let page = parse(&reply.response, &reply.request_id).map_err(Refused::from)?;
        let next = page.next_offset(offset, PAGE_LIMIT);
        items.extend(page.items);
        match next {
            Some(n) => offset = n,
            None => break,
        }
    }
    Ok(items)
}

/// Every key pair of the account (key pairs are account-wide: one region is asked).
async fn list_key_pairs(
    sender: &Sender<impl Api>,
    home_region: &str,
) -> Result<Vec<KeyPairDetail>, IncidentError> {
    pages(
        sender,
        Action::DescribeKeyPairs,
        home_region,
        json!({}),
        templates::parse_key_pair_details,
    )
    .await
    .map_err(|r| IncidentError::refused(Action::DescribeKeyPairs, r))
}

pub use crate::rules::template::Holder as TemplateHolder;
/// What hands a key to new instances.
pub use crate::states::TemplateKind;

/// The header `discover --templates-output` writes and `run --templates` reads.
pub const TEMPLATES_HEADER: [&str; 7] =
    ["kind", "id", "name", "version", "region", "default", "keys"];
/// The column a discovery over several accounts appends to [`TEMPLATES_HEADER`]: the
/// account each template belongs to.
pub const TEMPLATES_ACCOUNT_COLUMN: &str = "account";

/// Reads a templates file (the CSV `discover --templates-output` wrote): every row
/// checked (kind, id, version, region, default, key ids, and the account when the
/// file has the `account` column); an error names the file, the line and the problem.
pub fn read_templates_csv(text: &str, file: &str) -> Result<Vec<TemplateHolder>, IncidentError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let bad = |line: u64, problem: String| IncidentError::TemplatesFile {
        place: format!("{file}:{line}"),
        problem,
    };
    let header = reader
        .headers()
        .map_err(|e| bad(1, format!("unreadable header: {e}")))?
        .clone();
    let columns: Vec<&str> = header.iter().collect();
    let with_account = if columns == TEMPLATES_HEADER {
        false
    } else if columns.split_last() == Some((&TEMPLATES_ACCOUNT_COLUMN, &TEMPLATES_HEADER[..])) {
        true
    } else {
        return Err(bad(
            1,
            format!(
                "the header is not `{}` (optionally followed by `,{TEMPLATES_ACCOUNT_COLUMN}`: \
                 the file `discover --templates-output` writes)",
                TEMPLATES_HEADER.join(",")
            ),
        ));
    };
    let mut holders = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad(line, format!("unreadable row: {e}"))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |n: usize| record.get(n).unwrap_or("").trim();
        let kind = match field(0) {
            "launch_template" => TemplateKind::LaunchTemplate,
            "launch_configuration" => TemplateKind::LaunchConfiguration,
            other => {
                return Err(bad(
                    line,
                    format!(
                        "kind {:?} is neither launch_template nor launch_configuration",
                        crate::display::escape(other)
                    ),
                ));
            }
        };
        let id = field(1).to_string();
        let prefix = match kind {
            TemplateKind::LaunchTemplate => "lt-",
            TemplateKind::LaunchConfiguration => "asc-",
        };
        let id_ok = id.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 32
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        });
        if !id_ok {
            return Err(bad(
                line,
                format!("id {:?} is not a {prefix} id", crate::display::escape(&id)),
            ));
        }
        let version = match (kind, field(3)) {
            (TemplateKind::LaunchConfiguration, "") => None,
            (TemplateKind::LaunchConfiguration, other) => {
                return Err(bad(
                    line,
                    format!(
                        "a launch configuration has no version, not {:?}",
                        crate::display::escape(other)
                    ),
                ));
            }
            (TemplateKind::LaunchTemplate, text) => {
                Some(text.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                    bad(
                        line,
                        format!(
                            "version {:?} is not a version number",
                            crate::display::escape(text)
                        ),
                    )
                })?)
            }
        };
        let region = field(4).to_string();
        if !ids::is_region(&region) {
            return Err(bad(
                line,
                format!(
                    "region {:?} is not a region name",
                    crate::display::escape(&region)
                ),
            ));
        }
        let default = match field(5) {
            "true" => true,
            "false" => false,
            other => {
                return Err(bad(
                    line,
                    format!(
                        "default {:?} is neither true nor false",
                        crate::display::escape(other)
                    ),
                ));
            }
        };
        let keys: Vec<String> = field(6).split_whitespace().map(str::to_string).collect();
        if let Some(key) = keys.iter().find(|k| !ids::is_key_id(k)) {
            return Err(bad(
                line,
                format!("{:?} is not a key pair id", crate::display::escape(key)),
            ));
        }
        let account = if with_account {
            let account = field(7);
            if !crate::accounts::is_account_name(account) {
                return Err(bad(
                    line,
                    format!(
                        "account {:?} is not an account name (1-{} characters of A-Z a-z 0-9 _ . -)",
                        crate::display::escape(account),
                        crate::accounts::MAX_NAME_LEN
                    ),
                ));
            }
            Some(account.to_string())
        } else {
            None
        };
        // The name is only shown: a formula guard `discover` added is taken off.
        let name = field(2);
        let name = name.strip_prefix('\'').unwrap_or(name).to_string();
        holders.push(TemplateHolder {
            region,
            kind,
            id,
            name,
            version,
            default,
            keys,
            account,
        });
    }
    holders.sort();
    holders.dedup();
    Ok(holders)
}

/// What the template scan found, and the regions it could not finish.
#[derive(Debug, Clone, Default)]
pub struct TemplateScan {
    /// Sorted by (region, kind, id, version).
    pub holders: Vec<TemplateHolder>,
    /// Regions scanned to the end.
    pub regions: Vec<String>,
    /// (region, code, message) of each listing that failed: its holders may be missing.
    pub failed: Vec<(String, String, String)>,
}

impl TemplateScan {
    pub fn is_incomplete(&self) -> bool {
        !self.failed.is_empty()
    }
}

/// Lists every launch template version and launch configuration in `regions` whose
/// KeyIds hold one of `keys`.
pub async fn find_templates<A: Api>(
    api: Arc<A>,
    limiter: Arc<dyn Limiter>,
    options: &DiscoverOptions,
    keys: &[String],
    regions: &[String],
) -> TemplateScan {
    let sender = Arc::new(Sender::new(api, limiter, options.clone()));
    scan_templates(&sender, keys, regions).await
}

async fn scan_templates<A: Api>(
    sender: &Arc<Sender<A>>,
    keys: &[String],
    regions: &[String],
) -> TemplateScan {
    let keys: Arc<BTreeSet<String>> = Arc::new(keys.iter().cloned().collect());
    let mut walks = tokio::task::JoinSet::new();
    for region in regions.iter().cloned().collect::<BTreeSet<_>>() {
        let (sender, keys) = (sender.clone(), keys.clone());
        walks.spawn(async move {
            let found = scan_region(&sender, &keys, &region).await;
            (region, found)
        });
    }
    let mut scan = TemplateScan::default();
    while let Some(walk) = walks.join_next().await {
        match walk {
            Ok((region, Ok(holders))) => {
                scan.holders.extend(holders);
                scan.regions.push(region);
            }
            Ok((region, Err((action, refused)))) => scan.failed.push((
                region,
                refused.code,
                format!("{action}: {}", refused.message),
            )),
            Err(e) => scan
                .failed
                .push(("?".into(), "Keyfleet.Internal".into(), e.to_string())),
        }
    }
    scan.holders.sort();
    scan.regions.sort();
    scan.failed.sort();
    scan
}

/// One region's templates and configurations holding one of `keys`.
async fn scan_region<A: Api>(
    sender: &Sender<A>,
    keys: &BTreeSet<String>,
    region: &str,
) -> Result<Vec<TemplateHolder>, (Action, Refused)> {
    let holds = |ids: &[String]| ids.iter().any(|k| keys.contains(k));
    let mut holders = Vec::new();
    let listed = pages(
        sender,
        Action::DescribeLaunchTemplates,
        region,
        json!({}),
        templates::parse_launch_templates,
    )
    .await
    .map_err(|r| (Action::DescribeLaunchTemplates, r))?;
    for template in listed {
        let versions = pages(
            sender,
            Action::DescribeLaunchTemplateVersions,
            region,
            json!({ "LaunchTemplateId": template.template_id }),
            templates::parse_launch_template_versions,
        )
        .await
        .map_err(|r| (Action::DescribeLaunchTemplateVersions, r))?;
        for version in versions.into_iter().filter(|v| holds(&v.key_ids)) {
            holders.push(TemplateHolder {
                region: region.to_string(),
                kind: TemplateKind::LaunchTemplate,
                id: template.template_id.clone(),
                name: template.name.clone(),
                version: Some(version.version),
                default: version.is_default || template.default_version == Some(version.version),
                keys: version.key_ids,
                account: None,
            });
        }
    }
    let configurations = pages(
        sender,
        Action::DescribeLaunchConfigurations,
        region,
        json!({}),
        templates::parse_launch_configurations,
    )
    .await
    .map_err(|r| (Action::DescribeLaunchConfigurations, r))?;
    for configuration in configurations.into_iter().filter(|c| holds(&c.key_ids)) {
        holders.push(TemplateHolder {
            region: region.to_string(),
            kind: TemplateKind::LaunchConfiguration,
            id: configuration.configuration_id,
            name: configuration.name,
            version: None,
            default: true,
            keys: configuration.key_ids,
            account: None,
        });
    }
    Ok(holders)
}

/// What `retire` is to do.
#[derive(Debug, Clone)]
pub struct RetireOptions {
    /// The key ids to delete.
    pub keys: Vec<String>,
    /// Read everything, send no write.
    pub dry_run: bool,
    /// Delete even when a default template version or launch configuration names the key
    /// (new instances launched from it will then fail: `ResourceNotFound.KeyPairNotFound`).
    pub ignore_templates: bool,
}

/// Something that keeps a key pair from being retired.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(tag = "hold", rename_all = "snake_case")]
pub enum Hold {
    /// An instance the key is bound to; `region` is `None` when no region listed it.
    Instance {
        instance_id: String,
        region: Option<String>,
    },
    /// A default launch template version or a launch configuration naming the key.
    Template(TemplateHolder),
    /// The templates of a region could not be listed: the key is not known to be free.
    TemplatesUnknown {
        region: String,
        code: String,
        message: String,
    },
    /// DeleteKeyPairs refused it as in use: an image references it (or an instance
    /// bound it since it was read).
    InUse { code: String, message: String },
}

impl Hold {
    /// What holds the key, for a person.
    pub fn describe(&self) -> String {
        match self {
            Hold::Instance {
                instance_id,
                region: Some(region),
            } => format!("instance {instance_id} in {region}"),
            Hold::Instance {
                instance_id,
                region: None,
            } => format!("instance {instance_id} (in no region listed)"),
            Hold::Template(t) => match t.version {
                Some(version) => format!(
                    "launch template {} ({}) default version {version} in {}",
                    t.id, t.name, t.region
                ),
                None => format!("launch configuration {} ({}) in {}", t.id, t.name, t.region),
            },
            Hold::TemplatesUnknown {
                region,
                code,
                message,
            } => format!(
                "the templates of {region} could not be listed ({code}: {message}); \
                 --ignore-templates deletes without knowing"
            ),
            Hold::InUse { code, .. } if code == "InvalidKeyPair.NotSupported" => {
                format!("an image references it (DeleteKeyPairs: {code})")
            }
            Hold::InUse { code, message } => {
                format!("DeleteKeyPairs refused it as in use ({code}: {message})")
            }
        }
    }
}

/// One key's verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyVerdict {
    pub key_id: String,
    pub key_name: String,
    /// The `SHA256:` fingerprint of its public key as the listing gave it (`None` when
    /// the listing carried none or one that does not parse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Empty: nothing holds it.
    pub holds: Vec<Hold>,
    /// Non-default template versions naming it: they do not block (no instance launches
    /// from them unless asked), but they will fail if used after the key is gone.
    pub dormant_templates: Vec<TemplateHolder>,
    /// Gone from the account's listing after DeleteKeyPairs.
    pub confirmed_gone: bool,
    /// The account it is in, when the command works in several (`None`: its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// What `retire` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retirement {
    /// In the order asked.
    pub verdicts: Vec<KeyVerdict>,
    pub dry_run: bool,
    /// The RequestIds of the DeleteKeyPairs requests that succeeded.
    pub delete_request_ids: Vec<String>,
}

impl Retirement {
    /// True when something held a key (or the delete was refused): nothing was deleted
    /// by keyfleet, or some key is still listed.
    pub fn refused(&self) -> bool {
        self.verdicts.iter().any(|v| !v.holds.is_empty())
    }

    /// True when every key was deleted and is gone from the listing.
    pub fn retired(&self) -> bool {
        !self.dry_run && self.verdicts.iter().all(|v| v.confirmed_gone)
    }
}

/// Retires `retire.keys`: every one or none (a key something holds stops them all).
pub async fn retire<A: Api>(
    api: Arc<A>,
    limiter: Arc<dyn Limiter>,
    options: &DiscoverOptions,
    retire: &RetireOptions,
) -> Result<Retirement, IncidentError> {
    let mut keys: Vec<String> = Vec::new();
    for key in &retire.keys {
        if !ids::is_key_id(key) {
            return Err(IncidentError::MalformedKey(key.clone()));
        }
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    let sender = Arc::new(Sender::new(api, limiter, options.clone()));
    let home = options.home_region.as_str();
    // Re-read now: what an earlier discovery saw may have changed.
    let details = describe_keys(&sender, home, &keys).await?;
    let regions: Vec<String> = match &options.regions {
        Some(regions) => regions.clone(),
        None => sender
            .regions()
            .await
            .map_err(|e| match e {
                crate::discover::DiscoverError::Refused {
                    action,
                    code,
                    message,
                } => IncidentError::Refused {
                    action,
                    code,
                    message,
                },
                other => IncidentError::Refused {
                    action: Action::DescribeRegions,
                    code: "Keyfleet.Internal".into(),
                    message: other.to_string(),
                },
            })?
            .into_iter()
            .collect(),
    };
    // Whether AssociatedInstanceIds covers every region or only the one asked is not
    // documented: every region is asked, and their answers joined.
    let mut details = details;
    for region in &regions {
        for (key, bound) in associated_in(&sender, region, &keys).await? {
            if let Some(detail) = details.get_mut(&key) {
                detail.associated_instance_ids.extend(bound);
                detail.associated_instance_ids.sort();
                detail.associated_instance_ids.dedup();
            }
        }
    }
    let bound: Vec<String> = details
        .values()
        .flat_map(|d| d.associated_instance_ids.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let located = locate_instances(&sender, &bound, &regions).await?;
    let scan = if retire.ignore_templates {
        TemplateScan::default()
    } else {
        scan_templates(&sender, &keys, &regions).await
    };
    let mut verdicts: Vec<KeyVerdict> = keys
        .iter()
        .map(|key| {
            let detail = &details[key];
            let mut holds: Vec<Hold> = detail
                .associated_instance_ids
                .iter()
                .map(|instance_id| Hold::Instance {
                    instance_id: instance_id.clone(),
                    region: located.get(instance_id).cloned(),
                })
                .collect();
            let naming: Vec<&TemplateHolder> = scan
                .holders
                .iter()
                .filter(|t| t.keys.contains(key))
                .collect();
            holds.extend(
                naming
                    .iter()
                    .filter(|t| t.default)
                    .map(|t| Hold::Template((*t).clone())),
            );
            holds.extend(scan.failed.iter().map(|(region, code, message)| {
                Hold::TemplatesUnknown {
                    region: region.clone(),
                    code: code.clone(),
                    message: message.clone(),
                }
            }));
            holds.sort();
            KeyVerdict {
                key_id: key.clone(),
                key_name: detail.key_name.clone(),
                fingerprint: crate::pubkey::PublicKey::parse(&detail.public_key)
                    .ok()
                    .map(|key| key.fingerprint().to_string()),
                holds,
                dormant_templates: naming.into_iter().filter(|t| !t.default).cloned().collect(),
                confirmed_gone: false,
                account: None,
            }
        })
        .collect();
    let mut retirement = Retirement {
        verdicts: Vec::new(),
        dry_run: retire.dry_run,
        delete_request_ids: Vec::new(),
    };
    if verdicts.iter().any(|v| !v.holds.is_empty()) || retire.dry_run {
        retirement.verdicts = verdicts;
        return Ok(retirement);
    }
    for chunk in keys.chunks(MAX_IDS_PER_REQUEST) {
        let call = Call {
            action: Action::DeleteKeyPairs,
            region: home.to_string(),
            body: json!({ "KeyIds": chunk }),
        };
        match sender.send(call).await {
            Ok(reply) => retirement.delete_request_ids.push(reply.request_id),
            // A resend after a lost reply finds the keys already gone: the listing
            // below says so.
            Err(refused) if refused.code == "InvalidKeyPairId.NotFound" => {}
            Err(refused) if IN_USE_CODES.contains(&refused.code.as_str()) => {
                // The request names no key: with one key it is that one; with several
                // each is marked, and the message (which may name it) is kept.
                for verdict in verdicts.iter_mut().filter(|v| chunk.contains(&v.key_id)) {
                    verdict.holds.push(Hold::InUse {
                        code: refused.code.clone(),
                        message: refused.message.clone(),
                    });
                }
            }
            Err(refused) => return Err(IncidentError::refused(Action::DeleteKeyPairs, refused)),
        }
    }
    // Deletion is confirmed by listing again (the documentation's advice).
    let listed: BTreeSet<String> = list_key_pairs(&sender, home)
        .await?
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    for verdict in &mut verdicts {
        verdict.confirmed_gone = !listed.contains(&verdict.key_id);
    }
    retirement.verdicts = verdicts;
    Ok(retirement)
}

/// The keys' details, by id; a key that does not exist is an error naming it.
async fn describe_keys<A: Api>(
    sender: &Sender<A>,
    home: &str,
    keys: &[String],
) -> Result<BTreeMap<String, KeyPairDetail>, IncidentError> {
    let mut details = BTreeMap::new();
    for chunk in keys.chunks(MAX_IDS_PER_REQUEST) {
        let call = Call {
            action: Action::DescribeKeyPairs,
            region: home.to_string(),
            body: json!({ "KeyIds": chunk, "Limit": PAGE_LIMIT }),
        };
        let reply = match sender.send(call).await {
            Ok(reply) => reply,
            Err(refused) if refused.code.starts_with("InvalidKeyPairId.") => {
                return Err(IncidentError::UnknownKey {
                    keys: chunk.join(", "),
                    code: refused.code,
                });
            }
            Err(refused) => return Err(IncidentError::refused(Action::DescribeKeyPairs, refused)),
        };
        let page = templates::parse_key_pair_details(&reply.response, &reply.request_id)
            .map_err(|e| IncidentError::refused(Action::DescribeKeyPairs, e.into()))?;
        for detail in page.items {
            details.insert(detail.key_id.clone(), detail);
        }
        let missing: Vec<&str> = chunk
            .iter()
            .filter(|k| !details.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(IncidentError::UnknownKey {
                keys: missing.join(", "),
                code: "not listed by DescribeKeyPairs".into(),
            });
        }
    }
    Ok(details)
}

/// Each key's `AssociatedInstanceIds` as `region` answers them.
async fn associated_in<A: Api>(
    sender: &Sender<A>,
    region: &str,
    keys: &[String],
) -> Result<Vec<(String, Vec<String>)>, IncidentError> {
    let mut found = Vec::new();
    for chunk in keys.chunks(MAX_IDS_PER_REQUEST) {
        let call = Call {
            action: Action::DescribeKeyPairs,
            region: region.to_string(),
            body: json!({ "KeyIds": chunk, "Limit": PAGE_LIMIT }),
        };
        let reply = sender
            .send(call)
            .await
            .map_err(|r| IncidentError::refused(Action::DescribeKeyPairs, r))?;
        let page = templates::parse_key_pair_details(&reply.response, &reply.request_id)
            .map_err(|e| IncidentError::refused(Action::DescribeKeyPairs, e.into()))?;
        found.extend(
            page.items
                .into_iter()
                .map(|k| (k.key_id, k.associated_instance_ids)),
        );
    }
    Ok(found)
}

/// The region of each instance (AssociatedInstanceIds names none): DescribeInstances
/// by id in each region until all are placed.
async fn locate_instances<A: Api>(
    sender: &Sender<A>,
    instances: &[String],
    regions: &[String],
) -> Result<BTreeMap<String, String>, IncidentError> {
    let mut located = BTreeMap::new();
    for region in regions {
        let left: Vec<String> = instances
            .iter()
            .filter(|i| !located.contains_key(*i))
            .cloned()
            .collect();
        for chunk in left.chunks(MAX_IDS_PER_REQUEST) {
            let call = Call {
                action: Action::DescribeInstances,
                region: region.clone(),
                body: json!({ "InstanceIds": chunk, "Offset": 0, "Limit": PAGE_LIMIT }),
            };
            let reply = match sender.send(call).await {
                Ok(reply) => reply,
                // None of them is in this region.
                Err(refused) if refused.code == "InvalidInstanceId.NotFound" => continue,
                Err(refused) => {
                    return Err(IncidentError::refused(Action::DescribeInstances, refused));
                }
            };
            let page =
                crate::api::parse_instance_page(&reply.response, &reply.request_id, 0, PAGE_LIMIT)
                    .map_err(|e| IncidentError::refused(Action::DescribeInstances, e.into()))?;
            for instance in page.instances {
                located.insert(instance.instance_id, region.clone());
            }
        }
    }
    Ok(located)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::executor::{LocalLimiter, Reply};

    /// An account with one free key, whose DeleteKeyPairs replies as `deletes` says,
    /// in turn; every request is recorded.
    struct Account {
        listed: Mutex<Vec<&'static str>>,
        deletes: Mutex<Vec<Result<(), &'static str>>>,
        sent: Mutex<Vec<Action>>,
    }

    impl Account {
        fn new(deletes: Vec<Result<(), &'static str>>) -> Arc<Account> {
            Arc::new(Account {
                listed: Mutex::new(vec!["skey-0000000a"]),
                deletes: Mutex::new(deletes),
                sent: Mutex::new(Vec::new()),
            })
        }
    }

    fn refused(code: &str) -> Refused {
        Refused {
            code: code.to_string(),
            message: "refused".into(),
            request_id: None,
            http_status: None,
            transport: code.starts_with("Transport."),
        }
    }

    impl Api for Account {
        async fn call(&self, call: &Call) -> Result<Reply, Refused> {
            self.sent.lock().unwrap().push(call.action);
            let listed = self.listed.lock().unwrap().clone();
            let response: Value = match call.action {
                Action::DescribeKeyPairs => {
                    let set: Vec<Value> = listed
                        .iter()
                        .map(|k| json!({"KeyId": k, "KeyName": "old", "AssociatedInstanceIds": []}))
                        .collect();
                    json!({"KeyPairSet": set, "TotalCount": listed.len()})
                }
                Action::DescribeRegions => json!({"RegionSet": [{"Region": "ap-guangzhou"}]}),
                Action::DescribeLaunchTemplates => {
                    json!({"LaunchTemplateSet": [], "TotalCount": 0})
                }
                Action::DescribeLaunchConfigurations => {
                    json!({"LaunchConfigurationSet": [], "TotalCount": 0})
                }
                Action::DeleteKeyPairs => {
                    let next = self.deletes.lock().unwrap().remove(0);
                    match next {
                        // Applied, then the reply was lost.
                        Err(code) if code.starts_with("Transport.") => {
                            self.listed.lock().unwrap().clear();
                            return Err(refused(code));
                        }
                        Err(code) => return Err(refused(code)),
                        Ok(()) => {
                            self.listed.lock().unwrap().clear();
                            json!({})
                        }
                    }
                }
                other => panic!("unexpected {other}"),
            };
            Ok(Reply {
                request_id: format!("req-{}", self.sent.lock().unwrap().len()),
                http_status: 200,
                response,
            })
        }

        fn endpoint(&self, _region: &str) -> String {
            "stub".into()
        }

        fn secret_id(&self) -> String {
            "AKIDstub".into()
        }
    }

    fn options() -> DiscoverOptions {
        DiscoverOptions {
            keys: Vec::new(),
            regions: None,
            home_region: "ap-guangzhou".into(),
            max_attempts: 3,
            retry_base: Duration::from_millis(1),
            retry_cap: Duration::from_millis(2),
            throttle_delay: Duration::from_millis(1),
        }
    }

    async fn retire_one(account: &Arc<Account>) -> Retirement {
        let retire_options = RetireOptions {
            keys: vec!["skey-0000000a".into()],
            dry_run: false,
            ignore_templates: false,
        };
        retire(
            account.clone(),
            Arc::new(LocalLimiter::new(0.0)),
            &options(),
            &retire_options,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_delete_whose_reply_was_lost_is_confirmed_by_the_listing() {
        let account = Account::new(vec![Err("Transport.Io"), Err("InvalidKeyPairId.NotFound")]);
        let retirement = retire_one(&account).await;
        assert!(retirement.retired(), "{retirement:?}");
        assert!(retirement.delete_request_ids.is_empty());
        let sent = account.sent.lock().unwrap().clone();
        assert_eq!(
            sent.iter()
                .filter(|a| **a == Action::DeleteKeyPairs)
                .count(),
            2,
            "resent once after the lost reply"
        );
        assert_eq!(
            sent.last(),
            Some(&Action::DescribeKeyPairs),
            "confirmed by listing"
        );
    }

    #[tokio::test]
    async fn an_image_reference_is_a_refusal_naming_it() {
        let account = Account::new(vec![Err("InvalidKeyPair.NotSupported")]);
        let retirement = retire_one(&account).await;
        assert!(retirement.refused() && !retirement.retired());
        let holds = &retirement.verdicts[0].holds;
        assert_eq!(holds.len(), 1);
        assert!(
            holds[0].describe().contains("an image references it"),
            "{holds:?}"
        );
        assert!(!retirement.verdicts[0].confirmed_gone);
    }
}
