//! Templates that hand a leaked key to new instances: a launch template version (CVM)
//! gets a new version made from it with the new key set, made the default when it was
//! the default; an Auto Scaling launch configuration gets its `LoginSettings` rewritten.
//! Each change is a short workflow of queued jobs, decided here, purely:
//!
//! - `template_look` (DescribeLaunchTemplateVersions) re-reads the template. A version
//!   whose description is the change's marker was made by this change already (a reply
//!   lost, a kill): it is not made again; the default is moved to it if the old version
//!   was the default. Otherwise the source version is checked (it still hands the key
//!   out, the template has room for a version) and a `template` job is added.
//! - `template` (CreateLaunchTemplateVersion, described with the marker) is not
//!   idempotent: an accepted one is followed by a look (which finds the version and
//!   sets the default); one whose outcome is unknown (a transport failure, a transient
//!   error, an attempt a kill left open) is never sent again as is: the store replaces
//!   it by a look ([`in_doubt`]).
//! - `template_default` (ModifyLaunchTemplateDefaultVersion) ends the change.
//! - `launch_config_look` (DescribeLaunchConfigurations) re-reads the configuration and
//!   adds a `launch_config` job (ModifyLaunchConfigurationAttributes) with the key set
//!   computed from what it holds now; a write in doubt is replaced by a look too.
//!
//! Without a rotation target the leaked key is only removed, and a template whose only
//! key is the leaked one is kept as it is (`kept`: it would launch servers nobody can
//! log into); `keyfleet retire` names it.

use serde::{Deserialize, Serialize};

use super::{Effect, ErrorInfo, JobFacts, NewJob};
use crate::states::{JobKind, TemplateKind, TemplateState};

/// The most versions a launch template may hold (`LimitExceeded.LaunchTemplateVersionQuota`).
pub const MAX_TEMPLATE_VERSIONS: usize = 30;

/// A launch template version or launch configuration whose KeyIds hold a looked-for
/// key, as `discover` found it and `--templates-output` lists it (sorted by region,
/// kind, id, version).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Holder {
    pub region: String,
    pub kind: TemplateKind,
    /// `lt-...` or `asc-...`.
    pub id: String,
    pub name: String,
    /// The template version; `None` for a launch configuration.
    pub version: Option<u64>,
    /// The template's default version (new instances get it unless told otherwise);
    /// always true for a launch configuration, which has no versions.
    pub default: bool,
    /// Every key it hands out (the looked-for ones and any other).
    pub keys: Vec<String>,
    /// The account it belongs to (the templates file's `account` column, written by a
    /// discovery over several accounts); `None`: the run's own account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// What one template change is, carried in the payload of each of its jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: TemplateKind,
    pub template_id: String,
    /// The source version (0 for a launch configuration).
    pub version: u64,
    pub was_default: bool,
    /// The keys to take out (the run's leaked keys it holds).
    pub leaked: Vec<String>,
    /// The rotation target given in their place (empty: remove only).
    pub add: Vec<String>,
    /// A template version's description: how a look recognises the version this
    /// change made (unique per run, template and source version).
    pub marker: String,
    /// The KeyIds to write (a `template` or `launch_config` job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// `LoginSettings.KeepImageLogin` as the configuration had it (kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_image_login: bool,
    /// A look after an accepted create: that create's RequestId (the version must be there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The version a `template_default` job makes the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<u64>,
    /// How many writes of this change ended with their outcome unknown ([`in_doubt`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub doubts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How many writes of one change may end in doubt before it fails: a network that
/// keeps dropping requests ends the change instead of looping look -> write forever.
pub const MAX_DOUBTS: u32 = 10;

impl Change {
    pub fn encode(&self) -> String {
        // Strings, integers and booleans always serialize.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    pub fn decode(text: &str) -> Result<Change, String> {
        serde_json::from_str(text).map_err(|e| format!("unreadable template change: {e}"))
    }
}

/// One version as a `template_look` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSeen {
    pub version: u64,
    pub is_default: bool,
    pub key_ids: Vec<String>,
    pub description: String,
}

/// A launch configuration as a `launch_config_look` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSeen {
    pub key_ids: Vec<String>,
    pub keep_image_login: bool,
}

/// What a template look read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// Every version of the template.
    Versions(Vec<VersionSeen>),
    /// The configuration, or `None`: it is not listed.
    Configuration(Option<ConfigSeen>),
}

/// A template change's row (`template_changes`), as an effect writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub kind: TemplateKind,
    pub template_id: String,
    pub version: u64,
    pub state: TemplateState,
    /// The KeyIds it hands out after the change (what was or is being written).
    pub keys_after: Option<Vec<String>>,
    /// The version this change made.
    pub made: Option<u64>,
    pub reason: Option<String>,
}

/// A planned change and its first state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub holder: Holder,
    pub change: Change,
    /// `Pending` (its look is queued) or `Kept` (nothing is sent).
    pub state: TemplateState,
    pub keys_after: Vec<String>,
    pub reason: Option<String>,
}

impl Planned {
    /// The job that starts the change; `None` for a kept one.
    /// It is sent as the template's account; the jobs that follow it inherit it.
    pub fn first_job(&self, now: i64) -> Option<NewJob> {
        (self.state == TemplateState::Pending).then(|| NewJob {
            account: self.holder.account.clone(),
            ..look_job(&self.holder.region, &self.change, now)
        })
    }
}

/// `current` without the leaked keys, then the rotation target, each once, in order.
pub fn new_keys(current: &[String], leaked: &[String], add: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for key in current.iter().filter(|k| !leaked.contains(k)).chain(add) {
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    keys
}

/// The marker a change's version carries as its description.
pub fn marker(run_id: i64, holder: &Holder) -> String {
    format!(
        "keyfleet run {run_id}: {} version {} with the leaked key replaced",
        holder.id,
        holder.version.unwrap_or(0)
    )
}

/// The reason a template whose only key is the leaked one is kept.
pub const ONLY_KEY: &str = "its only key is the leaked one and no rotation target was given: \
     stripping it would launch servers nobody can log into (give it another key, or run with a \
     rotation target)";

/// What a run does with `holder`, given the run's leaked keys and its rotation target.
/// `None` when it holds none of the leaked keys.
pub fn plan(run_id: i64, holder: &Holder, leaked: &[String], add: &[String]) -> Option<Planned> {
    let held: Vec<String> = holder
        .keys
        .iter()
        .filter(|k| leaked.contains(k))
        .cloned()
        .collect();
    if held.is_empty() {
        return None;
    }
    let keys_after = new_keys(&holder.keys, &held, add);
    let (state, reason) = if keys_after.is_empty() {
        (TemplateState::Kept, Some(ONLY_KEY.to_string()))
    } else {
        (TemplateState::Pending, None)
    };
    Some(Planned {
        change: Change {
            kind: holder.kind,
            template_id: holder.id.clone(),
            version: holder.version.unwrap_or(0),
            was_default: holder.default,
            leaked: held,
            add: add.to_vec(),
            marker: marker(run_id, holder),
            keys: Vec::new(),
            keep_image_login: false,
            created_by: None,
            made: None,
            doubts: 0,
        },
        holder: holder.clone(),
        state,
        keys_after,
        reason,
    })
}

fn job(kind: JobKind, region: &str, change: &Change, now: i64) -> NewJob {
    let mut key_ids: Vec<String> = change.leaked.iter().chain(&change.add).cloned().collect();
    key_ids.sort();
    key_ids.dedup();
    NewJob {
        kind,
        region: region.to_string(),
        account: None,
        force_stop: false,
        instance_ids: Vec::new(),
        key_ids,
        payload: Some(change.encode()),
        item_ids: Vec::new(),
        due_at: now,
    }
}

/// The look that (re)starts a change: a template's or a configuration's.
pub fn look_job(region: &str, change: &Change, now: i64) -> NewJob {
    let kind = match change.kind {
        TemplateKind::LaunchTemplate => JobKind::TemplateLook,
        TemplateKind::LaunchConfiguration => JobKind::LaunchConfigLook,
    };
    job(kind, region, change, now)
}

fn update(change: &Change, state: TemplateState) -> Update {
    Update {
        kind: change.kind,
        template_id: change.template_id.clone(),
        version: change.version,
        state,
        keys_after: None,
        made: None,
        reason: None,
    }
}

fn ended(change: &Change, state: TemplateState, reason: impl Into<String>) -> Effect {
    Effect::Template(Update {
        reason: Some(reason.into()),
        ..update(change, state)
    })
}

/// A look ended: what follows from what it read.
pub fn looked(job_facts: &JobFacts, change: &Change, listed: &Listed, now: i64) -> Vec<Effect> {
    match listed {
        Listed::Versions(versions) => template_looked(job_facts, change, versions, now),
        Listed::Configuration(seen) => config_looked(job_facts, change, seen.as_ref(), now),
    }
}

fn template_looked(
    job_facts: &JobFacts,
    change: &Change,
    versions: &[VersionSeen],
    now: i64,
) -> Vec<Effect> {
    let holds_leaked = |v: &VersionSeen| v.key_ids.iter().any(|k| change.leaked.contains(k));
    if let Some(made) = versions.iter().find(|v| v.description == change.marker) {
        // Made already (by this change: the marker names the run, template and version).
        let mut row = update(change, TemplateState::Changed);
        row.made = Some(made.version);
        row.keys_after = Some(made.key_ids.clone());
        if change.was_default && !made.is_default {
            row.state = TemplateState::Pending;
            let next = Change {
                made: Some(made.version),
                created_by: None,
                ..change.clone()
            };
            return vec![
                Effect::Template(row),
                Effect::AddJob(job(JobKind::TemplateDefault, &job_facts.region, &next, now)),
            ];
        }
        return vec![Effect::Template(row)];
    }
    if let Some(request_id) = &change.created_by {
        // Never create twice: an accepted create whose version is not listed is a
        // question for a human, not a reason to send another.
        return vec![ended(
            change,
            TemplateState::Failed,
            format!(
                "CreateLaunchTemplateVersion was accepted (RequestId {request_id}) but no version \
                 of {} carries its description; nothing was created again: look at the template",
                change.template_id
            ),
        )];
    }
    let Some(source) = versions.iter().find(|v| v.version == change.version) else {
        return vec![ended(
            change,
            TemplateState::Failed,
            format!("version {} no longer exists", change.version),
        )];
    };
    if !holds_leaked(source) {
        return vec![ended(
            change,
            TemplateState::Unchanged,
            format!("version {} no longer hands out the key", change.version),
        )];
    }
    if change.was_default
        && let Some(default) = versions.iter().find(|v| v.is_default)
        && default.version != source.version
        && !holds_leaked(default)
    {
        return vec![ended(
            change,
            TemplateState::Unchanged,
            format!(
                "the default is now version {}, which does not hand out the key",
                default.version
            ),
        )];
    }
    if versions.len() >= MAX_TEMPLATE_VERSIONS {
        return vec![ended(
            change,
            TemplateState::Failed,
            format!(
                "the template holds {} versions, the most it may: delete an old one and plan again",
                versions.len()
            ),
        )];
    }
    let keys = new_keys(&source.key_ids, &change.leaked, &change.add);
    if keys.is_empty() {
        return vec![ended(change, TemplateState::Kept, ONLY_KEY)];
    }
    let mut row = update(change, TemplateState::Pending);
    row.keys_after = Some(keys.clone());
    let next = Change {
        keys,
        ..change.clone()
    };
    vec![
        Effect::Template(row),
        Effect::AddJob(job(JobKind::Template, &job_facts.region, &next, now)),
    ]
}

fn config_looked(
    job_facts: &JobFacts,
    change: &Change,
    seen: Option<&ConfigSeen>,
    now: i64,
) -> Vec<Effect> {
    let Some(seen) = seen else {
        return vec![ended(
            change,
            TemplateState::Failed,
            "the launch configuration is no longer listed",
        )];
    };
    if !seen.key_ids.iter().any(|k| change.leaked.contains(k)) {
        // Written already (a reply lost, a kill) or changed by someone else.
        let ours = !change.keys.is_empty() && seen.key_ids == change.keys;
        let mut row = update(
            change,
            if ours {
                TemplateState::Changed
            } else {
                TemplateState::Unchanged
            },
        );
        row.keys_after = Some(seen.key_ids.clone());
        if !ours {
            row.reason = Some("it no longer hands out the key".into());
        }
        return vec![Effect::Template(row)];
    }
    let keys = new_keys(&seen.key_ids, &change.leaked, &change.add);
    if keys.is_empty() {
        return vec![ended(change, TemplateState::Kept, ONLY_KEY)];
    }
    let mut row = update(change, TemplateState::Pending);
    row.keys_after = Some(keys.clone());
    let next = Change {
        keys,
        keep_image_login: seen.keep_image_login,
        ..change.clone()
    };
    vec![
        Effect::Template(row),
        Effect::AddJob(job(JobKind::LaunchConfig, &job_facts.region, &next, now)),
    ]
}

/// A write of the change was accepted (`request_id`).
pub fn accepted(job_facts: &JobFacts, change: &Change, request_id: &str, now: i64) -> Vec<Effect> {
    match job_facts.kind {
        JobKind::Template => {
            // Which number it got, and the default, are the next look's to see.
            let next = Change {
                created_by: Some(request_id.to_string()),
                ..change.clone()
            };
            vec![Effect::AddJob(look_job(&job_facts.region, &next, now))]
        }
        JobKind::TemplateDefault => {
            let mut row = update(change, TemplateState::Changed);
            row.made = change.made;
            vec![Effect::Template(row)]
        }
        JobKind::LaunchConfig => {
            let mut row = update(change, TemplateState::Changed);
            row.keys_after = Some(change.keys.clone());
            vec![Effect::Template(row)]
        }
        _ => Vec::new(),
    }
}

/// A job of the change failed for good.
pub fn failed(job_facts: &JobFacts, change: &Change, error: &ErrorInfo) -> Vec<Effect> {
    vec![ended(
        change,
        TemplateState::Failed,
        format!(
            "{} failed: {}: {}",
            job_facts.kind.action().name(),
            error.code,
            error.message
        ),
    )]
}

/// A write whose outcome is unknown (no reply, or an attempt a kill left open): it is
/// replaced by a look, which finds what it did before anything is sent again.
pub fn in_doubt(job_facts: &JobFacts, change: &Change, now: i64) -> Vec<Effect> {
    if !matches!(job_facts.kind, JobKind::Template | JobKind::LaunchConfig) {
        return Vec::new();
    }
    let doubts = change.doubts + 1;
    if doubts >= MAX_DOUBTS {
        return vec![ended(
            change,
            TemplateState::Failed,
            format!(
                "{} ended without a reply {doubts} times; what the template holds is for a look",
                job_facts.kind.action().name()
            ),
        )];
    }
    let next = Change {
        doubts,
        ..change.clone()
    };
    vec![Effect::AddJob(look_job(&job_facts.region, &next, now))]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAKED: &str = "skey-1eaked0a";
    const NEW: &str = "skey-n3wkey00";
    const OTHER: &str = "skey-0ther000";

    fn holder(kind: TemplateKind, keys: &[&str], default: bool) -> Holder {
        Holder {
            region: "ap-guangzhou".into(),
            kind,
            id: match kind {
                TemplateKind::LaunchTemplate => "lt-0000000a".into(),
                TemplateKind::LaunchConfiguration => "asc-0000000a".into(),
            },
            name: "web".into(),
            version: (kind == TemplateKind::LaunchTemplate).then_some(1),
            default,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            account: None,
        }
    }

    fn facts(kind: JobKind) -> JobFacts {
        JobFacts {
            id: 9,
            kind,
            region: "ap-guangzhou".into(),
            account: None,
            force_stop: false,
            instance_ids: Vec::new(),
            key_ids: Vec::new(),
        }
    }

    fn version(n: u64, keys: &[&str], default: bool, description: &str) -> VersionSeen {
        VersionSeen {
            version: n,
            is_default: default,
            key_ids: keys.iter().map(|k| k.to_string()).collect(),
            description: description.into(),
        }
    }

    fn strings(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    fn added(effects: &[Effect]) -> Vec<(JobKind, Change)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::AddJob(job) => Some((
                    job.kind,
                    Change::decode(job.payload.as_deref().unwrap()).unwrap(),
                )),
                _ => None,
            })
            .collect()
    }

    fn state(effects: &[Effect]) -> Option<TemplateState> {
        effects.iter().rev().find_map(|e| match e {
            Effect::Template(u) => Some(u.state),
            _ => None,
        })
    }

    #[test]
    fn new_keys_replace_the_leaked_one_keeping_the_others_in_order() {
        let leaked = strings(&[LEAKED]);
        assert_eq!(
            new_keys(&strings(&[OTHER, LEAKED]), &leaked, &strings(&[NEW])),
            [OTHER, NEW]
        );
        assert_eq!(
            new_keys(&strings(&[LEAKED, NEW]), &leaked, &strings(&[NEW])),
            [NEW]
        );
        assert_eq!(
            new_keys(&strings(&[LEAKED]), &leaked, &[]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn planning_keeps_a_template_whose_only_key_is_the_leaked_one_without_a_target() {
        let leaked = strings(&[LEAKED]);
        let only = holder(TemplateKind::LaunchTemplate, &[LEAKED], true);
        let kept = plan(3, &only, &leaked, &[]).unwrap();
        assert_eq!(kept.state, TemplateState::Kept);
        assert!(
            kept.first_job(0).is_none(),
            "nothing is sent for a kept one"
        );
        let rotated = plan(3, &only, &leaked, &strings(&[NEW])).unwrap();
        assert_eq!(rotated.state, TemplateState::Pending);
        assert_eq!(rotated.keys_after, [NEW]);
        assert_eq!(rotated.first_job(0).unwrap().kind, JobKind::TemplateLook);
        let config = holder(TemplateKind::LaunchConfiguration, &[OTHER, LEAKED], true);
        let job = plan(3, &config, &leaked, &[])
            .unwrap()
            .first_job(0)
            .unwrap();
        assert_eq!(job.kind, JobKind::LaunchConfigLook);
        assert_eq!(job.account, None, "the run's own account");
        let dev = Holder {
            account: Some("dev".into()),
            ..config
        };
        let job = plan(3, &dev, &leaked, &[]).unwrap().first_job(0).unwrap();
        assert_eq!(
            job.account.as_deref(),
            Some("dev"),
            "sent as the template's"
        );
        let unrelated = holder(TemplateKind::LaunchTemplate, &[OTHER], true);
        assert!(plan(3, &unrelated, &leaked, &[]).is_none());
    }

    fn change() -> Change {
        plan(
            3,
            &holder(TemplateKind::LaunchTemplate, &[LEAKED, OTHER], true),
            &strings(&[LEAKED]),
            &strings(&[NEW]),
        )
        .unwrap()
        .change
    }

    #[test]
    fn a_look_creates_only_when_no_version_carries_the_marker() {
        let c = change();
        let look = facts(JobKind::TemplateLook);
        let fresh = Listed::Versions(vec![version(1, &[LEAKED, OTHER], true, "")]);
        let effects = looked(&look, &c, &fresh, 0);
        let jobs = added(&effects);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].0, JobKind::Template);
        assert_eq!(jobs[0].1.keys, [OTHER, NEW]);

        // Made already (a lost reply, a kill): the default moves to it, nothing is created.
        let made = Listed::Versions(vec![
            version(1, &[LEAKED, OTHER], true, ""),
            version(2, &[OTHER, NEW], false, &c.marker),
        ]);
        let jobs = added(&looked(&look, &c, &made, 0));
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].0, JobKind::TemplateDefault);
        assert_eq!(jobs[0].1.made, Some(2));

        // ... and when it is the default already, the change is done.
        let done = Listed::Versions(vec![
            version(1, &[LEAKED, OTHER], false, ""),
            version(2, &[OTHER, NEW], true, &c.marker),
        ]);
        let effects = looked(&look, &c, &done, 0);
        assert!(added(&effects).is_empty());
        assert_eq!(state(&effects), Some(TemplateState::Changed));
    }

    #[test]
    fn a_look_after_an_accepted_create_never_creates_again() {
        let c = change();
        let accepted_create = accepted(&facts(JobKind::Template), &c, "req-1", 0);
        let (kind, next) = added(&accepted_create).pop().unwrap();
        assert_eq!(kind, JobKind::TemplateLook);
        assert_eq!(next.created_by.as_deref(), Some("req-1"));
        let missing = Listed::Versions(vec![version(1, &[LEAKED, OTHER], true, "")]);
        let effects = looked(&facts(JobKind::TemplateLook), &next, &missing, 0);
        assert!(added(&effects).is_empty());
        assert_eq!(state(&effects), Some(TemplateState::Failed));
    }

    #[test]
    fn a_look_checks_the_source_and_the_quota_before_creating() {
        let c = change();
        let look = facts(JobKind::TemplateLook);
        let gone = Listed::Versions(vec![version(2, &[OTHER], true, "")]);
        assert_eq!(
            state(&looked(&look, &c, &gone, 0)),
            Some(TemplateState::Failed)
        );
        let moved = Listed::Versions(vec![
            version(1, &[LEAKED, OTHER], false, ""),
            version(2, &[OTHER], true, "someone"),
        ]);
        assert_eq!(
            state(&looked(&look, &c, &moved, 0)),
            Some(TemplateState::Unchanged)
        );
        let full = Listed::Versions(
            (1..=MAX_TEMPLATE_VERSIONS as u64)
                .map(|n| version(n, &[LEAKED, OTHER], n == 1, ""))
                .collect(),
        );
        let effects = looked(&look, &c, &full, 0);
        assert!(added(&effects).is_empty());
        assert_eq!(state(&effects), Some(TemplateState::Failed));
    }

    #[test]
    fn a_write_in_doubt_becomes_a_look_and_at_last_a_failure() {
        let mut c = change();
        let jobs = added(&in_doubt(&facts(JobKind::Template), &c, 0));
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].0, JobKind::TemplateLook);
        assert_eq!(jobs[0].1.doubts, 1);
        c.doubts = MAX_DOUBTS - 1;
        let effects = in_doubt(&facts(JobKind::Template), &c, 0);
        assert!(added(&effects).is_empty());
        assert_eq!(state(&effects), Some(TemplateState::Failed));
        assert!(in_doubt(&facts(JobKind::TemplateDefault), &c, 0).is_empty());
    }

    #[test]
    fn a_launch_configuration_is_rewritten_from_what_it_holds_now() {
        let c = plan(
            3,
            &holder(TemplateKind::LaunchConfiguration, &[LEAKED], true),
            &strings(&[LEAKED]),
            &strings(&[NEW]),
        )
        .unwrap()
        .change;
        let look = facts(JobKind::LaunchConfigLook);
        let seen = Listed::Configuration(Some(ConfigSeen {
            key_ids: strings(&[OTHER, LEAKED]),
            keep_image_login: true,
        }));
        let jobs = added(&looked(&look, &c, &seen, 0));
        assert_eq!(jobs[0].0, JobKind::LaunchConfig);
        assert_eq!(jobs[0].1.keys, [OTHER, NEW]);
        assert!(jobs[0].1.keep_image_login);
        // Written already: ours, changed; nothing written again.
        let written = Listed::Configuration(Some(ConfigSeen {
            key_ids: strings(&[OTHER, NEW]),
            keep_image_login: true,
        }));
        let effects = looked(&look, &jobs[0].1, &written, 0);
        assert!(added(&effects).is_empty());
        assert_eq!(state(&effects), Some(TemplateState::Changed));
        let vanished = Listed::Configuration(None);
        assert_eq!(
            state(&looked(&look, &c, &vanished, 0)),
            Some(TemplateState::Failed)
        );
    }
}
