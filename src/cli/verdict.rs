//! The final one-line verdict of every command that changes the fleet (`run`,
//! `resume`, `retry`, `verify`; later `retire`): one shape, the outcome word first,
//! then the run's counts as the database holds them. Printed even with `--quiet`.
//!
//! `ok run 7: pairs 118 succeeded, 2 failed, 0 skipped, 1 rejected, 0 pending; verified gone 118 of 118`

use std::collections::BTreeMap;

use keyfleet::store::Store;

use super::term::{Env, paint};
use crate::exit;

/// The outcome word, from the exit code (and whether a signal asked for the stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Stopped,
    Interrupted,
    /// A live run left instances stopped (exit 5).
    LeftStopped,
}

impl Outcome {
    pub(crate) fn of(code: u8, interrupted: bool) -> Outcome {
        match code {
            exit::OK => Outcome::Ok,
            exit::STOPPED if interrupted => Outcome::Interrupted,
            exit::STOPPED => Outcome::Stopped,
            exit::LEFT_STOPPED => Outcome::LeftStopped,
            _ => Outcome::Failed,
        }
    }

    pub(crate) fn word(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Stopped => "stopped",
            Outcome::Interrupted => "interrupted",
            Outcome::LeftStopped => "left-stopped",
        }
    }

    /// SGR colour of the word on a terminal.
    fn colour(self) -> u8 {
        match self {
            Outcome::Ok => 32,
            Outcome::Failed | Outcome::LeftStopped => 31,
            Outcome::Stopped | Outcome::Interrupted => 33,
        }
    }
}

/// The counts a verdict shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Unbind pairs by status (`succeeded`, `failed`, ...).
    pub pairs: BTreeMap<String, i64>,
    /// A rotation's new keys by status; empty or all zero otherwise.
    pub binds: BTreeMap<String, i64>,
    /// Succeeded unbind pairs not verified gone (never verified, or still bound).
    pub not_gone: i64,
}

/// The verdict line, without colour. `resume` is the command that continues a
/// stopped run (`keyfleet --db X resume 7`).
pub(crate) fn line(outcome: Outcome, run_id: i64, counts: &Counts, resume: &str) -> String {
    let n = |map: &BTreeMap<String, i64>, key: &str| map.get(key).copied().unwrap_or(0);
    let mut text = format!(
        "{} run {run_id}: pairs {} succeeded, {} failed, {} skipped, {} rejected, {} pending; verified gone {} of {}",
        outcome.word(),
        n(&counts.pairs, "succeeded"),
        n(&counts.pairs, "failed"),
        n(&counts.pairs, "skipped"),
        n(&counts.pairs, "rejected"),
        n(&counts.pairs, "pending"),
        (n(&counts.pairs, "succeeded") - counts.not_gone).max(0),
        n(&counts.pairs, "succeeded"),
    );
    if counts.binds.values().any(|v| *v > 0) {
        text.push_str(&format!(
            "; new keys {} bound, {} failed, {} pending",
            n(&counts.binds, "succeeded"),
            n(&counts.binds, "failed"),
            n(&counts.binds, "pending"),
        ));
    }
    if matches!(outcome, Outcome::Stopped | Outcome::Interrupted) {
        text.push_str(&format!("; continue with: {resume}"));
    }
    text
}

/// Reads the run's counts and prints the verdict on stderr (with `--quiet` too). A
/// failed read leaves the counts out: the exit code still says it all. `again` is the
/// command that continues a stopped run (`resume`, or `verify` for a verification).
pub(crate) async fn print(
    store: &Store,
    run_id: i64,
    code: u8,
    global: &crate::GlobalArgs,
    again: &str,
) {
    let outcome = Outcome::of(code, super::signals::received());
    let resume = format!("keyfleet{} {again} {run_id}", super::run::db_flag(global));
    let counts = async {
        let status = store.run_status(run_id).await?;
        let verification = store.verification_counts(run_id).await?;
        Ok::<_, keyfleet::store::StoreError>(Counts {
            pairs: status.pairs,
            binds: status.binds,
            not_gone: verification.succeeded_not_gone,
        })
    }
    .await;
    let colour = Env::stderr().colour();
    let text = match counts {
        Ok(counts) => line(outcome, run_id, &counts, &resume),
        Err(error) => format!(
            "{} run {run_id} (counts could not be read: {})",
            outcome.word(),
            keyfleet::display::escape(&error.to_string())
        ),
    };
    // The word is ours; the rest holds nothing from outside but numbers.
    let (word, rest) = text.split_at(outcome.word().len());
    eprintln!("{}{rest}", paint(word, outcome.colour(), colour));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Counts {
        let map = |pairs: &[(&str, i64)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        Counts {
            pairs: map(&[("succeeded", 118), ("failed", 2), ("rejected", 1)]),
            binds: map(&[("succeeded", 0)]),
            not_gone: 3,
        }
    }

    #[test]
    fn the_outcome_word_comes_first_then_the_counts() {
        let text = line(Outcome::Failed, 7, &counts(), "keyfleet resume 7");
        assert_eq!(
            text,
            "failed run 7: pairs 118 succeeded, 2 failed, 0 skipped, 1 rejected, 0 pending; verified gone 115 of 118"
        );
        let stopped = line(
            Outcome::of(exit::STOPPED, true),
            7,
            &counts(),
            "keyfleet resume 7",
        );
        assert!(stopped.starts_with("interrupted run 7: pairs 118 succeeded"));
        assert!(stopped.ends_with("; continue with: keyfleet resume 7"));
        let mut rotation = counts();
        rotation.binds.insert("succeeded".into(), 5);
        assert!(
            line(Outcome::Ok, 7, &rotation, "").contains("; new keys 5 bound, 0 failed, 0 pending")
        );
    }

    #[test]
    fn each_exit_code_has_its_word() {
        assert_eq!(Outcome::of(exit::OK, false), Outcome::Ok);
        assert_eq!(Outcome::of(exit::FAILED, false), Outcome::Failed);
        assert_eq!(Outcome::of(exit::USAGE, false), Outcome::Failed);
        assert_eq!(Outcome::of(exit::STOPPED, false), Outcome::Stopped);
        assert_eq!(Outcome::of(exit::STOPPED, true), Outcome::Interrupted);
        assert_eq!(
            Outcome::of(exit::LEFT_STOPPED, false).word(),
            "left-stopped"
        );
    }
}
