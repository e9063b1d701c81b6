//! `keyfleet plan INPUT`: read, validate and chunk the input into a durable run.

use std::path::PathBuf;

use anyhow::Context;
use keyfleet::display::escape;
use keyfleet::plan::{self, PlanOutcome};

use super::flags::PlanFlags;

use crate::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// CSV, JSON or JSON Lines file of (instance, key, region) rows; `-` reads stdin.
    input: PathBuf,
    #[command(flatten)]
    plan: PlanFlags,
    #[command(flatten)]
    live: super::live::LiveFlags,
    /// Print one JSON object on stdout instead of the summary on stderr.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let mut options = args
        .plan
        .options(super::run::default_region(global)?, args.live.live()?);
    options.account = global.account.clone();
    if options.live.is_some() && options.keep_one_key {
        anyhow::bail!(
            "--keep-one-key and --running stop-start|force-stop cannot be combined yet: run the \
             --keep-one-key unbinds first"
        );
    }
    let store = super::common::open_store(&global.db).await?;
    let outcome = plan::plan_input(&store, &args.input, &options).await;
    let templates = match (&outcome, &args.plan.templates) {
        (Ok(planned), Some(path)) => {
            super::incident::plan_templates(&store, planned.summary.run_id, path).await
        }
        _ => Ok(()),
    };
    let accounts = match &outcome {
        Ok(planned) => by_account(&store, planned.summary.run_id, global).await,
        Err(_) => Ok(Vec::new()),
    };
    store.close().await;
    let outcome = outcome?;
    templates?;
    let accounts = accounts?;
    if args.json {
        let mut json = serde_json::to_value(&outcome).context("cannot encode the summary")?;
        if !accounts.is_empty() {
            json["accounts"] = serde_json::to_value(&accounts)?;
        }
        println!("{json}");
    } else if !super::term::quiet() {
        eprint!("{}", human(&outcome, options.live.as_ref()));
        for counts in &accounts {
            eprintln!("  {}", super::status::account_line(counts));
        }
    }
    Ok(crate::exit::OK)
}

/// A run whose rows name accounts: each account's pairs; with `--accounts` (or
/// `--organization`) a warning for each account it lacks (run and resume refuse the
/// run until it has them).
async fn by_account(
    store: &keyfleet::store::Store,
    run_id: i64,
    global: &GlobalArgs,
) -> anyhow::Result<Vec<keyfleet::store::AccountCounts>> {
    let named = store.run_accounts(run_id).await?;
    if named.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(path) = &global.accounts {
        let file = keyfleet::accounts::Accounts::load(path)?;
        for name in &named {
            if file.get(name, "the input").is_err() {
                eprintln!(
                    "warning: run {run_id}'s rows name account {}, which {} does not have: \
                     run and resume refuse the run until it does",
                    escape(name),
                    path.display()
                );
            }
        }
    }
    Ok(store.account_counts(run_id).await?)
}

fn human(outcome: &PlanOutcome, live: Option<&keyfleet::rules::power::Live>) -> String {
    let s = &outcome.summary;
    let mut text = String::new();
    if outcome.existing {
        text.push_str(&format!(
            "run {} already planned this input with these options (nothing new written)\n",
            s.run_id
        ));
    } else {
        text.push_str(&format!("planned run {}\n", s.run_id));
    }
    text.push_str(&format!("  input        {}\n", escape(&s.input_path)));
    text.push_str(&format!("  rows read    {}\n", s.rows));
    text.push_str(&format!("  valid pairs  {}\n", s.pairs));
    text.push_str(&format!("  duplicates   {}\n", s.duplicates));
    text.push_str(&format!("  rejected     {}\n", s.rejected));
    if let Some(line) = super::live::running_line(outcome.running, live) {
        text.push_str(&format!("  running      {line}\n"));
    }
    match outcome.keyless_after {
        Some(n) if n > 0 => text.push_str(&format!(
            "  keyless      {n} instances keep no key after this unbind (keys_after 0): they \
             accept only password login; --keep-one-key skips them, a new_key_id rotates them\n"
        )),
        _ => {}
    }
    if s.binds > 0 || s.held > 0 {
        text.push_str(&format!(
            "  new keys     {} (bound and confirmed first)\n",
            s.binds
        ));
        text.push_str(&format!(
            "  held pairs   {} (unbound only once their instance is confirmed)\n",
            s.held
        ));
    }
    for r in &s.rejections {
        text.push_str(&format!(
            "    {}: {}\n",
            escape(&r.position),
            escape(&r.reason)
        ));
    }
    if s.rejected > s.rejections.len() as i64 {
        text.push_str(&format!(
            "    ... and {} more (keyfleet report --only rejected)\n",
            s.rejected - s.rejections.len() as i64
        ));
    }
    text.push_str(&format!("  instances    {}\n", s.instances));
    text.push_str(&format!("  keys         {}\n", s.keys));
    text.push_str(&format!("  regions      {}\n", s.regions));
    text.push_str(&format!(
        "  jobs         {} (requests; lower bound {} = ceil(pairs / 10000))\n",
        s.jobs, outcome.lower_bound
    ));
    text
}
