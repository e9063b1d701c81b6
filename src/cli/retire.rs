//! `keyfleet retire --key K [--key ...] [--dry-run] [--ignore-templates]` (or
//! `--public-key FILE`): deletes leaked key pairs once nothing holds them, and
//! confirms each one gone; with `--accounts` (or `--organization`) and no `--account`,
//! in every account, each account's own key ids.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use keyfleet::discover::DiscoverOptions;
use keyfleet::display::escape;
use keyfleet::incident::{self, KeyHunt, RetireOptions, Retirement};
use keyfleet::pubkey::KeyMatcher;
use keyfleet::store::Store;

use super::common::AccountSender;
use super::flags::SendFlags;
use super::incident::AccountFailure;
use super::run::build_client;
use crate::{GlobalArgs, exit};

/// `keyfleet retire`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("retired").required(true).args(["keys", "public_key"])))]
pub struct Args {
    /// A key pair id to delete (repeatable); all are deleted or none (per account).
    /// ACCOUNT:KEY_ID for a key of one account when the command works in several.
    #[arg(long = "key", value_name = "[ACCOUNT:]KEY_ID")]
    keys: Vec<String>,
    /// The leaked key's public half (an OpenSSH .pub file): every key pair holding it
    /// is retired (in each account, with --accounts and no --account).
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// Check everything and say what would be deleted; send no DeleteKeyPairs.
    #[arg(long)]
    dry_run: bool,
    /// Delete even when a default launch template version or a launch configuration
    /// names the key (instances launched from it afterwards fail).
    #[arg(long)]
    ignore_templates: bool,
    /// Write what was found and done here as JSON (owner-only, written whole); each
    /// key's verdict names its account when the command works in several.
    #[arg(long, value_name = "FILE")]
    json_output: Option<PathBuf>,
    #[command(flatten)]
    send: SendFlags,
}

/// Which keys one account retires.
#[derive(Debug, Clone)]
enum Keys {
    Ids(Vec<String>),
    /// Every key pair of the account holding this public key.
    Holding(KeyMatcher),
}

pub(crate) async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<u8> {
    let keys = match super::incident::account_keys(&args.keys) {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(exit::USAGE);
        }
    };
    let matcher = match super::incident::matcher(args.public_key.as_deref(), None) {
        Ok(matcher) => matcher,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(exit::USAGE);
        }
    };
    let mut retire = RetireOptions {
        keys: Vec::new(),
        dry_run: args.dry_run,
        ignore_templates: args.ignore_templates,
    };
    if let Some(accounts) =
        super::common::every_account(global, args.send.connect_timeout, args.send.timeout)?
    {
        let targets: Vec<(AccountSender, Keys)> = match matcher {
            Some(matcher) => accounts
                .into_iter()
                .map(|a| (a, Keys::Holding(matcher.clone())))
                .collect(),
            None => {
                let mut by_account = match super::incident::keys_by_account(keys, &accounts) {
                    Ok(keys) => keys,
                    Err(message) => {
                        eprintln!("error: {message}");
                        return Ok(exit::USAGE);
                    }
                };
                accounts
                    .into_iter()
                    .filter_map(|a| {
                        let keys = by_account.remove(&a.account.name)?;
                        Some((a, Keys::Ids(keys)))
                    })
                    .collect()
            }
        };
        let store = super::common::open_store(&global.db).await?;
        let code = retire_in_accounts(
            &store,
            None,
            targets,
            &retire,
            &args.send,
            args.json_output.as_deref(),
            global,
        )
        .await;
        store.close().await;
        return code;
    }
    retire.keys = match super::incident::own_keys(keys, global.account.as_deref()) {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(exit::USAGE);
        }
    };
    let client = build_client(&args.send, global)?;
    let home_region = home_region(global)?;
    let store = super::common::open_store(&global.db).await?;
    if let Some(matcher) = &matcher {
        // The public key's ids in this account, then retirement as with --key.
        let limiter = super::incident::limiter(&store, args.send.exec_config().rate).await?;
        let options = discover_options(&args.send, home_region.clone());
        match incident::find_key_pairs(client.clone(), limiter, &options, matcher).await {
            Ok(hunt) => {
                super::incident::summarize_hunt(&hunt, matcher);
                retire.keys = hunt.key_ids();
            }
            Err(error) => {
                store.close().await;
                eprintln!("error: {}", escape(&error.to_string()));
                return Ok(if error.is_usage() {
                    exit::USAGE
                } else {
                    exit::STOPPED
                });
            }
        }
    }
    let record = Record {
        store: &store,
        run_id: None,
        account: global.account.as_deref(),
    };
    let code = retire_with(
        &record,
        &retire,
        client,
        &args.send,
        &home_region,
        args.json_output.as_deref(),
    )
    .await
    .map(|(code, _)| code);
    store.close().await;
    code
}

/// The region requests that are not about one region go to.
fn home_region(global: &GlobalArgs) -> anyhow::Result<String> {
    Ok(super::run::default_region(global)?.unwrap_or_else(|| "ap-guangzhou".into()))
}

/// Discovery's sending options for a retirement: instances and templates are looked
/// for in every region.
fn discover_options(send: &SendFlags, home_region: String) -> DiscoverOptions {
    DiscoverOptions::new(Vec::new(), None, home_region, &send.exec_config())
}

/// Retires keys (`keyfleet retire`, and `run --retire` for the run's keys), per
/// account: `targets` are (account, key ids), `None` being the command's own account
/// (the base credentials, or `--account`), a name one account of `--accounts` (or of
/// the Organization). `retire` says how (`--dry-run`, `--ignore-templates`; its keys
/// are not read). Prints each key's verdict, records what was found and done in the
/// database with its account (the incident report reads it), writes `--json-output`,
/// and returns the exit code. Only the command's own account: exactly what a
/// retirement of one account always did.
pub(crate) async fn retire_keys(
    store: &Store,
    run_id: Option<i64>,
    targets: &[(Option<String>, Vec<String>)],
    retire: &RetireOptions,
    send: &SendFlags,
    json_output: Option<&std::path::Path>,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let own: Vec<String> = targets
        .iter()
        .filter(|(account, _)| account.is_none())
        .flat_map(|(_, keys)| keys.clone())
        .collect();
    if targets.iter().all(|(account, _)| account.is_none()) {
        return retire_own(store, run_id, own, retire, send, json_output, global).await;
    }
    let mut senders: BTreeMap<String, AccountSender> =
        super::common::account_senders(global, send.connect_timeout, send.timeout)?
            .into_iter()
            .map(|a| (a.account.name.clone(), a))
            .collect();
    let mut named = Vec::new();
    for (account, keys) in targets {
        if let Some(name) = account {
            match senders.remove(name) {
                Some(sender) => named.push((sender, Keys::Ids(keys.clone()))),
                None => anyhow::bail!(
                    "retire: the keys {} are account {}'s, and the command's accounts have none \
                     of that name",
                    keys.join(", "),
                    escape(name)
                ),
            }
        }
    }
    // The rows without an account are the command's own account's: retired first, as
    // a one-account retirement.
    let own_code = if own.is_empty() {
        exit::OK
    } else {
        retire_own(store, run_id, own, retire, send, None, global).await?
    };
    let code = retire_in_accounts(store, run_id, named, retire, send, json_output, global).await?;
    Ok(own_code.max(code))
}

/// [`retire_keys`] in the command's own account (the base credentials, or `--account`).
async fn retire_own(
    store: &Store,
    run_id: Option<i64>,
    keys: Vec<String>,
    retire: &RetireOptions,
    send: &SendFlags,
    json_output: Option<&std::path::Path>,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let client = build_client(send, global)?;
    // A run's own account is NULL in its rows; a retirement of no run names the
    // account it was done in (`--account`).
    let record = Record {
        store,
        run_id,
        account: global.account.as_deref().filter(|_| run_id.is_none()),
    };
    let retire = RetireOptions {
        keys,
        ..retire.clone()
    };
    retire_with(
        &record,
        &retire,
        client,
        send,
        &home_region(global)?,
        json_output,
    )
    .await
    .map(|(code, _)| code)
}

/// Where a retirement is recorded.
pub(crate) struct Record<'a> {
    pub(crate) store: &'a Store,
    pub(crate) run_id: Option<i64>,
    /// The account it was done in (`None`: the command's own).
    pub(crate) account: Option<&'a str>,
}

/// [`retire_keys`] in one account with a client of its own (the demo's): also
/// returns what was found.
pub(crate) async fn retire_with(
    record: &Record<'_>,
    retire: &RetireOptions,
    client: Arc<keyfleet::api::CvmClient>,
    send: &SendFlags,
    home_region: &str,
    json_output: Option<&std::path::Path>,
) -> anyhow::Result<(u8, Option<Retirement>)> {
    let store = record.store;
    let options = discover_options(send, home_region.to_string());
    let limiter = super::incident::limiter(store, send.exec_config().rate).await?;
    let outcome = incident::retire(client, limiter, &options, retire).await;
    let retirement = match outcome {
        Ok(retirement) => retirement,
        Err(error) => {
            let message = error.to_string();
            let result = serde_json::json!({ "error": message }).to_string();
            store
                .record_retirement(
                    record.run_id,
                    record.account,
                    &retire.keys,
                    retire.dry_run,
                    false,
                    &result,
                )
                .await?;
            eprintln!("error: {}", escape(&message));
            return Ok((
                if error.is_usage() {
                    exit::USAGE
                } else {
                    exit::STOPPED
                },
                None,
            ));
        }
    };
    let result = serde_json::to_string(&retirement)?;
    store
        .record_retirement(
            record.run_id,
            record.account,
            &retire.keys,
            retire.dry_run,
            retirement.retired(),
            &result,
        )
        .await?;
    if let Some(path) = json_output {
        super::report::write_private_file(path, &super::report::json_bytes(&retirement)?)?;
    }
    summarize(&retirement, retire.ignore_templates);
    Ok((verdict_code(&retirement), Some(retirement)))
}

/// A retirement's exit code: 1 when something held a key or a key is still listed.
fn verdict_code(retirement: &Retirement) -> u8 {
    if retirement.refused() || !(retirement.dry_run || retirement.retired()) {
        exit::FAILED
    } else {
        exit::OK
    }
}

/// One account's retirement.
struct AccountRetirement {
    name: String,
    keys: Vec<String>,
    /// With a public key: the key, and its ids in the account or how many key pairs
    /// the account has when none holds it (then nothing is retired: `Ok(None)`).
    hunt: Option<(KeyMatcher, Result<KeyHunt, usize>)>,
    outcome: Result<Option<Retirement>, AccountFailure>,
}

/// Retires keys in several accounts at once, each through its own sender (paced
/// under its identity, the database's shared limiter). An account that cannot be
/// reached, or whose listing fails, is INCOMPLETE and the others go on; each
/// account's retirement is recorded with its account.
async fn retire_in_accounts(
    store: &Store,
    run_id: Option<i64>,
    targets: Vec<(AccountSender, Keys)>,
    retire: &RetireOptions,
    send: &SendFlags,
    json_output: Option<&std::path::Path>,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let limiter = super::incident::limiter(store, send.exec_config().rate).await?;
    let options = discover_options(send, home_region(global)?);
    let mut retirements = tokio::task::JoinSet::new();
    for (account, keys) in targets {
        let (limiter, options, retire) = (limiter.clone(), options.clone(), retire.clone());
        retirements
            .spawn(async move { retire_account(account, keys, limiter, options, retire).await });
    }
    let mut done = Vec::new();
    while let Some(retired) = retirements.join_next().await {
        done.push(retired?);
    }
    done.sort_by(|a, b| a.name.cmp(&b.name));

    let mut merged = serde_json::json!({
        "verdicts": [], "dry_run": retire.dry_run, "delete_request_ids": [], "incomplete": [],
    });
    let mut failures = Vec::new();
    let mut worst = exit::OK;
    for account in &done {
        crate::note!("account {}:", escape(&account.name));
        match &account.hunt {
            Some((matcher, Ok(hunt))) => super::incident::summarize_hunt(hunt, matcher),
            Some((matcher, Err(listed))) => crate::note!(
                "public key {}: held by none of the account's {listed} key pairs: nothing to retire",
                matcher.fingerprint()
            ),
            None => {}
        }
        let result = match &account.outcome {
            Ok(None) => continue,
            Ok(Some(retirement)) => {
                summarize(retirement, retire.ignore_templates);
                worst = worst.max(verdict_code(retirement));
                for verdict in &retirement.verdicts {
                    push(&mut merged["verdicts"], serde_json::to_value(verdict)?);
                }
                for id in &retirement.delete_request_ids {
                    push(&mut merged["delete_request_ids"], serde_json::json!(id));
                }
                serde_json::to_string(retirement)?
            }
            Err(failure) => {
                let line = failure.line(&account.name);
                eprintln!("{line}");
                let (code, message) = match failure {
                    AccountFailure::Incomplete { code, message } => (code.as_str(), message),
                    AccountFailure::Usage(message) => ("KeyFleet.Usage", message),
                };
                push(
                    &mut merged["incomplete"],
                    serde_json::json!({ "account": account.name, "code": code, "message": message }),
                );
                failures.push(failure);
                serde_json::json!({ "error": line }).to_string()
            }
        };
        let retired = matches!(&account.outcome, Ok(Some(r)) if r.retired());
        store
            .record_retirement(
                run_id,
                Some(&account.name),
                &account.keys,
                retire.dry_run,
                retired,
                &result,
            )
            .await?;
    }
    if let Some(path) = json_output {
        super::report::write_private_file(path, &super::report::json_bytes(&merged)?)?;
    }
    let retired = done
        .iter()
        .filter(|a| matches!(&a.outcome, Ok(Some(r)) if r.retired()))
        .count();
    let holding = done
        .iter()
        .filter(|a| matches!(&a.outcome, Ok(Some(_)) | Err(_)))
        .count();
    crate::note!(
        "{} accounts: {retired} retired their keys{}",
        done.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!("; {} INCOMPLETE or refused (above)", failures.len())
        }
    );
    if holding == 0
        && let Some((matcher, _)) = done.iter().find_map(|a| a.hunt.as_ref())
    {
        eprintln!(
            "error: no key pair of any account holds the public key {}",
            matcher.fingerprint()
        );
        return Ok(exit::USAGE);
    }
    Ok(super::incident::accounts_exit(&failures, worst))
}

fn push(array: &mut serde_json::Value, value: serde_json::Value) {
    if let Some(array) = array.as_array_mut() {
        array.push(value);
    }
}

/// One account's retirement: reached (its role assumed), its keys found (for a
/// public key), then retired as a one-account retirement is.
async fn retire_account(
    account: AccountSender,
    keys: Keys,
    limiter: Arc<dyn keyfleet::executor::Limiter>,
    options: DiscoverOptions,
    mut retire: RetireOptions,
) -> AccountRetirement {
    let name = account.account.name.clone();
    let matcher = match keys {
        Keys::Ids(ids) => {
            retire.keys = ids;
            None
        }
        Keys::Holding(matcher) => Some(matcher),
    };
    let mut hunt = None;
    let outcome = async {
        super::incident::reach(&account).await?;
        let client = account.client();
        if let Some(matcher) = matcher {
            let found =
                incident::find_key_pairs(client.clone(), limiter.clone(), &options, &matcher).await;
            match found {
                Ok(found) => {
                    retire.keys = found.key_ids();
                    hunt = Some((matcher, Ok(found)));
                }
                // Nothing of this account holds the key: nothing to retire in it.
                Err(incident::IncidentError::NoMatch { listed, .. }) => {
                    hunt = Some((matcher, Err(listed)));
                    return Ok(None);
                }
                Err(error) => return Err(AccountFailure::of(error)),
            }
        }
        let mut retirement = incident::retire(client, limiter, &options, &retire)
            .await
            .map_err(AccountFailure::of)?;
        for verdict in &mut retirement.verdicts {
            verdict.account = Some(name.clone());
        }
        Ok(Some(retirement))
    }
    .await;
    AccountRetirement {
        name,
        keys: retire.keys,
        hunt,
        outcome,
    }
}

/// `run --retire`: once the run's verification found every pair gone, its keys are
/// retired, each in its account (the same code as `keyfleet retire`); otherwise
/// nothing is sent and why is said. Returns the exit code of this step.
pub(crate) async fn after_run(
    store: &Store,
    run_id: i64,
    send: &SendFlags,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let targets = store.run_leaked_keys_by_account(run_id).await?;
    let keys: Vec<String> = targets.iter().flat_map(|(_, k)| k.clone()).collect();
    let not_gone = store.pairs_not_verified_gone(run_id).await?;
    if keys.is_empty() || not_gone > 0 {
        eprintln!(
            "retire: not attempted: {}; `keyfleet retire --key ...` once every pair is verified gone",
            if keys.is_empty() {
                "the run unbinds no key".to_string()
            } else {
                format!("{not_gone} of the run's pairs are not verified gone")
            }
        );
        let result = serde_json::json!({
            "error": format!("not attempted: {not_gone} pairs not verified gone")
        })
        .to_string();
        store
            .record_retirement(Some(run_id), None, &keys, false, false, &result)
            .await?;
        return Ok(exit::FAILED);
    }
    eprintln!(
        "retire: every pair verified gone; retiring {}",
        keys.join(", ")
    );
    let retire = RetireOptions {
        keys: Vec::new(),
        dry_run: false,
        ignore_templates: false,
    };
    retire_keys(store, Some(run_id), &targets, &retire, send, None, global).await
}
/// Each key's verdict on stderr.
fn summarize(retirement: &Retirement, ignore_templates: bool) {
    let refused = retirement.refused();
    for verdict in &retirement.verdicts {
        let key = format!("{} ({})", verdict.key_id, escape(&verdict.key_name));
        if !verdict.holds.is_empty() {
            eprintln!("{key}: NOT retired; still held by:");
            for hold in &verdict.holds {
                eprintln!("  {}", escape(&hold.describe()));
            }
        } else if refused {
            eprintln!("{key}: free, but not deleted: another key of this retirement is held");
        } else if retirement.dry_run {
            eprintln!("{key}: free; would be deleted (--dry-run: nothing sent)");
        } else if verdict.confirmed_gone {
            eprintln!("{key}: deleted; gone from DescribeKeyPairs");
        } else {
            eprintln!("{key}: DeleteKeyPairs answered, but the key is still listed");
        }
        for template in &verdict.dormant_templates {
            eprintln!(
                "  note: {} names it (not the default: launching from it will fail once the key is gone)",
                super::incident::describe_holder(template)
            );
        }
    }
    if !retirement.delete_request_ids.is_empty() {
        eprintln!(
            "DeleteKeyPairs RequestId {}",
            retirement.delete_request_ids.join(", ")
        );
    }
    if refused {
        let deleted = if retirement.delete_request_ids.is_empty() {
            "nothing was deleted"
        } else {
            "some keys were not deleted"
        };
        eprintln!(
            "{deleted}: unbind the key from those instances (discover, run), give \
             those templates another key{}, then retire again",
            if ignore_templates {
                ""
            } else {
                " (or --ignore-templates)"
            }
        );
    }
}
