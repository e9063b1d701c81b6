//! `keyfleet discover`: the instances holding leaked keys, as plan input.

use std::path::PathBuf;

use anyhow::bail;
use keyfleet::discover::{self, DiscoverError, DiscoverOptions, Discovery, Found};
use keyfleet::display::{csv_cell, escape};
use keyfleet::incident;

use super::common::AccountSender;
use super::flags::{DataFormat, SendFlags};
use super::incident::AccountFailure;
use super::run::build_client;
use crate::{GlobalArgs, exit};

/// Output formats: plan input, readable by `keyfleet plan` and `run`.
pub(crate) type OutputFormat = DataFormat;

/// `keyfleet discover --key skey-... [--key ...]`, or `--public-key FILE`, or
/// `--fingerprint SHA256:...`. With `--accounts FILE` (or `--organization`) and no
/// `--account`, every account is walked ([`run_every_account`]).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("leaked").required(true).args(["keys", "public_key", "fingerprint"])))]
pub struct Args {
    /// A key pair id to look for (repeatable); ACCOUNT:KEY_ID for a key of one account
    /// when the command works in several (--accounts without --account).
    #[arg(long = "key", value_name = "[ACCOUNT:]KEY_ID")]
    keys: Vec<String>,
    /// The leaked key's public half (an OpenSSH .pub file or an authorized_keys line):
    /// every key pair of the account (of each account) holding it is looked for.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// The leaked key's fingerprint, as `ssh-keygen -lf KEY.pub` prints it (SHA256:...).
    #[arg(long, value_name = "SHA256:...")]
    fingerprint: Option<String>,
    /// Write the launch template versions and launch configurations that hand the keys
    /// out here (CSV: kind,id,name,version,region,default,keys, then account when the
    /// command works in several accounts; owner-only, written whole).
    #[arg(long, value_name = "FILE")]
    templates_output: Option<PathBuf>,
    /// Regions to walk (repeatable or comma-separated); the configured region
    /// (--region, TENCENTCLOUD_REGION, the profile's) when neither this nor --all-regions.
    /// An account of the accounts file with `regions = [...]` is walked in those.
    #[arg(
        long = "regions",
        value_name = "REGION",
        value_delimiter = ',',
        conflicts_with = "all_regions"
    )]
    regions: Vec<String>,
    /// Walk every region DescribeRegions lists.
    #[arg(long)]
    all_regions: bool,
    /// Write the rows here (owner-only, written whole or not at all); stdout when absent.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// csv (default), json or jsonl.
    #[arg(long, value_enum, ignore_case = true, default_value_t = DataFormat::Csv)]
    format: DataFormat,
    /// Add a `new_key_id` column: the key each instance is to be rotated to (one
    /// account's key: with several accounts, only when one is walked).
    #[arg(long, value_name = "KEY_ID")]
    rotate_to: Option<String>,
    #[command(flatten)]
    send: SendFlags,
}

pub(crate) async fn run(mut args: Args, global: &GlobalArgs) -> anyhow::Result<u8> {
    // Every local check happens before anything is sent.
    let matcher =
        match super::incident::matcher(args.public_key.as_deref(), args.fingerprint.as_deref()) {
            Ok(matcher) => matcher,
            Err(message) => {
                eprintln!("error: {message}");
                return Ok(exit::USAGE);
            }
        };
    let keys = match super::incident::account_keys(&args.keys) {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(exit::USAGE);
        }
    };
    if let Some(new) = &args.rotate_to {
        if !keyfleet::ids::is_key_id(new) {
            bail!(
                "--rotate-to {}: not a key pair id (skey- followed by 8 characters of 0-9 or a-z)",
                escape(new)
            );
        }
        if keys.iter().any(|(_, key)| key == new) {
            bail!(
                "--rotate-to {}: the new key is one of the keys being removed",
                escape(new)
            );
        }
    }
    let configured_region = super::run::default_region(global)?;
    // `Err`: no region is named; an error only for an account that has none of its own.
    let regions = if args.all_regions {
        Ok(None)
    } else if !args.regions.is_empty() {
        Ok(Some(args.regions.clone()))
    } else {
        match &configured_region {
            Some(region) => Ok(Some(vec![region.clone()])),
            None => Err(
                "discover needs a region: --regions R, --all-regions, --region or TENCENTCLOUD_REGION",
            ),
        }
    };
    if let Some(accounts) =
        super::common::every_account(global, args.send.connect_timeout, args.send.timeout)?
    {
        let walk = EveryAccount {
            regions,
            configured_region,
            matcher,
            keys,
        };
        return run_every_account(args, global, accounts, walk).await;
    }
    args.keys = match super::incident::own_keys(keys, global.account.as_deref()) {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(exit::USAGE);
        }
    };
    let regions = regions.map_err(|message| anyhow::anyhow!(message))?;
    let home_region = configured_region
        .or_else(|| regions.as_ref().and_then(|r| r.first().cloned()))
        .unwrap_or_else(|| "ap-guangzhou".to_string());
    let config = args.send.exec_config();
    let mut options = DiscoverOptions::new(args.keys.clone(), regions, home_region, &config);
    let client = build_client(&args.send, global)?;
    // Paced through the database's shared slots, so a discovery beside a run (or a
    // verification) on the same database stays inside the limit with it.
    let store = super::common::open_store(&global.db).await?;
    let limiter = super::incident::limiter(&store, config.rate).await?;
    if let Some(matcher) = &matcher {
        // The public key's ids in this account, then discovery as with --key.
        let hunt = match incident::find_key_pairs(
            client.clone(),
            limiter.clone(),
            &options,
            matcher,
        )
        .await
        {
            Ok(hunt) => hunt,
            Err(error) => {
                eprintln!("error: {}", escape(&error.to_string()));
                return Ok(if error.is_usage() {
                    exit::USAGE
                } else {
                    exit::STOPPED
                });
            }
        };
        super::incident::summarize_hunt(&hunt, matcher);
        args.keys = hunt.key_ids();
        options.keys = args.keys.clone();
        if let Some(new) = &args.rotate_to
            && args.keys.contains(new)
        {
            bail!(
                "--rotate-to {}: the new key holds the leaked public key",
                escape(new)
            );
        }
    }
    let discovery = match discover::discover(client.clone(), limiter.clone(), &options).await {
        Ok(discovery) => discovery,
        Err(
            error @ (DiscoverError::MalformedKey(_)
            | DiscoverError::MalformedRegion(_)
            | DiscoverError::UnknownKey { .. }
            | DiscoverError::UnknownRegion { .. }),
        ) => {
            eprintln!("error: {}", escape(&error.to_string()));
            return Ok(exit::USAGE);
        }
        Err(error) => {
            eprintln!("error: {}", escape(&error.to_string()));
            return Ok(exit::STOPPED);
        }
    };
    // The templates of every region walked, whether or not an instance holds the key.
    let walked = discovery.walked_regions();
    let templates = incident::find_templates(client, limiter, &options, &args.keys, &walked).await;
    store.close().await;
    let bytes = render(&discovery.found, args.format, args.rotate_to.as_deref())?;
    write_discovered(&args, &bytes, &templates.holders, false)?;
    summarize(&discovery, &args.keys, args.rotate_to.as_deref());
    super::incident::summarize_templates(&templates, &args.keys);
    Ok(if discovery.is_incomplete() || templates.is_incomplete() {
        exit::INCOMPLETE
    } else {
        exit::OK
    })
}

/// The rows in the chosen format, sorted (so the same fleet gives the same bytes).
pub(crate) fn render(
    found: &[Found],
    format: OutputFormat,
    rotate_to: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let rows: Vec<(Option<&str>, &Found)> = found.iter().map(|f| (None, f)).collect();
    render_rows(&rows, false, format, rotate_to)
}

/// Writes the rendered rows to `--output` (owner-only, whole) or stdout, and the
/// template holders to `--templates-output` (with their account column when
/// `with_account`).
fn write_discovered(
    args: &Args,
    rows: &[u8],
    holders: &[incident::TemplateHolder],
    with_account: bool,
) -> anyhow::Result<()> {
    match &args.output {
        Some(path) => super::report::write_private_file(path, rows)?,
        None => {
            use std::io::Write;
            std::io::stdout().lock().write_all(rows)?;
        }
    }
    if let Some(path) = &args.templates_output {
        super::report::write_private_file(
            path,
            &super::incident::render_templates(holders, with_account)?,
        )?;
    }
    Ok(())
}

/// [`render`] for rows of several accounts: with `with_account`, an `account` column
/// last (CSV) or an "account" field (JSON) holds each row's account.
fn render_rows(
    found: &[(Option<&str>, &Found)],
    with_account: bool,
    format: OutputFormat,
    rotate_to: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        OutputFormat::Csv => {
            let mut writer = csv::Writer::from_writer(&mut out);
            let mut header = vec![
                "instance_id",
                "key_id",
                "region",
                "instance_state",
                "os_name",
                "keys_after",
            ];
            if rotate_to.is_some() {
                header.push("new_key_id");
            }
            if with_account {
                header.push("account");
            }
            writer.write_record(&header)?;
            for (account, f) in found {
                let mut row = vec![
                    csv_cell(&f.instance_id).into_owned(),
                    csv_cell(&f.key_id).into_owned(),
                    csv_cell(&f.region).into_owned(),
                    csv_cell(&f.instance_state).into_owned(),
                    csv_cell(&f.os_name).into_owned(),
                    f.keys_after.to_string(),
                ];
                if let Some(new) = rotate_to {
                    row.push(new.to_string());
                }
                if with_account {
                    row.push(account.unwrap_or_default().to_string());
                }
                writer.write_record(&row)?;
            }
            writer.flush()?;
        }
        OutputFormat::Json | OutputFormat::Jsonl => {
            let rows: Vec<serde_json::Value> = found
                .iter()
                .map(|(account, f)| {
                    let mut row = serde_json::json!({
                        "instance_id": f.instance_id, "key_id": f.key_id, "region": f.region,
                        "instance_state": f.instance_state, "os_name": f.os_name, "keys_after": f.keys_after,
                    });
                    if let Some(new) = rotate_to {
                        row["new_key_id"] = serde_json::json!(new);
                    }
                    if with_account {
                        row["account"] = serde_json::json!(account);
                    }
                    row
                })
                .collect();
            if format == OutputFormat::Json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                out.push(b'\n');
            } else {
                for row in rows {
                    serde_json::to_writer(&mut out, &row)?;
                    out.push(b'\n');
                }
            }
        }
    }
    Ok(out)
}

/// What was found, per region, and what will need attention: on stderr.
pub(crate) fn summarize(discovery: &Discovery, keys: &[String], rotate_to: Option<&str>) {
    for scan in &discovery.regions {
        let matches = discovery
            .found
            .iter()
            .filter(|f| f.region == scan.region)
            .count();
        // Region names come from DescribeRegions: escaped like any server text.
        let region = escape(&scan.region);
        let mut extra = String::new();
        if scan.walks > 1 {
            extra.push_str(&format!(
                " (walked {} times: the listing changed meanwhile)",
                scan.walks
            ));
        }
        if scan.looked_up > 0 {
            extra.push_str(&format!(
                "; {} instances DescribeKeyPairs named were missed by the walk and found by id",
                scan.looked_up
            ));
        }
        match &scan.failed {
            None => crate::note!(
                "{region}: {} instances scanned in {} requests, {matches} matching pairs{extra}",
                scan.scanned,
                scan.pages
            ),
            Some((code, message)) => crate::note!(
                "{region}: INCOMPLETE after {} instances ({}: {}); the output lacks what was not listed",
                scan.scanned,
                escape(code),
                escape(message)
            ),
        }
    }
    for missing in &discovery.unlocated {
        crate::note!(
            "INCOMPLETE: DescribeKeyPairs says {} is bound to {}, which is in none of the regions scanned \
             (not listed, not found by id): walk its region, or check it in the console",
            escape(&missing.key_id),
            escape(&missing.instance_id)
        );
    }
    let found = &discovery.found;
    if found.is_empty() {
        if discovery.is_incomplete() {
            crate::note!(
                "no instance found holding {}, but the discovery is INCOMPLETE (above)",
                keys.join(", ")
            );
        } else {
            crate::note!(
                "no instance holds {} in the regions scanned",
                keys.join(", ")
            );
        }
        return;
    }
    let instances = |pred: &dyn Fn(&Found) -> bool| {
        let mut ids: Vec<&str> = found
            .iter()
            .filter(|f| pred(f))
            .map(|f| f.instance_id.as_str())
            .collect();
        ids.dedup();
        ids.len()
    };
    let total = instances(&|_| true);
    crate::note!("{} pairs on {total} instances", found.len());
    let windows = instances(&|f| f.is_windows());
    let running = instances(&|f| f.instance_state == "RUNNING");
    let transitional =
        instances(&|f| f.instance_state != "RUNNING" && f.instance_state != "STOPPED");
    let keyless = instances(&|f| f.keys_after == 0);
    if windows > 0 {
        crate::note!("  {windows} Windows instances: their keys cannot be unbound");
    }
    if running > 0 {
        crate::note!("  {running} RUNNING instances: stop them first or run with --force-stop");
    }
    if transitional > 0 {
        crate::note!(
            "  {transitional} instances in a transitional state: retried until they settle"
        );
    }
    match rotate_to {
        Some(new) => crate::note!(
            "  rotation to {new}: each instance keeps its old key until {new} is confirmed bound \
             (so none is left keyless; {keyless} would be by a plain unbind)"
        ),
        None if keyless > 0 => crate::note!(
            "  {keyless} instances keep no key afterwards: they accept only password login \
             (keys_after 0; --keep-one-key skips them, --rotate-to binds a new key first)"
        ),
        None => {}
    }
}

/// What a discovery over every account was asked, checked before anything is sent.
struct EveryAccount {
    /// The regions the command names (`Ok(None)`: all); `Err`: none named.
    regions: Result<Option<Vec<String>>, &'static str>,
    configured_region: Option<String>,
    matcher: Option<keyfleet::pubkey::KeyMatcher>,
    /// `--key` values, with their account when named.
    keys: Vec<(Option<String>, String)>,
}

/// One account's discovery.
struct AccountWalk {
    name: String,
    /// With a public key: its ids in the account, or how many key pairs the account
    /// has when none holds it (then nothing is walked: the outcome is `Ok(None)`).
    hunt: Option<Result<incident::KeyHunt, usize>>,
    outcome: Result<Option<Walked>, AccountFailure>,
}

/// What one account's walk found.
struct Walked {
    keys: Vec<String>,
    discovery: Discovery,
    templates: incident::TemplateScan,
}

/// `discover` over every account of `--accounts` (or the Organization): each account
/// in its own regions (`regions = [...]`) or the command's, its own key ids (those of
/// `--public-key`, or its `ACCOUNT:` keys), all accounts at once, each paced under
/// its own identity through the database's shared limiter. An account that cannot be
/// reached is INCOMPLETE and the others' rows are written; the rows carry an
/// `account` column.
async fn run_every_account(
    args: Args,
    global: &GlobalArgs,
    accounts: Vec<AccountSender>,
    walk: EveryAccount,
) -> anyhow::Result<u8> {
    // Which accounts are walked, for which keys: every account for a public key; the
    // accounts the keys name otherwise.
    let keys = if walk.matcher.is_some() {
        None
    } else {
        match super::incident::keys_by_account(walk.keys, &accounts) {
            Ok(keys) => Some(keys),
            Err(message) => {
                eprintln!("error: {message}");
                return Ok(exit::USAGE);
            }
        }
    };
    let walked: Vec<AccountSender> = accounts
        .into_iter()
        .filter(|a| {
            keys.as_ref()
                .is_none_or(|k| k.contains_key(&a.account.name))
        })
        .collect();
    if args.rotate_to.is_some() && walked.len() > 1 {
        eprintln!(
            "error: --rotate-to names one account's key pair, and discover walks {} accounts \
             ({}): discover each with --account NAME, or name one account's keys (--key ACCOUNT:...)",
            walked.len(),
            walked
                .iter()
                .map(|a| a.account.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(exit::USAGE);
    }
    for account in &walked {
        if account.account.regions.is_none()
            && let Err(message) = walk.regions
        {
            eprintln!(
                "error: account {} has no regions = [...] in the accounts file, and {message}",
                escape(&account.account.name)
            );
            return Ok(exit::USAGE);
        }
    }
    let config = args.send.exec_config();
    let store = super::common::open_store(&global.db).await?;
    let limiter = super::incident::limiter(&store, config.rate).await?;
    let mut walks = tokio::task::JoinSet::new();
    for account in walked {
        let regions = match &account.account.regions {
            Some(regions) => Some(regions.clone()),
            None => walk.regions.clone().unwrap_or_default(),
        };
        let home_region = walk
            .configured_region
            .clone()
            .or_else(|| regions.as_ref().and_then(|r| r.first().cloned()))
            .unwrap_or_else(|| "ap-guangzhou".to_string());
        let keys = keys
            .as_ref()
            .and_then(|k| k.get(&account.account.name).cloned())
            .unwrap_or_default();
        let options = DiscoverOptions::new(keys, regions, home_region, &config);
        let (limiter, matcher) = (limiter.clone(), walk.matcher.clone());
        walks.spawn(async move { walk_account(account, limiter, options, matcher).await });
    }
    let mut done = Vec::new();
    while let Some(walked) = walks.join_next().await {
        done.push(walked?);
    }
    store.close().await;
    done.sort_by(|a, b| a.name.cmp(&b.name));

    let mut rows: Vec<(Option<&str>, &Found)> = Vec::new();
    let mut holders = Vec::new();
    for account in &done {
        if let Ok(Some(walked)) = &account.outcome {
            rows.extend(
                walked
                    .discovery
                    .found
                    .iter()
                    .map(|f| (Some(account.name.as_str()), f)),
            );
            holders.extend(walked.templates.holders.iter().cloned());
        }
    }
    let bytes = render_rows(&rows, true, args.format, args.rotate_to.as_deref())?;
    write_discovered(&args, &bytes, &holders, true)?;

    let mut failures = Vec::new();
    let mut incomplete = false;
    for account in &done {
        crate::note!("account {}:", escape(&account.name));
        if let (Some(hunt), Some(matcher)) = (&account.hunt, &walk.matcher) {
            match hunt {
                Ok(hunt) => super::incident::summarize_hunt(hunt, matcher),
                Err(listed) => crate::note!(
                    "public key {}: held by none of the account's {listed} key pairs",
                    matcher.fingerprint()
                ),
            }
        }
        match &account.outcome {
            Ok(None) => {}
            Ok(Some(walked)) => {
                summarize(&walked.discovery, &walked.keys, args.rotate_to.as_deref());
                super::incident::summarize_templates(&walked.templates, &walked.keys);
                incomplete |= walked.discovery.is_incomplete() || walked.templates.is_incomplete();
            }
            Err(failure) => {
                eprintln!("{}", failure.line(&account.name));
                failures.push(failure);
            }
        }
    }
    let holding = done
        .iter()
        .filter(|a| matches!(&a.outcome, Ok(Some(walked)) if !walked.keys.is_empty()))
        .count();
    crate::note!(
        "{} accounts walked: {holding} hold the keys, {} rows; {}",
        done.len(),
        rows.len(),
        if failures.is_empty() {
            "every account answered".to_string()
        } else {
            format!(
                "{} INCOMPLETE or refused (above): their rows are missing",
                failures.len()
            )
        }
    );
    if let Some(matcher) = &walk.matcher
        && failures.is_empty()
        && holding == 0
    {
        eprintln!(
            "error: no key pair of any account holds the public key {}",
            matcher.fingerprint()
        );
        return Ok(exit::USAGE);
    }
    let worst = if incomplete {
        exit::INCOMPLETE
    } else {
        exit::OK
    };
    Ok(super::incident::accounts_exit(&failures, worst))
}

/// One account's discovery: reached (its role assumed), its key ids found (for a
/// public key), its instances walked, its templates listed (each marked as its).
async fn walk_account(
    account: AccountSender,
    limiter: std::sync::Arc<dyn keyfleet::executor::Limiter>,
    options: DiscoverOptions,
    matcher: Option<keyfleet::pubkey::KeyMatcher>,
) -> AccountWalk {
    let mut hunt = None;
    let outcome = walk(&account, limiter, options, matcher.as_ref(), &mut hunt).await;
    AccountWalk {
        name: account.account.name,
        hunt,
        outcome,
    }
}

/// [`walk_account`]'s steps; `hunt` gets what the public key's search found.
async fn walk(
    account: &AccountSender,
    limiter: std::sync::Arc<dyn keyfleet::executor::Limiter>,
    mut options: DiscoverOptions,
    matcher: Option<&keyfleet::pubkey::KeyMatcher>,
    hunt: &mut Option<Result<incident::KeyHunt, usize>>,
) -> Result<Option<Walked>, AccountFailure> {
    super::incident::reach(account).await?;
    let client = account.client();
    if let Some(matcher) = matcher {
        match incident::find_key_pairs(client.clone(), limiter.clone(), &options, matcher).await {
            Ok(found) => {
                options.keys = found.key_ids();
                *hunt = Some(Ok(found));
            }
            Err(incident::IncidentError::NoMatch { listed, .. }) => {
                *hunt = Some(Err(listed));
                return Ok(None);
            }
            Err(error) => return Err(AccountFailure::of(error)),
        }
    }
    let discovery = discover::discover(client.clone(), limiter.clone(), &options)
        .await
        .map_err(|error| match error {
            DiscoverError::Refused {
                action,
                code,
                message,
            } => AccountFailure::refused(action, code, message),
            other => AccountFailure::Usage(other.to_string()),
        })?;
    let regions = discovery.walked_regions();
    let mut templates =
        incident::find_templates(client, limiter, &options, &options.keys, &regions).await;
    for holder in &mut templates.holders {
        holder.account = Some(account.account.name.clone());
    }
    Ok(Some(Walked {
        keys: options.keys,
        discovery,
        templates,
    }))
}
