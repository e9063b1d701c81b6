//! The live-fleet flags of `run` and `plan`: what to do with RUNNING instances, and
//! the downtime budget (`keyfleet::rules::power`).

use std::time::Duration;

use keyfleet::cvm::StopType;
use keyfleet::rules::power::{Budget, Live, Per, Running};

/// `--running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RunningMode {
    /// Never stop anything: a RUNNING instance's pairs fail with the API's refusal.
    Fail,
    /// Stop each RUNNING instance (within the budget), change its keys, start it again.
    StopStart,
    /// Send the key requests of RUNNING instances with ForceStop=true (within the
    /// budget); start any the cloud leaves STOPPED.
    ForceStop,
}

/// `--stop-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StopTypeArg {
    /// Shut the OS down (it can fail: the instance stays RUNNING, its pairs fail).
    Soft,
    /// Soft first, forced off if the soft shutdown fails.
    SoftFirst,
    /// Power off at once (the documentation warns of data loss).
    Hard,
}

/// Flags for RUNNING instances (`run`, `plan`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LiveFlags {
    /// What to do with instances found RUNNING (the key APIs refuse them unless stopped).
    #[arg(long, value_enum, default_value_t = RunningMode::Fail)]
    pub running: RunningMode,
    /// Alias of `--running force-stop`.
    #[arg(long, conflicts_with = "running")]
    pub force_stop: bool,
    /// At most this many instances down at once: a count, or a percentage of the
    /// instances found RUNNING (rounded down, at least 1). Required with
    /// `--running stop-start|force-stop`.
    #[arg(long, value_name = "N|P%")]
    pub max_down: Option<Budget>,
    /// Apply the budget to each availability zone (`zone`) or each value of an
    /// instance tag (`tag:KEY`) instead of the whole fleet.
    #[arg(long, value_name = "zone|tag:KEY", requires = "max_down")]
    pub max_down_per: Option<Per>,
    /// How long an instance keeps its slot after it is RUNNING again (e.g. 30s), so a
    /// service rejoins its load balancer before the next one goes.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_warmup)]
    pub warmup: Duration,
    /// How StopInstances stops (StoppedMode is always KEEP_CHARGING).
    #[arg(long, value_enum, default_value_t = StopTypeArg::Soft)]
    pub stop_type: StopTypeArg,
    /// The first N instances go through the whole cycle before any other is stopped;
    /// the run goes on only if they came back (default 1 when stopping).
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
}

impl LiveFlags {
    /// The live settings a plan carries, or `None` (`--running fail`).
    pub(crate) fn live(&self) -> anyhow::Result<Option<Live>> {
        let running = match (self.running, self.force_stop) {
            (_, true) | (RunningMode::ForceStop, _) => Running::ForceStop,
            (RunningMode::StopStart, _) => Running::StopStart,
            (RunningMode::Fail, false) => {
                if self.max_down.is_some() {
                    anyhow::bail!(
                        "--max-down limits instances that keyfleet stops: add --running stop-start \
                         (or force-stop)"
                    );
                }
                return Ok(None);
            }
        };
        let Some(max_down) = self.max_down else {
            anyhow::bail!(
                "--running {} stops RUNNING instances: say how many may be down at once with \
                 --max-down N or --max-down P% (of the instances found RUNNING)",
                match running {
                    Running::StopStart => "stop-start",
                    Running::ForceStop => "force-stop (or --force-stop)",
                }
            );
        };
        Ok(Some(Live {
            running,
            max_down,
            per: self.max_down_per.clone(),
            warmup_ms: self.warmup.as_millis() as i64,
            stop_type: match self.stop_type {
                StopTypeArg::Soft => StopType::Soft,
                StopTypeArg::SoftFirst => StopType::SoftFirst,
                StopTypeArg::Hard => StopType::Hard,
            },
            canary: self.canary.unwrap_or(1),
        }))
    }
}

/// `--warmup`: the one duration syntax (`super::flags::duration`), a bare number of
/// seconds; 0 for none, at most one hour.
fn parse_warmup(text: &str) -> Result<Duration, String> {
    let warmup = super::flags::duration(text, super::flags::BareUnit::Seconds)?;
    if warmup > Duration::from_secs(3600) {
        return Err(format!("{text} must be between 0 and one hour"));
    }
    Ok(warmup)
}
