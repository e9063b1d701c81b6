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
    let home_region = super::run::default_region(global)?.unwrap_or_else(|| "ap-guangzhou".into());
    let config = args.send.exec_config();
    let options = DiscoverOptions {
        keys: args.keys.clone(),
        // Instances and templates are looked for in every region.
        regions: None,
        home_region,
        max_attempts: config.max_attempts,
        retry_base: config.retry_base,
        retry_cap: config.retry_cap,
        throttle_delay: config.throttle_delay,
    };
    let client = build_client(&args.send, global)?;
    let store = super::common::open_store(&global.db).await?;
    let limiter = super::incident::limiter(&store, config.rate).await?;
    let retire = RetireOptions {
        keys: args.keys.clone(),
        dry_run: args.dry_run,
        ignore_templates: args.ignore_templates,
    };
    let outcome = incident::retire(client, limiter, &options, &retire).await;
    store.close().await;
    let retirement = match outcome {
        Ok(retirement) => retirement,
        Err(error) => {
            eprintln!("error: {}", escape(&error.to_string()));
            return Ok(if error.is_usage() {
                exit::USAGE
            } else {
                exit::STOPPED
            });
        }
    };
    if let Some(path) = &args.json_output {
        let mut bytes = serde_json::to_vec_pretty(&retirement)?;
        bytes.push(b'\n');
        super::report::write_private_file(path, &bytes)?;
    }
    summarize(&retirement, args.ignore_templates);
    Ok(
        if retirement.refused() || !(retirement.dry_run || retirement.retired()) {
            exit::FAILED
        } else {
            exit::OK
        },
    )
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
