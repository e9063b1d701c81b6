//! `keyfleet call`: one API request by hand, outside any run.
//!
//! `call disassociate` sends one `DisassociateInstancesKeyPairs` for the given ids and
//! prints its RequestId; `call describe` prints what `DescribeInstances` says about
//! instances, handy for checking a result. Neither touches the database.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use keyfleet::api::CallError;
use keyfleet::display::escape;
use keyfleet::{credentials, cvm, ids, taxonomy};
use serde_json::json;

use super::flags;
use crate::GlobalArgs;
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// Time allowed to establish a connection (a bare number is seconds).
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = flags::seconds)]
    connect_timeout: Duration,
    /// Time allowed for the whole request, reply included (a bare number is seconds).
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = flags::seconds)]
    timeout: Duration,
    /// Print the result (or the error) as one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Unbind every --key from every --instance with one DisassociateInstancesKeyPairs request.
    Disassociate(PairArgs),
    /// Print instances' state, OS and bound key pairs (DescribeInstances) as JSON.
    Describe(DescribeArgs),
}

#[derive(Debug, clap::Args)]
struct PairArgs {
    /// Instance id (ins-xxxxxxxx); repeat or separate with commas, at most 100.
    #[arg(
        long = "instance",
        value_name = "ID",
        required = true,
        value_delimiter = ','
    )]
    instances: Vec<String>,
    /// Key pair id (skey-xxxxxxxx); repeat or separate with commas, at most 100.
    #[arg(
        long = "key",
        value_name = "ID",
        required = true,
        value_delimiter = ','
    )]
    keys: Vec<String>,
    /// Let Tencent Cloud stop RUNNING instances for the change and start them again.
    #[arg(long)]
    force_stop: bool,
}

#[derive(Debug, clap::Args)]
struct DescribeArgs {
    /// Instance id (ins-xxxxxxxx); repeat or separate with commas, at most 100.
    #[arg(
        long = "instance",
        value_name = "ID",
        required = true,
        value_delimiter = ','
    )]
    instances: Vec<String>,
}

pub(crate) async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<u8> {
    // Every local check happens before credentials are read or anything is sent.
    let (instances, keys, force_stop) = match &args.action {
        Action::Disassociate(pair) => (
            checked_ids(&pair.instances, "--instance", ids::instance_id_problem)?,
            checked_ids(&pair.keys, "--key", ids::key_id_problem)?,
            pair.force_stop,
        ),
        Action::Describe(describe) => (
            checked_ids(&describe.instances, "--instance", ids::instance_id_problem)?,
            Vec::new(),
            false,
        ),
    };
    let profile = global.profile.as_deref();
    let region = credentials::resolve_region(global.region.as_deref(), profile)?;
    tracing::info!(region = %region.name, region_source = %region.source, "calling");
    let client = super::common::client(global, args.connect_timeout, args.timeout)?;

    match args.action {
        Action::Disassociate(_) => {
            let result = client
                .disassociate_instances_key_pairs(&region.name, &instances, &keys, force_stop)
                .await;
            match result {
                Ok(success) => {
                    if args.json {
                        print_json(&json!({
                            "ok": true,
                            "action": "DisassociateInstancesKeyPairs",
                            "region": region.name,
                            "request_id": success.request_id,
                            "http_status": success.http_status,
                        }))?;
                    } else {
                        crate::note!(
                            "unbound {} key(s) from {} instance(s) in {}",
                            keys.len(),
                            instances.len(),
                            region.name
                        );
                        println!("{}", escape(&success.request_id));
                    }
                    Ok(exit::OK)
                }
                Err(err) => {
                    report_failure(&err, cvm::Action::DisassociateInstancesKeyPairs, args.json)
                }
            }
        }
        Action::Describe(_) => match client.describe_instances(&region.name, &instances).await {
            Ok((found, request_id)) => {
                let missing: Vec<&String> = instances
                    .iter()
                    .filter(|id| !found.iter().any(|i| &i.instance_id == *id))
                    .collect();
                print_json(&json!({
                    "region": region.name,
                    "request_id": request_id,
                    "instances": found,
                    "not_found": missing,
                }))?;
                Ok(exit::OK)
            }
            Err(err) => report_failure(&err, cvm::Action::DescribeInstances, args.json),
        },
    }
}

/// Prints a failed call: the human version to stderr, and with `--json` an object to stdout.
fn report_failure(err: &CallError, action: cvm::Action, as_json: bool) -> anyhow::Result<u8> {
    let class = err.class(action);
    if as_json {
        let body_prefix = match err {
            CallError::Transport(t) if !t.body_prefix.is_empty() => Some(t.body_prefix.as_str()),
            _ => None,
        };
        print_json(&json!({
            "ok": false,
            "code": err.code(),
            "message": err.message(),
            "class": class,
            "request_id": err.request_id(),
            "http_status": err.http_status(),
            "body_prefix": body_prefix,
        }))?;
    }
    eprintln!("error: {}: {}", escape(&err.code()), escape(&err.message()));
    eprintln!(
        "  class:       {class} (in a run: {})",
        taxonomy::action(class)
    );
    eprintln!(
        "  request id:  {}",
        escape(err.request_id().unwrap_or("none"))
    );
    if let Some(status) = err.http_status() {
        eprintln!("  http status: {status}");
    }
    if let CallError::Transport(t) = err
        && !t.body_prefix.is_empty()
    {
        eprintln!("  body starts: {:?}", t.body_prefix);
    }
    Ok(exit::FAILED)
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The ids of one flag, checked: well formed, no repeats, at most 100.
fn checked_ids(
    values: &[String],
    flag: &str,
    problem: fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<String>> {
    if values.len() > ids::MAX_IDS_PER_REQUEST {
        bail!(
            "{flag} is given {} times; one request takes at most {}",
            values.len(),
            ids::MAX_IDS_PER_REQUEST
        );
    }
    let mut seen = HashSet::new();
    for (index, value) in values.iter().enumerate() {
        if let Some(problem) = problem(value) {
            bail!("{flag} value #{}: {problem}", index + 1);
        }
        if !seen.insert(value.as_str()) {
            bail!("{flag} value #{}: {value} is given twice", index + 1);
        }
    }
    Ok(values.to_vec())
}
