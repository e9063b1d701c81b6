//! `keyfleet status [RUN]`: where a run stands; `--watch`: a live view of it from any
//! other terminal while it runs.
//!
//! The watcher opens the database read-only ([`Store::open_read_only`]): it creates,
//! migrates and writes nothing, and WAL lets it read while the run commits, so it
//! never disturbs the run. Each interval it reads a [`Snapshot`] and draws it: a frame
//! redrawn in place on a terminal, one line otherwise, or one JSON object (the shape
//! of `status --json`) with `--json`. Once the run is finished (or stopped), and still
//! so 2 s later (a run's closing verification starts right after its unbinds finish),
//! it prints the final summary once and exits 0; Ctrl-C exits 0 too.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use keyfleet::display::escape;
use keyfleet::store::power::PowerCounts;
use keyfleet::store::rates::EndpointRate;
use keyfleet::store::report::RunStatus;
use keyfleet::store::verify::VerificationCounts;
use keyfleet::store::watch::RecentError;
use keyfleet::store::{Store, StoreError, Verified};

use super::flags;
use super::term::Env;
use crate::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run id; the newest run when omitted.
    run: Option<i64>,
    /// Print one JSON object instead of text (with --watch: one per interval, JSON Lines).
    #[arg(long)]
    json: bool,
    /// Keep showing the run until it is finished (or Ctrl-C): redrawn in place on a
    /// terminal, one line per interval otherwise. Reads only; never disturbs the run.
    #[arg(long)]
    watch: bool,
    /// How often --watch reads the database (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = flags::seconds, requires = "watch")]
    interval: Duration,
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC, for people.
pub(crate) fn utc(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Everything `status` shows about a run, read at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub status: RunStatus,
    pub verification: VerificationCounts,
    pub rates: Vec<EndpointRate>,
    /// The latest error replies, newest first ([`RECENT_ERRORS`] at most).
    pub recent_errors: Vec<RecentError>,
    /// A live run's instances by power state and its downtime budget; `None` otherwise.
    pub power: Option<PowerCounts>,
    /// A run over several accounts: each account's pairs; empty otherwise.
    pub accounts: Vec<keyfleet::store::AccountCounts>,
}

/// Error replies a snapshot keeps.
pub(crate) const RECENT_ERRORS: i64 = 5;

impl Snapshot {
    pub(crate) async fn read(store: &Store, run_id: i64) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            status: store.run_status(run_id).await?,
            verification: store.verification_counts(run_id).await?,
            rates: store.achieved_rates(run_id, None).await?,
            recent_errors: store.recent_errors(run_id, RECENT_ERRORS).await?,
            power: store.power_counts(run_id).await?,
            accounts: if store.run_accounts(run_id).await?.is_empty() {
                Vec::new()
            } else {
                store.account_counts(run_id).await?
            },
        })
    }

    /// The run has ended: nothing executes it now (finished, or stopped until resumed).
    pub(crate) fn ended(&self) -> bool {
        matches!(self.status.state.as_str(), "finished" | "stopped")
    }

    /// What `keyfleet verify` found, by verdict; `unverified` counts pairs never checked.
    fn verified(&self) -> BTreeMap<&'static str, i64> {
        let mut verified: BTreeMap<&str, i64> = Verified::ALL
            .iter()
            .map(|v| (v.as_str(), self.verification.get(*v)))
            .collect();
        verified.insert("unverified", self.verification.unverified);
        verified
    }

    /// `status --json`: the run status, its verification and its rates.
    pub(crate) fn to_json(&self) -> anyhow::Result<serde_json::Value> {
        let mut json = serde_json::to_value(&self.status)?;
        json["verification"] = serde_json::json!(self.verified());
        json["rates"] = serde_json::to_value(&self.rates)?;
        json["recent_errors"] = serde_json::to_value(&self.recent_errors)?;
        json["power"] = serde_json::to_value(&self.power)?;
        if !self.accounts.is_empty() {
            json["accounts"] = serde_json::to_value(&self.accounts)?;
        }
        Ok(json)
    }

    fn pair(&self, status: &str) -> i64 {
        self.status.pairs.get(status).copied().unwrap_or(0)
    }

    /// (done, total) valid pairs: done ones have an outcome (succeeded, failed, skipped).
    fn progress(&self) -> (i64, i64) {
        let done = self.pair("succeeded") + self.pair("failed") + self.pair("skipped");
        (done, done + self.pair("pending"))
    }

    fn jobs(&self, state: &str) -> i64 {
        self.status.jobs.get(state).copied().unwrap_or(0)
    }

    /// The full text of `status`, one line each.
    pub(crate) fn summary_lines(&self) -> Vec<String> {
        let status = &self.status;
        let mut out = vec![format!(
            "run {} ({}): {}",
            status.run_id,
            escape(&status.state),
            escape(&status.input_path)
        )];
        if let Some(reason) = &status.stop_reason {
            out.push(format!("  stopped because {}", escape(reason)));
        }
        // Instances left stopped come first: someone has to start them.
        out.extend(left_stopped_lines(self.power.as_ref()));
        out.push(format!("  pairs     {}", list(&status.pairs)));
        out.extend(
            self.accounts
                .iter()
                .map(|c| format!("    {}", account_line(c))),
        );
        if status.binds.values().any(|n| *n > 0) || status.held > 0 {
            out.push(format!("  new keys  {}", list(&status.binds)));
            out.push(format!(
                "  held      {} (unbinds waiting for their instance's new keys)",
                status.held
            ));
        }
        if let Some(power) = &self.power {
            out.push(budget_line(power));
        }
        out.push(format!("  jobs      {}", list(&status.jobs)));
        if status.jobs_by_action.len() > 1 {
            for (action, states) in &status.jobs_by_action {
                let states: BTreeMap<String, i64> = states
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(s, n)| (s.clone(), *n))
                    .collect();
                out.push(format!("    {:<30} {}", escape(action), list(&states)));
            }
        }
        let verified: BTreeMap<String, i64> = self
            .verified()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        out.push(format!("  verified  {}", list(&verified)));
        out.push(format!(
            "  requests  {} sent, {} throttled",
            status.requests, status.throttled
        ));
        if !self.rates.is_empty() {
            out.push("  rates     per API and access endpoint:".into());
            out.extend(super::rates::lines(&self.rates, "    "));
        }
        if !status.failures_by_code.is_empty() {
            out.push("  failed pairs by error code:".into());
            for (code, n) in &status.failures_by_code {
                out.push(format!("    {:<52} {n}", escape(code)));
            }
        }
        out.push(format!("  created   {}", utc(status.created_at)));
        if let Some(t) = status.started_at {
            out.push(format!("  started   {}", utc(t)));
        }
        if let Some(t) = status.finished_at {
            out.push(format!("  finished  {}", utc(t)));
        }
        if let Some(ms) = status.elapsed_ms {
            out.push(format!("  elapsed   {:.1} s", ms as f64 / 1000.0));
        }
        out
    }

    /// `--watch` off a terminal: one line per interval.
    pub(crate) fn watch_line(&self, now_ms: i64) -> String {
        let (done, total) = self.progress();
        format!(
            "{} run {} {}: {done}/{total} pairs ({:.1}%) · succeeded {} · failed {} · skipped {} · pending {} · in flight {} · requests {} · throttled {}",
            utc(now_ms),
            self.status.run_id,
            escape(&self.status.state),
            percent(done, total),
            self.pair("succeeded"),
            self.pair("failed"),
            self.pair("skipped"),
            self.pair("pending"),
            self.jobs("in_flight"),
            self.status.requests,
            self.status.throttled,
        )
    }

    /// `--watch` on a terminal: the frame redrawn each interval.
    ///
    /// One line per concern, each optional line its own block: a live fleet's downtime
    /// budget ("instances down now / budget, left stopped") becomes one more block,
    /// between the in-flight and the request lines, read into one more `Snapshot` field.
    pub(crate) fn frame(&self, now_ms: i64, interval: Duration) -> Vec<String> {
        let status = &self.status;
        let (done, total) = self.progress();
        let mut out = vec![
            // The input path last: on a narrow terminal the cut takes it, not the rest.
            format!(
                "run {} ({}) · {} UTC · every {:.1} s · Ctrl-C leaves · {}",
                status.run_id,
                escape(&status.state),
                utc(now_ms),
                interval.as_secs_f64(),
                escape(&status.input_path),
            ),
            format!(
                "  pairs     {} {:>5.1}% {done}/{total}",
                bar(done, total, BAR_WIDTH),
                percent(done, total),
            ),
            format!(
                "            succeeded {} · failed {} · skipped {} · pending {}",
                self.pair("succeeded"),
                self.pair("failed"),
                self.pair("skipped"),
                self.pair("pending"),
            ),
        ];
        if status.binds.values().any(|n| *n > 0) || status.held > 0 {
            out.push(format!(
                "  new keys  {} · held unbinds {}",
                list(&status.binds),
                status.held
            ));
        }
        out.push(format!(
            "  in flight {} requests · queued {} jobs",
            self.jobs("in_flight"),
            self.jobs("queued")
        ));
        if let Some(power) = &self.power {
            out.push(budget_line(power));
            if let Some(why) = &power.admissions {
                out.push(format!("            no more go down: {}", escape(why)));
            }
            out.extend(left_stopped_lines(Some(power)));
        }
        out.push(format!(
            "  requests  {} sent, {} throttled",
            status.requests, status.throttled
        ));
        out.extend(super::rates::lines(&self.rates, "    "));
        if !status.errors_by_code.is_empty() {
            let mut codes: Vec<(&String, &i64)> = status.errors_by_code.iter().collect();
            codes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let codes: Vec<String> = codes
                .iter()
                .take(FRAME_CODES)
                .map(|(code, n)| format!("{} {n}", escape(code)))
                .collect();
            out.push(format!("  errors    {}", codes.join(", ")));
        }
        if !status.failures_by_code.is_empty() {
            out.push(format!("  failed    {}", list(&status.failures_by_code)));
        }
        if !self.recent_errors.is_empty() {
            out.push("  latest errors:".into());
            for e in &self.recent_errors {
                out.push(format!(
                    "    {} {} {} job {}: {}{}",
                    super::rates::clock(e.at),
                    escape(&e.action),
                    escape(&e.region),
                    e.job_id,
                    escape(&e.code),
                    e.message
                        .as_deref()
                        .map(|m| format!(": {}", escape(m)))
                        .unwrap_or_default()
                ));
            }
        }
        let verified: BTreeMap<String, i64> = self
            .verified()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        out.push(format!("  verified  {}", list(&verified)));
        out
    }
}

/// How long a run must stay ended before `--watch` calls it over (see `watch_store`).
const END_GRACE: Duration = Duration::from_secs(2);

/// A live run's budget: down now against the budget, the peak, the states.
/// One account's pairs of a run over several accounts, one line (`status`, `run`).
pub(crate) fn account_line(counts: &keyfleet::store::AccountCounts) -> String {
    let p = &counts.pairs;
    format!(
        "account {:<20} {} succeeded, {} failed, {} skipped, {} rejected, {} pending",
        escape(keyfleet::ids::account_shown(counts.account.as_deref())),
        p.succeeded,
        p.failed,
        p.skipped,
        p.rejected,
        p.pending
    )
}

fn budget_line(power: &PowerCounts) -> String {
    format!(
        "  budget    down now {} (budget {}, most at once {}) · {}",
        power.down,
        escape(&power.budget),
        power.max_down,
        list(&power.by_state)
    )
}

/// `LEFT STOPPED` and each instance with why, or nothing.
fn left_stopped_lines(power: Option<&PowerCounts>) -> Vec<String> {
    let Some(power) = power.filter(|p| !p.left_stopped.is_empty()) else {
        return Vec::new();
    };
    let mut out = vec![format!(
        "  LEFT STOPPED {} instances (start them, or `keyfleet resume`):",
        power.left_stopped.len()
    )];
    out.extend(
        power
            .left_stopped
            .iter()
            .map(|(instance, why)| format!("    {} {}", escape(instance), escape(why))),
    );
    out
}

/// Width of the frame's pairs bar, in characters.
const BAR_WIDTH: usize = 30;
/// Error codes the frame lists, the most frequent first.
const FRAME_CODES: usize = 5;

fn percent(done: i64, total: i64) -> f64 {
    if total > 0 {
        done as f64 * 100.0 / total as f64
    } else {
        100.0
    }
}

/// `[#########.....]`, `width` characters inside the brackets.
fn bar(done: i64, total: i64, width: usize) -> String {
    let filled = if total > 0 {
        ((done.clamp(0, total) as f64 / total as f64) * width as f64).round() as usize
    } else {
        width
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn list(map: &BTreeMap<String, i64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{} {v}", escape(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    if args.watch {
        return watch(global, args).await;
    }
    let store = super::common::open_store(&global.db).await?;
    let snapshot = async {
        let run_id = store.resolve_run(args.run).await?;
        Snapshot::read(&store, run_id).await
    }
    .await;
    store.close().await;
    let snapshot = snapshot?;
    if args.json {
        println!("{}", snapshot.to_json()?);
    } else {
        for line in snapshot.summary_lines() {
            println!("{line}");
        }
    }
    Ok(crate::exit::OK)
}

/// How `--watch` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drawing {
    Json,
    Frame,
    Lines,
}

async fn watch(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let store = Store::open_read_only(&global.db).await?;
    let result = watch_store(&store, &args).await;
    store.close().await;
    result
}

async fn watch_store(store: &Store, args: &Args) -> anyhow::Result<u8> {
    let run_id = store.resolve_run(args.run).await?;
    let drawing = if args.json {
        Drawing::Json
    } else if Env::stdout().redraw() {
        Drawing::Frame
    } else {
        Drawing::Lines
    };
    let mut out = std::io::stdout().lock();
    let mut drawn = 0usize;
    let mut ended_since = None;
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut interrupt => {
                if drawing == Drawing::Frame {
                    writeln!(out)?;
                }
                return Ok(crate::exit::OK);
            }
        }
        let snapshot = Snapshot::read(store, run_id).await?;
        let now = keyfleet::store::now_ms();
        let ended = snapshot.ended();
        if ended {
            // `run` finishes its unbinds, then verifies (and may resend): the run is
            // `finished` for a moment between those phases. Only a run still ended after
            // the grace is over; until then nothing is drawn, so the end prints once.
            let since = *ended_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() < END_GRACE {
                continue;
            }
        } else {
            ended_since = None;
        }
        if drawing == Drawing::Frame && drawn > 0 {
            // Up to the frame's first line, then clear everything below.
            write!(out, "\x1b[{drawn}A\r\x1b[J")?;
        }
        match drawing {
            Drawing::Json => writeln!(out, "{}", snapshot.to_json()?)?,
            _ if ended => {
                for line in snapshot.summary_lines() {
                    writeln!(out, "{line}")?;
                }
            }
            Drawing::Frame => {
                let width = terminal_width();
                let lines = snapshot.frame(now, args.interval);
                drawn = lines.len();
                for line in lines {
                    writeln!(out, "{}", truncate(&line, width))?;
                }
            }
            Drawing::Lines => writeln!(out, "{}", snapshot.watch_line(now))?,
        }
        out.flush()?;
        if ended {
            return Ok(crate::exit::OK);
        }
    }
}

/// `line` cut to `width` characters, so that a frame line never wraps (wrapped lines
/// would throw off the count of lines to redraw).
fn truncate(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        line.to_string()
    } else {
        line.chars()
            .take(width.saturating_sub(1))
            .chain(['…'])
            .collect()
    }
}

/// Columns of the terminal on stdout (80 when it cannot be asked).
fn terminal_width() -> usize {
    #[cfg(unix)]
    {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a `winsize` into the pointer given, which is valid.
        let asked = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
        if asked == 0 && size.ws_col > 0 {
            return usize::from(size.ws_col);
        }
    }
    80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(state: &str, pairs: &[(&str, i64)]) -> Snapshot {
        let map = |entries: &[(&str, i64)]| {
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        Snapshot {
            status: RunStatus {
                run_id: 3,
                state: state.into(),
                stop_reason: None,
                input_path: "leaked.csv".into(),
                pairs: map(pairs),
                binds: BTreeMap::new(),
                held: 0,
                jobs: map(&[("in_flight", 2), ("queued", 5), ("succeeded", 7)]),
                jobs_by_action: BTreeMap::new(),
                failures_by_code: map(&[("InvalidInstanceId.NotFound", 1)]),
                requests: 12,
                throttled: 1,
                errors_by_code: map(&[
                    ("RequestLimitExceeded", 1),
                    ("InvalidInstanceId.NotFound", 1),
                    ("InternalError", 3),
                ]),
                created_at: 0,
                started_at: Some(0),
                finished_at: None,
                elapsed_ms: Some(1500),
            },
            verification: VerificationCounts::default(),
            rates: Vec::new(),
            recent_errors: vec![RecentError {
                at: 1_500,
                action: "DisassociateInstancesKeyPairs".into(),
                region: "ap-guangzhou".into(),
                code: "InternalError".into(),
                message: Some("try again\x1b[2J".into()),
                job_id: 17,
            }],
            power: None,
            accounts: Vec::new(),
        }
    }

    #[test]
    fn a_watch_line_holds_the_progress_and_the_counts() {
        let s = snapshot(
            "running",
            &[
                ("succeeded", 30),
                ("failed", 1),
                ("pending", 9),
                ("rejected", 2),
            ],
        );
        assert_eq!(
            s.watch_line(0),
            "1970-01-01 00:00:00 run 3 running: 31/40 pairs (77.5%) · succeeded 30 · failed 1 · \
             skipped 0 · pending 9 · in flight 2 · requests 12 · throttled 1"
        );
        assert!(!s.ended());
        assert!(snapshot("finished", &[]).ended());
        assert!(snapshot("stopped", &[]).ended());
        assert!(!snapshot("planned", &[]).ended());
    }

    #[test]
    fn a_frame_has_a_bar_in_flight_and_the_most_frequent_codes_first() {
        let s = snapshot("running", &[("succeeded", 15), ("pending", 15)]);
        let frame = s.frame(0, Duration::from_secs(2));
        assert!(
            frame[0].starts_with("run 3 (running) · 1970-01-01 00:00:00 UTC · every 2.0 s · Ctrl-C leaves · leaked.csv"),
            "{frame:?}"
        );
        assert!(
            frame[1].starts_with(&format!(
                "  pairs     [{}{}]  50.0% 15/30",
                "#".repeat(15),
                ".".repeat(15)
            )),
            "{frame:?}"
        );
        assert_eq!(
            frame[2],
            "            succeeded 15 · failed 0 · skipped 0 · pending 15"
        );
        assert!(frame.contains(&"  in flight 2 requests · queued 5 jobs".to_string()));
        assert!(
            frame.contains(
                &"  errors    InternalError 3, InvalidInstanceId.NotFound 1, RequestLimitExceeded 1"
                    .to_string()
            ),
            "{frame:?}"
        );
        assert!(
            frame.contains(
                &"    00:00:01.500 DisassociateInstancesKeyPairs ap-guangzhou job 17: InternalError: try again\\u{1b}[2J"
                    .to_string()
            ),
            "the latest errors, escaped: {frame:?}"
        );
        // No rotation, no new-keys line.
        assert!(!frame.iter().any(|l| l.contains("new keys")));
    }

    #[test]
    fn bars_and_truncation_keep_their_width() {
        assert_eq!(bar(0, 0, 4), "[####]");
        assert_eq!(bar(1, 4, 4), "[#...]");
        assert_eq!(bar(9, 4, 4), "[####]");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn the_json_of_a_snapshot_is_the_status_with_verification_and_rates() {
        let json = snapshot("finished", &[("succeeded", 2)]).to_json().unwrap();
        assert_eq!(json["run_id"], 3);
        assert_eq!(json["pairs"]["succeeded"], 2);
        assert_eq!(json["verification"]["unverified"], 0);
        assert!(json["rates"].as_array().unwrap().is_empty());
        assert_eq!(json["recent_errors"][0]["code"], "InternalError");
        assert!(json["power"].is_null(), "not a live run");
    }

    #[test]
    fn a_live_run_has_its_budget_line_and_left_stopped_instances_first() {
        let mut s = snapshot("running", &[("succeeded", 1), ("pending", 3)]);
        s.power = Some(PowerCounts {
            by_state: [("down".to_string(), 2), ("up".to_string(), 5)]
                .into_iter()
                .collect(),
            down: 2,
            max_down: 3,
            budget: "3".into(),
            left_stopped: vec![("ins-0000000a".into(), "StartInstances failed".into())],
            downtime_s: None,
            admissions: Some("an instance was left stopped".into()),
        });
        let frame = s.frame(0, Duration::from_secs(2));
        let budget = frame
            .iter()
            .position(|l| l.starts_with("  budget "))
            .unwrap();
        assert_eq!(
            frame[budget],
            "  budget    down now 2 (budget 3, most at once 3) · down 2, up 5"
        );
        assert_eq!(
            frame[budget + 1],
            "            no more go down: an instance was left stopped"
        );
        assert!(frame[budget + 2].starts_with("  LEFT STOPPED 1 instances"));
        assert_eq!(frame[budget + 3], "    ins-0000000a StartInstances failed");
        let summary = s.summary_lines();
        assert!(
            summary[1].starts_with("  LEFT STOPPED 1"),
            "named first: {summary:?}"
        );
        assert!(
            summary
                .iter()
                .any(|l| l.starts_with("  budget    down now 2"))
        );
        assert_eq!(s.to_json().unwrap()["power"]["down"], 2);
    }
}
