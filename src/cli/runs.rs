//! `keyfleet runs`: the runs in the database, newest first.

use keyfleet::display::escape;

use crate::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON list instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let store = super::common::open_store(&global.db).await?;
    let runs = store.list_runs().await;
    store.close().await;
    let runs = runs?;
    if args.json {
        println!("{}", serde_json::to_string(&runs)?);
        return Ok(crate::exit::OK);
    }
    if runs.is_empty() {
        eprintln!("no runs in {}", global.db.display());
        return Ok(crate::exit::OK);
    }
    println!(
        "{:>5}  {:<20}  {:<9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>7}  input",
        "run",
        "created (UTC)",
        "state",
        "pairs",
        "succeeded",
        "failed",
        "pending",
        "rejected",
        "jobs"
    );
    for r in runs {
        let count = |s: &str| r.items.get(s).copied().unwrap_or(0);
        println!(
            "{:>5}  {:<20}  {:<9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>7}  {}",
            r.run_id,
            super::status::utc(r.created_at),
            escape(&r.state),
            r.pairs,
            count("succeeded"),
            count("failed"),
            count("pending"),
            r.rejected,
            r.jobs,
            escape(&r.input_path)
        );
    }
    Ok(crate::exit::OK)
}
