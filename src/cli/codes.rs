//! `keyfleet codes`: the error-code table, for people and for scripts.

use keyfleet::taxonomy::{self, CODES};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (a list of {code, class, why, action}) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    if args.json {
        let rows: Vec<_> = CODES
            .iter()
            .map(|(code, class, why)| {
                serde_json::json!({
                    "code": code, "class": class, "why": why, "action": taxonomy::action(*class),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for (code, class, why) in CODES {
            println!("{code:<52} {class:<9} {why}");
        }
    }
    Ok(crate::exit::OK)
}
