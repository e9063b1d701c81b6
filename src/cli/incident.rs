//! What `discover` and `retire` share to close an incident: reading the leaked public
//! key or fingerprint, the limiter, and showing the templates that hand a key out.

use std::path::Path;
use std::sync::Arc;

use keyfleet::display::{csv_cell, escape};
use keyfleet::incident::{KeyHunt, TemplateHolder, TemplateScan};
use keyfleet::pubkey::{Fingerprint, KeyMatcher, PublicKey};
use keyfleet::store::Store;

/// The key `--public-key FILE` or `--fingerprint SHA256:...` describes; the error
/// names the flag, the file and the problem (never the file's content).
pub(crate) fn matcher(
    public_key: Option<&Path>,
    fingerprint: Option<&str>,
) -> Result<Option<KeyMatcher>, String> {
    if let Some(path) = public_key {
        let shown = escape(&path.display().to_string()).into_owned();
        let text = std::fs::read(path)
            .map_err(|err| format!("--public-key {shown}: cannot read it: {err}"))?;
        let text = String::from_utf8(text).map_err(|_| {
            format!("--public-key {shown}: it is not text (an OpenSSH public key is)")
        })?;
        let key = PublicKey::parse(&text)
            .map_err(|err| format!("--public-key {shown}: {}", escape(&err.to_string())))?;
        return Ok(Some(KeyMatcher::Key(key)));
    }
    if let Some(text) = fingerprint {
        let fingerprint = Fingerprint::parse(text)
            .map_err(|err| format!("--fingerprint: {}", escape(&err.to_string())))?;
        return Ok(Some(KeyMatcher::Fingerprint(fingerprint)));
    }
    Ok(None)
}

/// The limiter of discovery and retirement: the database's shared slots, so they stay
/// inside the limit beside a run on the same database; none at `--rate 0`.
pub(crate) async fn limiter(
    store: &Store,
    rate: f64,
) -> anyhow::Result<Arc<dyn keyfleet::executor::Limiter>> {
    Ok(if rate > 0.0 {
        Arc::new(keyfleet::executor::DbLimiter::open(store, rate).await?)
    } else {
        Arc::new(keyfleet::executor::LocalLimiter::new(0.0))
    })
}

/// The key pairs found for a public key, on stderr.
pub(crate) fn summarize_hunt(hunt: &KeyHunt, matcher: &KeyMatcher) {
    let names: Vec<String> = hunt
        .matched
        .iter()
        .map(|k| format!("{} ({})", k.key_id, escape(&k.key_name)))
        .collect();
    eprintln!(
        "public key {}: held by {} of the account's {} key pairs: {}",
        matcher.fingerprint(),
        hunt.matched.len(),
        hunt.listed,
        names.join(", ")
    );
}

/// One holder as a line: `launch_template lt-... (name) version 3 in REGION, default: KEYS`.
pub(crate) fn describe_holder(t: &TemplateHolder) -> String {
    let version = t
        .version
        .map(|v| format!(" version {v}"))
        .unwrap_or_default();
    let default = if t.version.is_some() && t.default {
        ", the default"
    } else {
        ""
    };
    format!(
        "{} {} ({}){version} in {}{default}: hands out {}",
        t.kind.as_str(),
        t.id,
        escape(&t.name),
        t.region,
        t.keys.join(" ")
    )
}

/// The `templates` lines on stderr.
pub(crate) fn summarize_templates(scan: &TemplateScan, keys: &[String]) {
    for (region, code, message) in &scan.failed {
        eprintln!(
            "templates: {region}: INCOMPLETE ({}: {}); launch templates or configurations there are not listed",
            escape(code),
            escape(message)
        );
    }
    if scan.holders.is_empty() {
        eprintln!(
            "templates: no launch template version or launch configuration in the {} regions scanned hands out {}",
            scan.regions.len(),
            keys.join(", ")
        );
        return;
    }
    eprintln!(
        "templates: {} hand out {} (new instances launched from them get the key):",
        scan.holders.len(),
        keys.join(", ")
    );
    for holder in &scan.holders {
        eprintln!("  {}", describe_holder(holder));
    }
}

/// The templates CSV: kind,id,name,version,region,default,keys (keys space-separated).
pub(crate) fn render_templates(scan: &TemplateScan) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = csv::Writer::from_writer(&mut out);
    writer.write_record(["kind", "id", "name", "version", "region", "default", "keys"])?;
    for t in &scan.holders {
        writer.write_record([
            t.kind.as_str().to_string(),
            csv_cell(&t.id).into_owned(),
            csv_cell(&t.name).into_owned(),
            t.version.map(|v| v.to_string()).unwrap_or_default(),
            csv_cell(&t.region).into_owned(),
            t.default.to_string(),
            csv_cell(&t.keys.join(" ")).into_owned(),
        ])?;
    }
    writer.flush()?;
    drop(writer);
    Ok(out)
}

/// `run --templates FILE` / `plan --templates FILE`: the run's changes of the templates
/// the file lists (the CSV `discover --templates-output` wrote), recorded and their
/// looks queued with the run's jobs. The leaked keys are the keys the run unbinds; the
/// rotation target is the new key the run binds (one at most: templates get one). A run
/// that has its changes already keeps them (resumed with the same command).
pub(crate) async fn plan_templates(store: &Store, run_id: i64, path: &Path) -> anyhow::Result<()> {
    use keyfleet::rules::template;
    use keyfleet::states::TemplateState;

    let shown = escape(&path.display().to_string()).into_owned();
    let text = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("--templates {shown}: cannot read it: {err}"))?;
    let holders = keyfleet::incident::read_templates_csv(&text, &shown)
        .map_err(|err| anyhow::anyhow!("--templates {}", escape(&err.to_string())))?;
    let keys = store.run_keys(run_id).await?;
    if keys.new_keys.len() > 1 {
        anyhow::bail!(
            "--templates: run {run_id} binds {} different new keys ({}): a template gets one; \
             plan the templates with a run that rotates to one key",
            keys.new_keys.len(),
            keys.new_keys.join(", ")
        );
    }
    let mut planned = Vec::new();
    let mut ignored = 0;
    for holder in &holders {
        match template::plan(run_id, holder, &keys.leaked, &keys.new_keys) {
            Some(p) => planned.push(p),
            None => ignored += 1,
        }
    }
    if !store.add_template_changes(run_id, &planned).await? {
        crate::note!("run {run_id}: its template changes are planned already: continuing them");
        return Ok(());
    }
    let kept = planned
        .iter()
        .filter(|p| p.state == TemplateState::Kept)
        .count();
    crate::note!(
        "templates: {} to change ({}), {kept} kept{}",
        planned.len() - kept,
        if keys.new_keys.is_empty() {
            "the leaked key removed".to_string()
        } else {
            format!("the leaked key replaced by {}", keys.new_keys.join(" "))
        },
        if ignored > 0 {
            format!(", {ignored} rows name none of the run's keys (ignored)")
        } else {
            String::new()
        }
    );
    for p in planned.iter().filter(|p| p.state == TemplateState::Kept) {
        crate::note!(
            "  kept {}: {}",
            describe_holder(&p.holder),
            p.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// A run's template changes on stderr: one line of counts, then each one not changed.
pub(crate) fn print_template_changes(changes: &[keyfleet::store::templates::TemplateChangeRow]) {
    use keyfleet::states::TemplateState;
    if changes.is_empty() {
        return;
    }
    let count = |state: TemplateState| changes.iter().filter(|c| c.state == state).count();
    eprintln!(
        "  templates: {} changed, {} kept (only key), {} unchanged, {} failed, {} not finished",
        count(TemplateState::Changed),
        count(TemplateState::Kept),
        count(TemplateState::Unchanged),
        count(TemplateState::Failed),
        count(TemplateState::Pending)
    );
    for c in changes.iter().filter(|c| c.state != TemplateState::Changed) {
        let version = c
            .version
            .map(|v| format!(" version {v}"))
            .unwrap_or_default();
        eprintln!(
            "    {} {} {} ({}){version} in {}: {}",
            c.state,
            c.kind,
            c.template_id,
            escape(&c.name),
            c.region,
            escape(c.reason.as_deref().unwrap_or(""))
        );
    }
}
