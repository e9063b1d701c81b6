//! Flags grouped by what they configure, and the value parsers every command shares.
//!
//! A group is flattened only into the commands where it acts, so a flag that would do
//! nothing is refused by clap ("unexpected argument") instead of silently ignored:
//!
//! | group         | configures                                  | flattened into                    |
//! |---------------|---------------------------------------------|-----------------------------------|
//! | [`PlanFlags`] | how an input becomes a run                  | `plan`, `run`                     |
//! | `live::LiveFlags` | RUNNING instances and the downtime budget | `plan`, `run`                   |
//! | [`SendFlags`] | one request: rate, retries, timeouts        | `run`, `resume`, `retry`, `verify`, `discover`, `demo` |
//! | [`QueueFlags`]| draining a run's queue: concurrency, stops  | `run`, `resume`, `retry`, `verify`, `demo` |
//! | [`VerifyFlags`]| the verification that closes an execution  | `run`, `resume`, `retry`, `demo`  |
//!
//! Every time flag takes one syntax ([`duration`]): `500ms`, `30s`, `2m`, fractions
//! allowed (`1.5s`); a bare number is in the flag's own unit, named in its help.

use std::time::Duration;

use keyfleet::executor::{ExecConfig, MaxErrors};

use super::progress;

/// The unit of a bare number given to a time flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareUnit {
    Millis,
    Seconds,
}

/// The longest time any time flag accepts: a typo (`30000` meant as ms) is refused, not obeyed.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses the one duration syntax: a number (fractions allowed) and a unit `ms`, `s`,
/// or `m`; a bare number is in `bare`.
pub(crate) fn duration(text: &str, bare: BareUnit) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 30s or 2m"))?;
    let seconds = match (unit.trim(), bare) {
        ("", BareUnit::Millis) | ("ms", _) => value / 1000.0,
        ("", BareUnit::Seconds) | ("s", _) => value,
        ("m", _) => value * 60.0,
        (other, _) => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s or m"
            ));
        }
    };
    let parsed =
        Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))?;
    if parsed > MAX_DURATION {
        return Err(format!("{text:?} is longer than 24 hours"));
    }
    Ok(parsed)
}

/// A time flag whose bare number is seconds, more than zero (timeouts, waits, budgets).
pub(crate) fn seconds(text: &str) -> Result<Duration, String> {
    let parsed = duration(text, BareUnit::Seconds)?;
    if parsed.is_zero() {
        return Err(format!("{text:?} must be more than 0"));
    }
    Ok(parsed)
}

/// A time flag whose bare number is milliseconds, zero allowed (the simulator's delays).
pub(crate) fn millis(text: &str) -> Result<Duration, String> {
    duration(text, BareUnit::Millis)
}

/// `--rate`: requests per second, more than 0 and at most 1000.
pub(crate) fn rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of requests per second"))?;
    if rate > 0.0 && rate <= 1000.0 {
        Ok(rate)
    } else {
        Err(format!(
            "--rate must be more than 0 and at most 1000, not {text}"
        ))
    }
}

/// `--format` of every file of rows keyfleet reads or writes: plan input (`plan`,
/// `run`) and discovery output (`discover`). One enum, one parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataFormat {
    Csv,
    Json,
    /// JSON Lines (`ndjson` is accepted too).
    #[value(alias = "ndjson")]
    Jsonl,
}

impl From<DataFormat> for keyfleet::input::Format {
    fn from(format: DataFormat) -> keyfleet::input::Format {
        match format {
            DataFormat::Csv => keyfleet::input::Format::Csv,
            DataFormat::Json => keyfleet::input::Format::Json,
            DataFormat::Jsonl => keyfleet::input::Format::Jsonl,
        }
    }
}

/// How an input becomes a run (`plan`, `run`); RUNNING instances have their own
/// group (`live::LiveFlags`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PlanFlags {
    /// Input format, when the extension does not say.
    #[arg(long, value_enum, ignore_case = true)]
    pub format: Option<DataFormat>,
    /// Refuse the whole input (write nothing, send nothing) if any row is rejected.
    #[arg(long)]
    pub strict: bool,
    /// Before unbinding, look at each instance (DescribeInstances) and skip, with the
    /// reason, the pairs whose removal would leave it with no key.
    #[arg(long)]
    pub keep_one_key: bool,
    /// The launch templates and launch configurations that hand out the run's keys
    /// (the CSV `discover --templates-output` wrote): each gets the run's new key in
    /// place of the leaked one (a rotation) or loses the leaked one where another
    /// remains, through the run's queue (docs/incident.md).
    #[arg(long, value_name = "FILE")]
    pub templates: Option<std::path::PathBuf>,
}

impl PlanFlags {
    /// The planner's options, with the region for rows that name none and the live
    /// settings (`live::LiveFlags::live`).
    pub(crate) fn options(
        &self,
        default_region: Option<String>,
        live: Option<keyfleet::rules::power::Live>,
    ) -> keyfleet::plan::PlanOptions {
        keyfleet::plan::PlanOptions {
            default_region,
            // `--force-stop` is `--running force-stop` now: the live settings carry it.
            force_stop: false,
            strict: self.strict,
            format: self.format.map(Into::into),
            keep_one_key: self.keep_one_key,
            live,
            account: None,
        }
    }
}

/// How one request is sent and retried (every command that calls the API from a queue
/// or a discovery).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SendFlags {
    /// Requests per second at most (the API allows 10); a small margin is kept under it.
    #[arg(long, default_value_t = 10.0, value_parser = rate)]
    pub rate: f64,
    /// Transient failures a job may have before its pairs fail with the last code.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,
    /// Time allowed for one request, reply included (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = seconds)]
    pub timeout: Duration,
    /// Time allowed to establish a connection (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = seconds)]
    pub connect_timeout: Duration,
}

/// How a run's queue is drained (every command that executes a queue).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct QueueFlags {
    /// Requests in flight at most.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Stop dispatching once this many pairs have failed (a count, or a percentage like 5%).
    #[arg(long, value_name = "N|P%")]
    pub max_errors: Option<MaxErrors>,
    /// How long every request may be throttled in a row before the run stops
    /// (resumable, exit 4): someone else may be using the account's limit (a bare
    /// number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = seconds)]
    pub throttle_budget: Duration,
    /// How to show progress on stderr.
    #[arg(long, value_enum, default_value_t = progress::Mode::Auto)]
    pub progress: progress::Mode,
}

/// The verification that closes an execution (`run`, `resume`, `retry`, `demo`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct VerifyFlags {
    /// Do not verify at the end (by default every pair is checked against the cloud's
    /// own state with DescribeInstances once the run finishes; see `keyfleet verify`).
    #[arg(long)]
    pub no_verify: bool,
    /// How long the closing verification keeps looking at instances still OPERATING
    /// (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = seconds)]
    pub verify_wait: Duration,
}

/// Everything that shapes an execution of a run's queue: the three groups above.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ExecFlags {
    #[command(flatten)]
    pub send: SendFlags,
    #[command(flatten)]
    pub queue: QueueFlags,
    #[command(flatten)]
    pub verify: VerifyFlags,
}

impl SendFlags {
    /// The executor's configuration for what this group sets (the rest default).
    pub(crate) fn exec_config(&self) -> ExecConfig {
        ExecConfig {
            rate: self.rate,
            max_attempts: self.max_attempts,
            ..ExecConfig::default()
        }
    }
}

impl ExecFlags {
    /// An execution of a queue that no closing verification follows (`verify` itself):
    /// `wait` is how long a look at an OPERATING instance goes on.
    pub(crate) fn without_verification(
        send: SendFlags,
        queue: QueueFlags,
        wait: Duration,
    ) -> ExecFlags {
        ExecFlags {
            send,
            queue,
            verify: VerifyFlags {
                no_verify: true,
                verify_wait: wait,
            },
        }
    }

    pub(crate) fn exec_config(&self) -> ExecConfig {
        ExecConfig {
            concurrency: self.queue.concurrency as usize,
            max_errors: self.queue.max_errors,
            throttle_budget: self.queue.throttle_budget,
            confirm_wait: self.verify.verify_wait,
            ..self.send.exec_config()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_duration_syntax_with_the_flags_own_bare_unit() {
        let ms = Duration::from_millis;
        for (text, bare, expected) in [
            ("500ms", BareUnit::Seconds, ms(500)),
            ("30s", BareUnit::Millis, ms(30_000)),
            ("2m", BareUnit::Seconds, ms(120_000)),
            ("90m", BareUnit::Seconds, ms(5_400_000)),
            ("1.5s", BareUnit::Seconds, ms(1500)),
            ("30", BareUnit::Seconds, ms(30_000)),
            ("250", BareUnit::Millis, ms(250)),
            (" 0.5 ", BareUnit::Seconds, ms(500)),
        ] {
            assert_eq!(duration(text, bare), Ok(expected), "{text}");
        }
        assert!(duration("fast", BareUnit::Seconds).is_err());
        assert!(
            duration("5d", BareUnit::Seconds)
                .unwrap_err()
                .contains("unit")
        );
        assert!(
            duration("1441m", BareUnit::Seconds)
                .unwrap_err()
                .contains("24 hours")
        );
        assert!(
            duration("5h", BareUnit::Seconds)
                .unwrap_err()
                .contains("unit")
        );
        assert!(seconds("0").unwrap_err().contains("more than 0"));
        assert_eq!(millis("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rate_is_bounded() {
        assert_eq!(rate("2.5"), Ok(2.5));
        assert!(rate("0").is_err());
        assert!(rate("1001").is_err());
        assert!(rate("x").is_err());
    }

    #[test]
    fn exec_config_takes_each_group() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            exec: ExecFlags,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--rate",
            "5",
            "--concurrency",
            "3",
            "--throttle-budget",
            "2m",
            "--verify-wait",
            "1500ms",
            "--timeout",
            "7",
        ])
        .unwrap();
        let config = cli.exec.exec_config();
        assert_eq!(config.rate, 5.0);
        assert_eq!(config.concurrency, 3);
        assert_eq!(config.throttle_budget, Duration::from_secs(120));
        assert_eq!(config.confirm_wait, Duration::from_millis(1500));
        assert_eq!(cli.exec.send.timeout, Duration::from_secs(7));
    }
}
