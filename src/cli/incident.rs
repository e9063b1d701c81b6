//! What `discover` and `retire` share to close an incident: reading the leaked public
//! key or fingerprint, the limiter, and showing the templates that hand a key out.

use std::path::Path;
use std::sync::Arc;

use keyfleet::display::{csv_cell, escape};
use keyfleet::incident::{KeyHunt, TemplateHolder, TemplateScan};
use keyfleet::pubkey::{Fingerprint, KeyMatcher, PublicKey};
use keyfleet::store::Store;

/// The key `--public-key FILE` or `--fingerprint SHA256:...` describes; the error
/// names the flag, the file and the problem (never the file's content).
pub(crate) fn matcher(
    public_key: Option<&Path>,
    fingerprint: Option<&str>,
) -> Result<Option<KeyMatcher>, String> {
    if let Some(path) = public_key {
        let shown = escape(&path.display().to_string()).into_owned();
        let text = std::fs::read(path)
            .map_err(|err| format!("--public-key {shown}: cannot read it: {err}"))?;
        let text = String::from_utf8(text).map_err(|_| {
            format!("--public-key {shown}: it is not text (an OpenSSH public key is)")
        })?;
        let key = PublicKey::parse(&text)
            .map_err(|err| format!("--public-key {shown}: {}", escape(&err.to_string())))?;
        return Ok(Some(KeyMatcher::Key(key)));
    }
    if let Some(text) = fingerprint {
        let fingerprint = Fingerprint::parse(text)
            .map_err(|err| format!("--fingerprint: {}", escape(&err.to_string())))?;
        return Ok(Some(KeyMatcher::Fingerprint(fingerprint)));
    }
    Ok(None)
}

/// The limiter of discovery and retirement: the database's shared slots, so they stay
/// inside the limit beside a run on the same database; none at `--rate 0`.
pub(crate) async fn limiter(
    store: &Store,
    rate: f64,
) -> anyhow::Result<Arc<dyn keyfleet::executor::Limiter>> {
    Ok(if rate > 0.0 {
        Arc::new(keyfleet::executor::DbLimiter::open(store, rate).await?)
    } else {
        Arc::new(keyfleet::executor::LocalLimiter::new(0.0))
    })
}

/// The key pairs found for a public key, on stderr.
pub(crate) fn summarize_hunt(hunt: &KeyHunt, matcher: &KeyMatcher) {
    let names: Vec<String> = hunt
        .matched
        .iter()
        .map(|k| format!("{} ({})", k.key_id, escape(&k.key_name)))
        .collect();
    eprintln!(
        "public key {}: held by {} of the account's {} key pairs: {}",
        matcher.fingerprint(),
        hunt.matched.len(),
        hunt.listed,
        names.join(", ")
    );
}

/// One holder as a line: `launch_template lt-... (name) version 3 in REGION, default: KEYS`.
pub(crate) fn describe_holder(t: &TemplateHolder) -> String {
    let version = t
        .version
        .map(|v| format!(" version {v}"))
        .unwrap_or_default();
    let default = if t.version.is_some() && t.default {
        ", the default"
    } else {
        ""
    };
    format!(
        "{} {} ({}){version} in {}{default}: hands out {}",
        t.kind.as_str(),
        t.id,
        escape(&t.name),
        t.region,
        t.keys.join(" ")
    )
}

/// The `templates` lines on stderr.
pub(crate) fn summarize_templates(scan: &TemplateScan, keys: &[String]) {
    for (region, code, message) in &scan.failed {
        eprintln!(
            "templates: {region}: INCOMPLETE ({}: {}); launch templates or configurations there are not listed",
            escape(code),
            escape(message)
        );
    }
    if scan.holders.is_empty() {
        eprintln!(
            "templates: no launch template version or launch configuration in the {} regions scanned hands out {}",
            scan.regions.len(),
            keys.join(", ")
        );
        return;
    }
    eprintln!(
        "templates: {} hand out {} (new instances launched from them get the key):",
        scan.holders.len(),
        keys.join(", ")
    );
    for holder in &scan.holders {
        eprintln!("  {}", describe_holder(holder));
    }
}

/// The templates CSV: kind,id,name,version,region,default,keys (keys space-separated),
/// then `account` when `with_account` (a discovery over several accounts: each
/// holder's account).
pub(crate) fn render_templates(
    holders: &[TemplateHolder],
    with_account: bool,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = csv::Writer::from_writer(&mut out);
    let mut header = keyfleet::incident::TEMPLATES_HEADER.to_vec();
    if with_account {
        header.push(keyfleet::incident::TEMPLATES_ACCOUNT_COLUMN);
    }
    writer.write_record(&header)?;
    for t in holders {
        let mut row = vec![
            t.kind.as_str().to_string(),
            csv_cell(&t.id).into_owned(),
            csv_cell(&t.name).into_owned(),
            t.version.map(|v| v.to_string()).unwrap_or_default(),
            csv_cell(&t.region).into_owned(),
            t.default.to_string(),
            csv_cell(&t.keys.join(" ")).into_owned(),
        ];
        if with_account {
            row.push(t.account.clone().unwrap_or_default());
        }
        writer.write_record(&row)?;
    }
    writer.flush()?;
    drop(writer);
    Ok(out)
}

/// `run --templates FILE` / `plan --templates FILE`: the run's changes of the templates
/// the file lists (the CSV `discover --templates-output` wrote), recorded and their
/// looks queued with the run's jobs. The leaked keys are the keys the run unbinds; the
/// rotation target is the new key the run binds (one at most: templates get one). A run
/// that has its changes already keeps them (resumed with the same command).
pub(crate) async fn plan_templates(store: &Store, run_id: i64, path: &Path) -> anyhow::Result<()> {
    use keyfleet::rules::template;
    use keyfleet::states::TemplateState;

    let shown = escape(&path.display().to_string()).into_owned();
    let text = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("--templates {shown}: cannot read it: {err}"))?;
    let holders = keyfleet::incident::read_templates_csv(&text, &shown)
        .map_err(|err| anyhow::anyhow!("--templates {}", escape(&err.to_string())))?;
    // A file with an account column: each template is changed with its account's keys
    // (a rotation target is one account's key pair); without one, with the run's.
    let mut by_account: std::collections::BTreeMap<Option<&str>, Vec<&TemplateHolder>> =
        std::collections::BTreeMap::new();
    for holder in &holders {
        by_account
            .entry(holder.account.as_deref())
            .or_default()
            .push(holder);
    }
    // The run's own account (`--account`) is NULL in its rows and jobs: a template of it
    // is sent through the run's own client.
    let own = store.run_account(run_id).await?;
    let mut planned = Vec::new();
    let mut ignored = 0;
    let mut new_keys: Vec<String> = Vec::new();
    for (account, holders) in by_account {
        let keys = match account {
            None => store.run_keys(run_id).await?,
            Some(account) => store.run_keys_in(run_id, Some(account)).await?,
        };
        if keys.new_keys.len() > 1 {
            let of = account
                .map(|a| format!(" in account {}", escape(a)))
                .unwrap_or_default();
            anyhow::bail!(
                "--templates: run {run_id} binds {} different new keys{of} ({}): a template \
                 gets one; plan the templates with a run that rotates to one key",
                keys.new_keys.len(),
                keys.new_keys.join(", ")
            );
        }
        for holder in holders {
            let holder = if account.is_some() && account == own.as_deref() {
                TemplateHolder {
                    account: None,
                    ..holder.clone()
                }
            } else {
                holder.clone()
            };
            match template::plan(run_id, &holder, &keys.leaked, &keys.new_keys) {
                Some(p) => planned.push(p),
                None => ignored += 1,
            }
        }
        new_keys.extend(keys.new_keys);
    }
    new_keys.sort();
    new_keys.dedup();
    if !store.add_template_changes(run_id, &planned).await? {
        crate::note!("run {run_id}: its template changes are planned already: continuing them");
        return Ok(());
    }
    let kept = planned
        .iter()
        .filter(|p| p.state == TemplateState::Kept)
        .count();
    crate::note!(
        "templates: {} to change ({}), {kept} kept{}",
        planned.len() - kept,
        if new_keys.is_empty() {
            "the leaked key removed".to_string()
        } else {
            format!("the leaked key replaced by {}", new_keys.join(" "))
        },
        if ignored > 0 {
            format!(
                ", {ignored} rows name none of the run's keys (of their account, with an \
                 account column) (ignored)"
            )
        } else {
            String::new()
        }
    );
    for p in planned.iter().filter(|p| p.state == TemplateState::Kept) {
        crate::note!(
            "  kept {}: {}",
            describe_holder(&p.holder),
            p.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// A run's template changes on stderr: one line of counts, then each one not changed.
pub(crate) fn print_template_changes(changes: &[keyfleet::store::templates::TemplateChangeRow]) {
    use keyfleet::states::TemplateState;
    if changes.is_empty() {
        return;
    }
    let count = |state: TemplateState| changes.iter().filter(|c| c.state == state).count();
    eprintln!(
        "  templates: {} changed, {} kept (only key), {} unchanged, {} failed, {} not finished",
        count(TemplateState::Changed),
        count(TemplateState::Kept),
        count(TemplateState::Unchanged),
        count(TemplateState::Failed),
        count(TemplateState::Pending)
    );
    for c in changes.iter().filter(|c| c.state != TemplateState::Changed) {
        let version = c
            .version
            .map(|v| format!(" version {v}"))
            .unwrap_or_default();
        eprintln!(
            "    {} {} {} ({}){version} in {}: {}",
            c.state,
            c.kind,
            c.template_id,
            escape(&c.name),
            c.region,
            escape(c.reason.as_deref().unwrap_or(""))
        );
    }
}

/// `--key` values of `discover` and `retire`: `skey-...`, or `ACCOUNT:skey-...` for
/// a key of one account of several, as (account, key id), each checked. The error
/// names the value and the problem.
pub(crate) fn account_keys(values: &[String]) -> Result<Vec<(Option<String>, String)>, String> {
    values
        .iter()
        .map(|value| {
            let (account, key) = match value.split_once(':') {
                Some((account, key)) => (Some(account), key),
                None => (None, value.as_str()),
            };
            if let Some(account) = account
                && !keyfleet::accounts::is_account_name(account)
            {
                return Err(format!(
                    "--key {}: {} is not an account name (ACCOUNT:skey-...)",
                    escape(value),
                    escape(account)
                ));
            }
            if !keyfleet::ids::is_key_id(key) {
                return Err(format!(
                    "--key {}: {:?} is not a key pair id (skey- followed by 8 characters of 0-9 \
                     or a-z, after ACCOUNT: for one account's key of several)",
                    escape(value),
                    escape(key)
                ));
            }
            Ok((account.map(str::to_string), key.to_string()))
        })
        .collect()
}

/// The key ids of a command that works as one account (`--account`, or the base
/// credentials): a key naming an account must name that one.
pub(crate) fn own_keys(
    keys: Vec<(Option<String>, String)>,
    own: Option<&str>,
) -> Result<Vec<String>, String> {
    keys.into_iter()
        .map(|(account, key)| match (account, own) {
            (None, _) => Ok(key),
            (Some(named), Some(own)) if named == own => Ok(key),
            (Some(named), Some(own)) => Err(format!(
                "--key {}:{key}: this command works as account {} (--account), not {}",
                escape(&named),
                escape(own),
                escape(&named)
            )),
            (Some(named), None) => Err(format!(
                "--key {}:{key}: an account is named but the command has no accounts: give \
                 --accounts FILE (or --organization)",
                escape(&named)
            )),
        })
        .collect()
}

/// The key ids of each account (by name) of a command working in every account: a
/// key is its `ACCOUNT:`'s, and a bare one is the only account's (with several, which
/// account holds it is not guessed).
pub(crate) fn keys_by_account(
    keys: Vec<(Option<String>, String)>,
    accounts: &[super::common::AccountSender],
) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    let names: Vec<&str> = accounts.iter().map(|a| a.account.name.as_str()).collect();
    keys_of_names(keys, &names)
}

fn keys_of_names(
    keys: Vec<(Option<String>, String)>,
    names: &[&str],
) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    let mut by_account: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (account, key) in keys {
        let account = match (account, names) {
            (Some(named), _) if names.contains(&named.as_str()) => named,
            (Some(named), _) => {
                return Err(format!(
                    "--key {}:{key}: no account {} among the command's accounts ({})",
                    escape(&named),
                    escape(&named),
                    names.join(", ")
                ));
            }
            (None, [only]) => only.to_string(),
            (None, _) => {
                return Err(format!(
                    "--key {key}: the command works in {} accounts ({}): name the account \
                     that holds it: --key ACCOUNT:{key}",
                    names.len(),
                    names.join(", ")
                ));
            }
        };
        let ids = by_account.entry(account).or_default();
        if !ids.contains(&key) {
            ids.push(key);
        }
    }
    Ok(by_account)
}

/// Why one account's part of a command was not done: its role could not be assumed,
/// its credentials were refused, or a listing failed (`INCOMPLETE: account NAME:
/// CODE: MESSAGE`); or what was asked of it is wrong (`error: account NAME: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AccountFailure {
    Incomplete { code: String, message: String },
    Usage(String),
}

impl AccountFailure {
    /// The line on stderr.
    pub(crate) fn line(&self, account: &str) -> String {
        match self {
            AccountFailure::Incomplete { code, message } => format!(
                "INCOMPLETE: account {}: {}: {}",
                escape(account),
                escape(code),
                escape(message)
            ),
            AccountFailure::Usage(message) => {
                format!("error: account {}: {}", escape(account), escape(message))
            }
        }
    }

    /// An incident step's error: a refusal is the account's incompleteness; anything
    /// else is the input's fault.
    pub(crate) fn of(error: keyfleet::incident::IncidentError) -> AccountFailure {
        match error {
            keyfleet::incident::IncidentError::Refused {
                action,
                code,
                message,
            } => AccountFailure::refused(action, code, message),
            other => AccountFailure::Usage(other.to_string()),
        }
    }

    /// The cloud refused `action` in this account: its incompleteness, named by the
    /// code (a discovery's and an incident step's refusals alike).
    pub(crate) fn refused(
        action: keyfleet::cvm::Action,
        code: String,
        message: String,
    ) -> AccountFailure {
        AccountFailure::Incomplete {
            code,
            message: format!("{action}: {message}"),
        }
    }
}

/// Gets the account's credentials now (assumes its role, if it has one), so that a
/// role that cannot be assumed is named once, by AssumeRole's code, before anything
/// is asked of the account.
pub(crate) async fn reach(account: &super::common::AccountSender) -> Result<(), AccountFailure> {
    account
        .session
        .client()
        .await
        .map(drop)
        .map_err(|failure| AccountFailure::Incomplete {
            code: failure.error.code(),
            message: failure.error.message(),
        })
}

/// The exit code of a command over several accounts: a usage error first, then an
/// incomplete account (or `worst`, the accounts' own codes), else `OK`.
pub(crate) fn accounts_exit(failures: &[&AccountFailure], worst: u8) -> u8 {
    if failures
        .iter()
        .any(|f| matches!(f, AccountFailure::Usage(_)))
    {
        crate::exit::USAGE
    } else if !failures.is_empty() {
        crate::exit::INCOMPLETE.max(worst)
    } else {
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "skey-1eaked0a";

    fn keys(values: &[&str]) -> Vec<(Option<String>, String)> {
        account_keys(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_key_names_its_account_or_is_the_only_accounts() {
        assert_eq!(
            keys(&[KEY, &format!("prod:{KEY}")]),
            [(None, KEY.into()), (Some("prod".into()), KEY.into())]
        );
        for bad in [
            "prod:skey-12",
            "-x:skey-1eaked0a",
            "skey-1eaked0a:prod",
            ":skey-1eaked0a",
        ] {
            assert!(account_keys(&[bad.to_string()]).is_err(), "{bad}");
        }
        let only = keys_of_names(keys(&[KEY]), &["prod"]).unwrap();
        assert_eq!(only["prod"], [KEY]);
        let error = keys_of_names(keys(&[KEY]), &["dev", "prod"]).unwrap_err();
        assert!(error.contains(&format!("--key ACCOUNT:{KEY}")), "{error}");
        let error = keys_of_names(keys(&[&format!("qa:{KEY}")]), &["dev", "prod"]).unwrap_err();
        assert!(error.contains("no account qa"), "{error}");
        let named = keys_of_names(
            keys(&[&format!("dev:{KEY}"), &format!("dev:{KEY}")]),
            &["dev", "prod"],
        );
        assert_eq!(
            named.unwrap().into_iter().collect::<Vec<_>>(),
            [("dev".to_string(), vec![KEY.to_string()])]
        );
    }

    #[test]
    fn a_one_account_command_takes_only_its_own_accounts_keys() {
        assert_eq!(own_keys(keys(&[KEY]), None).unwrap(), [KEY]);
        assert_eq!(
            own_keys(keys(&[&format!("dev:{KEY}")]), Some("dev")).unwrap(),
            [KEY]
        );
        assert!(own_keys(keys(&[&format!("dev:{KEY}")]), Some("prod")).is_err());
        assert!(own_keys(keys(&[&format!("dev:{KEY}")]), None).is_err());
    }

    #[test]
    fn a_usage_error_outranks_an_incomplete_account() {
        let incomplete = AccountFailure::Incomplete {
            code: "ResourceNotFound.RoleNotFound".into(),
            message: "The role does not exist.".into(),
        };
        assert_eq!(
            incomplete.line("staging"),
            "INCOMPLETE: account staging: ResourceNotFound.RoleNotFound: The role does not exist."
        );
        let usage = AccountFailure::Usage("key pair skey-1eaked0a does not exist".into());
        assert_eq!(accounts_exit(&[], crate::exit::OK), crate::exit::OK);
        assert_eq!(
            accounts_exit(&[&incomplete], crate::exit::OK),
            crate::exit::INCOMPLETE
        );
        assert_eq!(
            accounts_exit(&[&incomplete, &usage], crate::exit::OK),
            crate::exit::USAGE
        );
    }
}
