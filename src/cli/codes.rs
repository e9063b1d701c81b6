//! `keyfleet codes`: the error-code table, for people and for scripts; `--exit`: the
//! exit-code table (`crate::exit::TABLE`, also `docs/exit-codes.md`).

use keyfleet::cvm::Action;
use keyfleet::taxonomy::{self, ACTION_CODES, CODES, Rule};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (a list of {code, class, scope, why, action, for_action}) instead of a table.
    #[arg(long)]
    json: bool,
    /// Print the exit codes keyfleet ends with instead (with --json: a list of {code, name, meaning}).
    #[arg(long)]
    exit: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<u8> {
    if args.exit {
        if args.json {
            println!("{}", serde_json::to_string_pretty(crate::exit::TABLE)?);
        } else {
            for code in crate::exit::TABLE {
                println!("{:<3} {:<24} {}", code.code, code.name, code.meaning);
            }
        }
        return Ok(crate::exit::OK);
    }
    if args.json {
        let row = |rule: &Rule, only: Option<Action>| {
            serde_json::json!({
                "code": rule.code, "class": rule.class, "scope": rule.scope, "why": rule.why,
                "action": taxonomy::action(rule.class), "for_action": only.map(Action::name),
            })
        };
        let rows: Vec<_> = CODES
            .iter()
            .map(|rule| row(rule, None))
            .chain(ACTION_CODES.iter().map(|(a, rule)| row(rule, Some(*a))))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for rule in CODES {
            println!(
                "{:<52} {:<9} {:<9} {}",
                rule.code, rule.class, rule.scope, rule.why
            );
        }
        for (action, rule) in ACTION_CODES {
            println!(
                "{:<52} {:<9} {:<9} {} (for {action})",
                rule.code, rule.class, rule.scope, rule.why
            );
        }
    }
    Ok(crate::exit::OK)
}
