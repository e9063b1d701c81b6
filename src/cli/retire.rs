//! `keyfleet retire --key K [--key ...] [--dry-run] [--ignore-templates]`: deletes
//! leaked key pairs once nothing holds them, and confirms each one gone.

use keyfleet::discover::DiscoverOptions;
use keyfleet::display::escape;
use keyfleet::incident::{self, RetireOptions, Retirement};

use super::flags::SendFlags;
use super::run::build_client;
use crate::{GlobalArgs, exit};

/// `keyfleet retire`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A key pair id to delete (repeatable); all are deleted or none.
    #[arg(long = "key", value_name = "KEY_ID", required = true)]
    keys: Vec<String>,
    /// Check everything and say what would be deleted; send no DeleteKeyPairs.
    #[arg(long)]
    dry_run: bool,
    /// Delete even when a default launch template version or a launch configuration
    /// names the key (instances launched from it afterwards fail).
    #[arg(long)]
    ignore_templates: bool,
    /// Write what was found and done here as JSON (owner-only, written whole).
    #[arg(long, value_name = "FILE")]
    json_output: Option<std::path::PathBuf>,
    #[command(flatten)]
    send: SendFlags,
}

pub(crate) async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<u8> {
    for key in &args.keys {
        if !keyfleet::ids::is_key_id(key) {
            eprintln!(
                "error: --key {}: not a key pair id (skey- followed by 8 characters of 0-9 or a-z)",
                escape(key)
            );
            return Ok(exit::USAGE);
        }
    }
    let store = super::common::open_store(&global.db).await?;
    let retire = RetireOptions {
        keys: args.keys.clone(),
        dry_run: args.dry_run,
        ignore_templates: args.ignore_templates,
    };
    let code = retire_keys(
        &store,
        None,
        &retire,
        &args.send,
        args.json_output.as_deref(),
        global,
    )
    .await;
    store.close().await;
    code
}

/// Retires `retire.keys` (`keyfleet retire`, and `run --retire` for the run's keys):
/// prints each key's verdict, records what was found and done in the database (the
/// incident report reads it), writes `--json-output`, and returns the exit code.
pub(crate) async fn retire_keys(
    store: &keyfleet::store::Store,
    run_id: Option<i64>,
    retire: &RetireOptions,
    send: &SendFlags,
    json_output: Option<&std::path::Path>,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let home_region = super::run::default_region(global)?.unwrap_or_else(|| "ap-guangzhou".into());
    let client = build_client(send, global)?;
    retire_with(
        store,
        run_id,
        retire,
        client,
        send,
        &home_region,
        json_output,
    )
    .await
    .map(|(code, _)| code)
}

/// [`retire_keys`] with a client of its own (the demo's): also returns what was found.
pub(crate) async fn retire_with(
    store: &keyfleet::store::Store,
    run_id: Option<i64>,
    retire: &RetireOptions,
    client: std::sync::Arc<keyfleet::api::CvmClient>,
    send: &SendFlags,
    home_region: &str,
    json_output: Option<&std::path::Path>,
) -> anyhow::Result<(u8, Option<Retirement>)> {
    let home_region = home_region.to_string();
    let config = send.exec_config();
    let options = DiscoverOptions {
        keys: retire.keys.clone(),
        // Instances and templates are looked for in every region.
        regions: None,
        home_region,
        max_attempts: config.max_attempts,
        retry_base: config.retry_base,
        retry_cap: config.retry_cap,
        throttle_delay: config.throttle_delay,
    };
    let limiter = super::incident::limiter(store, config.rate).await?;
    let outcome = incident::retire(client, limiter, &options, retire).await;
    let retirement = match outcome {
        Ok(retirement) => retirement,
        Err(error) => {
            let message = error.to_string();
            let result = serde_json::json!({ "error": message }).to_string();
            store
                .record_retirement(run_id, &retire.keys, retire.dry_run, false, &result)
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
            run_id,
            &retire.keys,
            retire.dry_run,
            retirement.retired(),
            &result,
        )
        .await?;
    if let Some(path) = json_output {
        let mut bytes = serde_json::to_vec_pretty(&retirement)?;
        bytes.push(b'\n');
        super::report::write_private_file(path, &bytes)?;
    }
    summarize(&retirement, retire.ignore_templates);
    let code = if retirement.refused() || !(retirement.dry_run || retirement.retired()) {
        exit::FAILED
    } else {
        exit::OK
    };
    Ok((code, Some(retirement)))
}

/// `run --retire`: once the run's verification found every pair gone, its keys are
/// retired (the same code as `keyfleet retire`); otherwise nothing is sent and why is
/// said. Returns the exit code of this step.
pub(crate) async fn after_run(
    store: &keyfleet::store::Store,
    run_id: i64,
    send: &SendFlags,
    global: &GlobalArgs,
) -> anyhow::Result<u8> {
    let keys = store.run_keys(run_id).await?.leaked;
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
            .record_retirement(Some(run_id), &keys, false, false, &result)
            .await?;
        return Ok(exit::FAILED);
    }
    eprintln!(
        "retire: every pair verified gone; retiring {}",
        keys.join(", ")
    );
    let retire = RetireOptions {
        keys,
        dry_run: false,
        ignore_templates: false,
    };
    retire_keys(store, Some(run_id), &retire, send, None, global).await
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
