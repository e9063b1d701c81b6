//! `keyfleet status [RUN]`: where a run stands.

use keyfleet::display::escape;
use keyfleet::store::Verified;

use crate::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run id; the newest run when omitted.
    run: Option<i64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC, for people.
pub fn utc(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let store = super::common::open_store(&global.db).await?;
    let status = async {
        let run_id = store.resolve_run(args.run).await?;
        let status = store.run_status(run_id).await?;
        let verification = store.verification_counts(run_id).await?;
        let rates = store.achieved_rates(run_id, None).await?;
        Ok::<_, keyfleet::store::StoreError>((status, verification, rates))
    }
    .await;
    store.close().await;
    let (status, verification, rates) = status?;
    // What `keyfleet verify` found, by verdict; `unverified` counts pairs never checked.
    let mut verified: std::collections::BTreeMap<&str, i64> = Verified::ALL
        .iter()
        .map(|v| (v.as_str(), verification.get(*v)))
        .collect();
    verified.insert("unverified", verification.unverified);
    if args.json {
        let mut json = serde_json::to_value(&status)?;
        json["verification"] = serde_json::json!(verified);
        json["rates"] = serde_json::to_value(&rates)?;
        println!("{json}");
        return Ok(crate::exit::OK);
    }
    println!(
        "run {} ({}): {}",
        status.run_id,
        escape(&status.state),
        escape(&status.input_path)
    );
    if let Some(reason) = &status.stop_reason {
        println!("  stopped because {}", escape(reason));
    }
    let list = |map: &std::collections::BTreeMap<String, i64>| {
        map.iter()
            .map(|(k, v)| format!("{} {v}", escape(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  pairs     {}", list(&status.pairs));
    if status.binds.values().any(|n| *n > 0) || status.held > 0 {
        println!("  new keys  {}", list(&status.binds));
        println!(
            "  held      {} (unbinds waiting for their instance's new keys)",
            status.held
        );
    }
    println!("  jobs      {}", list(&status.jobs));
    if status.jobs_by_action.len() > 1 {
        for (action, states) in &status.jobs_by_action {
            let states: std::collections::BTreeMap<String, i64> = states
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| (s.clone(), *n))
                .collect();
            println!("    {:<30} {}", escape(action), list(&states));
        }
    }
    let verified: std::collections::BTreeMap<String, i64> = verified
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    println!("  verified  {}", list(&verified));
    println!(
        "  requests  {} sent, {} throttled",
        status.requests, status.throttled
    );
    if !rates.is_empty() {
        println!("  rates     per API and access endpoint:");
        for line in super::rates::lines(&rates, "    ") {
            println!("{line}");
        }
    }
    if !status.failures_by_code.is_empty() {
        println!("  failed pairs by error code:");
        for (code, n) in &status.failures_by_code {
            println!("    {:<52} {n}", escape(code));
        }
    }
    println!("  created   {}", utc(status.created_at));
    if let Some(t) = status.started_at {
        println!("  started   {}", utc(t));
    }
    if let Some(t) = status.finished_at {
        println!("  finished  {}", utc(t));
    }
    if let Some(ms) = status.elapsed_ms {
        println!("  elapsed   {:.1} s", ms as f64 / 1000.0);
    }
    Ok(crate::exit::OK)
}
