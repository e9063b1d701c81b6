//! The proof that an incident was closed as keyfleet says, from the simulator's own
//! fleet and journal: every launch template and launch configuration that handed out
//! the leaked key hands out the new one (a rotation) or no longer the leaked one where
//! another key remained, and one whose only key it was is untouched; no template got
//! two versions from one change; old versions are unchanged (they are immutable); and
//! the key pair is gone only if nothing held it, gone exactly when a DeleteKeyPairs
//! succeeded. Imports nothing from keyfleet's store.

use super::{Fleet, JournalEntry};

/// What the closing audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClosingAudit {
    /// Launch templates and launch configurations that were changed as expected.
    pub changed: usize,
    /// Left as they were on purpose (the leaked key was their only key, no rotation).
    pub kept: usize,
    /// The leaked key pair no longer exists.
    pub key_deleted: bool,
    /// Every broken promise, in words.
    pub violations: Vec<String>,
}

impl ClosingAudit {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Audits templates, launch configurations and the key pair against the fleet before
/// the incident was closed. `new_key`: the rotation target, if any.
pub fn audit_closing(
    before: &Fleet,
    after: &Fleet,
    leaked: &str,
    new_key: Option<&str>,
    journal: &[JournalEntry],
) -> ClosingAudit {
    let mut audit = ClosingAudit::default();
    let expected = |keys: &[String]| -> Option<Vec<String>> {
        if !keys.iter().any(|k| k == leaked) {
            return None;
        }
        let mut out: Vec<String> = keys.iter().filter(|k| *k != leaked).cloned().collect();
        if let Some(new) = new_key
            && !out.iter().any(|k| k == new)
        {
            out.push(new.to_string());
        }
        Some(out)
    };
    for old in &before.launch_templates {
        let Some(new) = after
            .launch_templates
            .iter()
            .find(|t| t.template_id == old.template_id)
        else {
            audit
                .violations
                .push(format!("launch template {} disappeared", old.template_id));
            continue;
        };
        if new.versions.get(..old.versions.len()) != Some(&old.versions[..]) {
            audit.violations.push(format!(
                "launch template {}: an existing version changed",
                old.template_id
            ));
        }
        let added = &new.versions[old.versions.len().min(new.versions.len())..];
        for version in &old.versions {
            let Some(keys) = expected(&version.key_ids) else {
                continue;
            };
            let was_default = version.version == old.default_version;
            if keys.is_empty() {
                audit.kept += 1;
                if was_default && new.default_version != old.default_version {
                    audit.violations.push(format!(
                        "launch template {}: its only key was the leaked one, yet its default moved",
                        old.template_id
                    ));
                }
                continue;
            }
            let made: Vec<_> = added.iter().filter(|v| v.key_ids == keys).collect();
            match made.as_slice() {
                [one] => {
                    audit.changed += 1;
                    if one.instance_type != version.instance_type {
                        audit.violations.push(format!(
                            "launch template {} version {}: other settings changed",
                            old.template_id, one.version
                        ));
                    }
                    if was_default && new.default_version != one.version {
                        audit.violations.push(format!(
                            "launch template {}: version {} was the default, its fix {} is not",
                            old.template_id, version.version, one.version
                        ));
                    }
                }
                [] => audit.violations.push(format!(
                    "launch template {} version {}: no new version hands out {keys:?}",
                    old.template_id, version.version
                )),
                many => audit.violations.push(format!(
                    "launch template {} version {}: {} new versions made, not one",
                    old.template_id,
                    version.version,
                    many.len()
                )),
            }
        }
    }
    for old in &before.launch_configurations {
        let Some(new) = after
            .launch_configurations
            .iter()
            .find(|c| c.configuration_id == old.configuration_id)
        else {
            audit.violations.push(format!(
                "launch configuration {} disappeared",
                old.configuration_id
            ));
            continue;
        };
        let want = match expected(&old.key_ids) {
            None => old.key_ids.clone(),
            Some(keys) if keys.is_empty() => {
                audit.kept += 1;
                old.key_ids.clone()
            }
            Some(keys) => {
                audit.changed += 1;
                keys
            }
        };
        if new.key_ids != want {
            audit.violations.push(format!(
                "launch configuration {}: hands out {:?}, not {want:?}",
                old.configuration_id, new.key_ids
            ));
        }
        if new.instance_type != old.instance_type || new.name != old.name {
            audit.violations.push(format!(
                "launch configuration {}: other settings changed",
                old.configuration_id
            ));
        }
    }
    let exists = after.keys.iter().any(|k| k == leaked)
        || after.key_pairs.iter().any(|k| k.key_id == leaked)
        || after
            .instances()
            .iter()
            .any(|i| i.key_ids.iter().any(|k| k == leaked));
    audit.key_deleted = !exists;
    let deleted_by_request = journal.iter().any(|e| {
        e.action == "DeleteKeyPairs" && e.code.is_none() && e.key_ids.iter().any(|k| k == leaked)
    });
    if audit.key_deleted && !deleted_by_request {
        audit.violations.push(format!(
            "{leaked} is gone without a DeleteKeyPairs that succeeded"
        ));
    }
    if !audit.key_deleted && deleted_by_request {
        audit.violations.push(format!(
            "a DeleteKeyPairs of {leaked} succeeded, yet the key pair exists"
        ));
    }
    audit
}
