//! `keyfleet report --incident [RUN...] [--format md|json] [--output FILE]`: the
//! incident's record for the postmortem, from the database alone: the key, what was
//! found, what was done and when, the verification, the templates, the key's
//! retirement, the requests by API and every RequestId. Markdown for a person (with
//! the RequestIds in a CSV beside it), JSON for a tool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use keyfleet::display::{csv_cell, escape};
use keyfleet::store::Store;
use keyfleet::store::incident::{IncidentFacts, RequestRecord};
use keyfleet::store::power::PowerCounts;
use keyfleet::store::report::RunStatus;
use keyfleet::store::templates::TemplateChangeRow;
use serde::Serialize;
use serde_json::Value;

use super::status::utc;

/// The incident report, as the JSON format writes it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IncidentReport {
    pub runs: Vec<i64>,
    pub key: KeySection,
    /// The first run's start and the last one's end, UTC.
    pub started: Option<String>,
    pub ended: Option<String>,
    pub run_details: Vec<RunPart>,
    pub templates: Vec<TemplatePart>,
    pub retirements: Vec<RetirementPart>,
    /// Requests by API action: sent, with a RequestId, errors.
    pub requests_by_api: BTreeMap<String, ApiCount>,
    /// Every request (the runs' attempts and the retirements' DeleteKeyPairs), in order.
    pub requests: Vec<RequestRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct KeySection {
    /// The leaked key ids (the keys the runs unbind).
    pub key_ids: Vec<String>,
    /// Their names, where a retirement read them.
    pub names: BTreeMap<String, String>,
    /// The public key's `SHA256:` fingerprint, as a retirement's listing of the key
    /// pairs read it (several, comma-separated, if the ids held different keys);
    /// `null` when no retirement was recorded.
    pub fingerprint: Option<String>,
    /// The rotation's new keys, if any.
    pub new_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunPart {
    pub run_id: i64,
    pub state: String,
    pub stop_reason: Option<String>,
    pub input_path: String,
    pub started: Option<String>,
    pub ended: Option<String>,
    /// Unbind pairs and bind pairs (a rotation) by status.
    pub pairs: BTreeMap<String, i64>,
    pub binds: BTreeMap<String, i64>,
    pub facts: IncidentFacts,
    /// A run over several accounts: each account's pairs (empty otherwise).
    pub accounts: Vec<keyfleet::store::AccountCounts>,
    /// A live run's power figures (stopped and started, downtime).
    pub power: Option<PowerCounts>,
    pub verified_at_utc: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TemplatePart {
    pub run_id: i64,
    #[serde(flatten)]
    pub change: TemplateChangeRow,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RetirementPart {
    pub run_id: Option<i64>,
    pub at: String,
    pub key_ids: Vec<String>,
    pub dry_run: bool,
    pub retired: bool,
    /// What `retire` found and did (verdicts, holds, DeleteKeyPairs RequestIds), or
    /// `{"error": ...}`.
    pub result: Value,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct ApiCount {
    pub sent: i64,
    pub with_request_id: i64,
    pub errors: i64,
}

/// Reads everything the report shows for `runs` (the newest when empty).
pub(crate) async fn gather(store: &Store, runs: &[i64]) -> anyhow::Result<IncidentReport> {
    let runs = if runs.is_empty() {
        vec![store.newest_run().await?]
    } else {
        runs.to_vec()
    };
    let mut key_ids = BTreeSet::new();
    let mut new_keys = BTreeSet::new();
    let mut run_details = Vec::new();
    let mut templates = Vec::new();
    let mut requests = Vec::new();
    let mut first_start: Option<i64> = None;
    let mut last_end: Option<i64> = None;
    for &run_id in &runs {
        let status: RunStatus = store.run_status(run_id).await?;
        let keys = store.run_keys(run_id).await?;
        key_ids.extend(keys.leaked);
        new_keys.extend(keys.new_keys);
        let facts = store.incident_facts(run_id).await?;
        let start = status.started_at.unwrap_or(status.created_at);
        first_start = Some(first_start.map_or(start, |s| s.min(start)));
        if let Some(end) = status.finished_at {
            last_end = Some(last_end.map_or(end, |e| e.max(end)));
        }
        requests.extend(facts.requests.iter().cloned());
        templates.extend(
            store
                .template_changes(run_id)
                .await?
                .into_iter()
                .map(|change| TemplatePart { run_id, change }),
        );
        run_details.push(RunPart {
            run_id,
            state: status.state.clone(),
            stop_reason: status.stop_reason.clone(),
            input_path: status.input_path.clone(),
            started: status.started_at.map(utc),
            ended: status.finished_at.map(utc),
            pairs: status.pairs.clone(),
            binds: status.binds.clone(),
            verified_at_utc: facts.verified_at.map(utc),
            facts,
            accounts: if store.run_accounts(run_id).await?.is_empty() {
                Vec::new()
            } else {
                store.account_counts(run_id).await?
            },
            power: store.power_counts(run_id).await?,
        });
    }
    let key_ids: Vec<String> = key_ids.into_iter().collect();
    let mut retirements = Vec::new();
    let mut seen_retirements = BTreeSet::new();
    let mut names = BTreeMap::new();
    let mut fingerprints = BTreeSet::new();
    for &run_id in &runs {
        for row in store
            .retirements_for(run_id, &key_ids, first_start.unwrap_or(0))
            .await?
        {
            if !seen_retirements.insert(row.id) {
                continue;
            }
            let result: Value = serde_json::from_str(&row.result).unwrap_or(Value::Null);
            for verdict in result["verdicts"].as_array().into_iter().flatten() {
                if let (Some(id), Some(name)) =
                    (verdict["key_id"].as_str(), verdict["key_name"].as_str())
                {
                    names.insert(id.to_string(), name.to_string());
                }
                if let Some(fingerprint) = verdict["fingerprint"].as_str() {
                    fingerprints.insert(fingerprint.to_string());
                }
            }
            for request_id in result["delete_request_ids"]
                .as_array()
                .into_iter()
                .flatten()
            {
                requests.push(RequestRecord {
                    run_id: row.run_id.unwrap_or(0),
                    job_id: 0,
                    action: "DeleteKeyPairs".into(),
                    region: String::new(),
                    account: row.account.clone(),
                    at: row.at,
                    outcome: Some("succeeded".into()),
                    request_id: request_id.as_str().map(str::to_string),
                    error_code: None,
                });
            }
            last_end = Some(last_end.map_or(row.at, |e| e.max(row.at)));
            retirements.push(RetirementPart {
                run_id: row.run_id,
                at: utc(row.at),
                key_ids: row.key_ids,
                dry_run: row.dry_run,
                retired: row.retired,
                result,
            });
        }
    }
    let mut requests_by_api: BTreeMap<String, ApiCount> = BTreeMap::new();
    for r in &requests {
        let count = requests_by_api.entry(r.action.clone()).or_default();
        count.sent += 1;
        count.with_request_id += i64::from(r.request_id.is_some());
        count.errors +=
            i64::from(r.error_code.is_some() || r.outcome.as_deref() != Some("succeeded"));
    }
    Ok(IncidentReport {
        runs,
        key: KeySection {
            key_ids,
            names,
            fingerprint: (!fingerprints.is_empty())
                .then(|| fingerprints.into_iter().collect::<Vec<_>>().join(", ")),
            new_keys: new_keys.into_iter().collect(),
        },
        started: first_start.map(utc),
        ended: last_end.map(utc),
        run_details,
        templates,
        retirements,
        requests_by_api,
        requests,
    })
}

fn counts(map: &BTreeMap<String, i64>) -> String {
    let parts: Vec<String> = map
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{n} {}", escape(k)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// What became of the key, in one line.
fn key_verdict(report: &IncidentReport) -> String {
    match report.retirements.iter().rev().find(|r| !r.dry_run) {
        Some(r) if r.retired => format!("retired {} (deleted, confirmed gone)", r.at),
        Some(r) => {
            if let Some(error) = r.result["error"].as_str() {
                return format!("NOT retired ({}): {}", r.at, escape(error));
            }
            let holds: Vec<String> = r.result["verdicts"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|v| v["holds"].as_array().cloned().unwrap_or_default())
                .map(|h| describe_hold(&h))
                .collect();
            format!("NOT retired ({}): held by {}", r.at, holds.join("; "))
        }
        None => "not retired: no `keyfleet retire` (or `run --retire`) recorded".into(),
    }
}

fn describe_hold(hold: &Value) -> String {
    let text = |k: &str| hold[k].as_str().unwrap_or("").to_string();
    match hold["hold"].as_str() {
        Some("instance") => format!("instance {} in {}", text("instance_id"), text("region")),
        Some("template") => format!("{} {}", text("kind"), text("id")),
        Some("templates_unknown") => format!("templates of {} not listed", text("region")),
        Some("in_use") => format!("DeleteKeyPairs refused it ({})", text("code")),
        _ => hold.to_string(),
    }
}

/// The Markdown report; its first screen (title to the key's fate) is what the demo shows.
pub(crate) fn markdown(report: &IncidentReport, requests_csv: Option<&str>) -> String {
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    let runs: Vec<String> = report.runs.iter().map(|r| r.to_string()).collect();
    line(format!("# Incident report: run {}", runs.join(", ")));
    line(String::new());
    let names: Vec<String> = report
        .key
        .key_ids
        .iter()
        .map(|k| match report.key.names.get(k) {
            Some(name) => format!("`{k}` ({})", escape(name)),
            None => format!("`{k}`"),
        })
        .collect();
    line(format!("- **Key:** {}", names.join(", ")));
    if let Some(fingerprint) = &report.key.fingerprint {
        line(format!("- **Fingerprint:** `{}`", escape(fingerprint)));
    }
    if !report.key.new_keys.is_empty() {
        line(format!(
            "- **Rotated to:** `{}`",
            report.key.new_keys.join("`, `")
        ));
    }
    line(format!(
        "- **From** {} **to** {} (UTC)",
        report.started.as_deref().unwrap_or("not started"),
        report.ended.as_deref().unwrap_or("not finished")
    ));
    let unbound: i64 = report
        .run_details
        .iter()
        .map(|r| r.facts.instances_unbound)
        .sum();
    let rotated: i64 = report
        .run_details
        .iter()
        .map(|r| r.facts.instances_rotated)
        .sum();
    let instances: i64 = report
        .run_details
        .iter()
        .flat_map(|r| r.facts.instances_by_region.values())
        .sum();
    line(format!(
        "- **Instances:** {instances} found holding it; {unbound} unbound, {rotated} given the new key"
    ));
    let mut verdicts: BTreeMap<String, i64> = BTreeMap::new();
    for r in &report.run_details {
        for (k, n) in &r.facts.verdicts {
            *verdicts.entry(k.clone()).or_default() += n;
        }
    }
    line(format!("- **Verification:** {}", counts(&verdicts)));
    let mut template_states: BTreeMap<String, i64> = BTreeMap::new();
    for t in &report.templates {
        *template_states
            .entry(t.change.state.to_string())
            .or_default() += 1;
    }
    line(format!(
        "- **Templates:** {} found; {}",
        report.templates.len(),
        counts(&template_states)
    ));
    line(format!("- **Key pair:** {}", key_verdict(report)));
    let sent: i64 = report.requests_by_api.values().map(|c| c.sent).sum();
    line(format!(
        "- **Requests:** {sent} ({} with a RequestId)",
        report
            .requests_by_api
            .values()
            .map(|c| c.with_request_id)
            .sum::<i64>()
    ));
    line(String::new());

    for r in &report.run_details {
        line(format!("## Run {}", r.run_id));
        line(String::new());
        line(format!(
            "- State: {}{}; input `{}`",
            r.state,
            r.stop_reason
                .as_deref()
                .map(|s| format!(" ({})", escape(s)))
                .unwrap_or_default(),
            escape(&r.input_path)
        ));
        line(format!(
            "- From {} to {} (UTC)",
            r.started.as_deref().unwrap_or("-"),
            r.ended.as_deref().unwrap_or("-")
        ));
        line(format!(
            "- Discovery: regions {}",
            counts(&r.facts.instances_by_region)
        ));
        if !r.facts.instances_by_state.is_empty() {
            line(format!(
                "- Instances by state: {}; by zone: {}",
                counts(&r.facts.instances_by_state),
                counts(&r.facts.instances_by_zone)
            ));
        }
        line(format!("- Unbind pairs: {}", counts(&r.pairs)));
        for account in &r.accounts {
            line(format!("  - {}", super::status::account_line(account)));
        }
        if r.binds.values().any(|n| *n > 0) {
            line(format!("- New-key pairs: {}", counts(&r.binds)));
        }
        if let Some(power) = &r.power {
            let down = power
                .downtime_s
                .map(|(p50, p95, max)| {
                    format!("; downtime p50 {p50:.1} s, p95 {p95:.1} s, max {max:.1} s")
                })
                .unwrap_or_default();
            line(format!(
                "- Stopped and started: {}, left stopped {}, budget {}{down}",
                power.by_state.get("up").copied().unwrap_or(0),
                power.left_stopped.len(),
                escape(&power.budget)
            ));
        }
        if !r.facts.skipped_by_reason.is_empty() {
            line(format!("- Skipped: {}", counts(&r.facts.skipped_by_reason)));
        }
        if !r.facts.failed_by_code.is_empty() {
            line(format!("- Failed: {}", counts(&r.facts.failed_by_code)));
        }
        line(format!(
            "- Verification: {} (last look {} UTC)",
            counts(&r.facts.verdicts),
            r.verified_at_utc.as_deref().unwrap_or("never")
        ));
        line(String::new());
    }

    if !report.templates.is_empty() {
        line("## Templates".into());
        line(String::new());
        line("| run | kind | id | name | version | region | default | keys before | keys after | state | new version | reason |".into());
        line("|---|---|---|---|---|---|---|---|---|---|---|---|".into());
        for t in &report.templates {
            let c = &t.change;
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                t.run_id,
                c.kind,
                c.template_id,
                cell(&c.name),
                c.version.map(|v| v.to_string()).unwrap_or_default(),
                c.region,
                c.was_default,
                c.keys_before.join(" "),
                c.keys_after
                    .as_ref()
                    .map(|k| k.join(" "))
                    .unwrap_or_default(),
                c.state,
                c.made_version.map(|v| v.to_string()).unwrap_or_default(),
                cell(c.reason.as_deref().unwrap_or(""))
            ));
        }
        line(String::new());
    }

    line("## Retirement".into());
    line(String::new());
    if report.retirements.is_empty() {
        line("No retirement recorded.".into());
    }
    for r in &report.retirements {
        let what = if r.dry_run {
            "dry run"
        } else if r.retired {
            "deleted and confirmed gone"
        } else {
            "not retired"
        };
        line(format!(
            "- {} UTC: `{}`: {what}",
            r.at,
            r.key_ids.join("`, `")
        ));
        if let Some(error) = r.result["error"].as_str() {
            line(format!("  - {}", escape(error)));
        }
        for v in r.result["verdicts"].as_array().into_iter().flatten() {
            for h in v["holds"].as_array().into_iter().flatten() {
                line(format!(
                    "  - {} held by {}",
                    v["key_id"].as_str().unwrap_or(""),
                    escape(&describe_hold(h))
                ));
            }
        }
        for id in r.result["delete_request_ids"]
            .as_array()
            .into_iter()
            .flatten()
        {
            line(format!(
                "  - DeleteKeyPairs RequestId `{}`",
                id.as_str().unwrap_or("")
            ));
        }
    }
    line(String::new());

    line("## Requests by API".into());
    line(String::new());
    line("| API | sent | with a RequestId | errors |".into());
    line("|---|---|---|---|".into());
    for (api, c) in &report.requests_by_api {
        line(format!(
            "| {api} | {} | {} | {} |",
            c.sent, c.with_request_id, c.errors
        ));
    }
    line(String::new());
    line("## Appendix: RequestIds".into());
    line(String::new());
    match requests_csv {
        Some(name) => line(format!(
            "Every request, with its RequestId, is in `{name}` ({} rows).",
            report.requests.len()
        )),
        None => line(
            "Every request, with its RequestId, is in the JSON format (`--format json`) or the \
             CSV written beside `--output FILE`."
                .into(),
        ),
    }
    md
}

/// A table cell: escaped, pipes and newlines taken out.
fn cell(text: &str) -> String {
    escape(text).replace('|', "/").replace('\n', " ")
}

/// The appendix as CSV: one row per request.
pub(crate) fn requests_csv(report: &IncidentReport) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut writer = csv::Writer::from_writer(&mut out);
        writer.write_record([
            "run_id",
            "job_id",
            "action",
            "region",
            "sent_at_utc",
            "outcome",
            "request_id",
            "error_code",
            "account",
        ])?;
        for r in &report.requests {
            writer.write_record([
                r.run_id.to_string(),
                r.job_id.to_string(),
                r.action.clone(),
                r.region.clone(),
                utc(r.at),
                r.outcome.clone().unwrap_or_default(),
                csv_cell(r.request_id.as_deref().unwrap_or("")).into_owned(),
                csv_cell(r.error_code.as_deref().unwrap_or("")).into_owned(),
                csv_cell(r.account.as_deref().unwrap_or("")).into_owned(),
            ])?;
        }
        writer.flush()?;
    }
    Ok(out)
}

/// Where the appendix CSV goes beside a Markdown report: `FILE.requests.csv`.
pub(crate) fn csv_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".requests.csv");
    path.with_file_name(name)
}
