//! Logging setup: tracing to stderr, level from `-v` or `RUST_LOG`, written
//! through the progress display so that log lines never tear the bars.

use std::sync::OnceLock;

use indicatif::MultiProgress;
use tracing_indicatif::writer::{IndicatifWriter, Stderr};
use tracing_subscriber::EnvFilter;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The process's one set of progress bars; log lines suspend them while printing.
pub fn bars() -> MultiProgress {
    BARS.get_or_init(MultiProgress::new).clone()
}

/// Installs the global subscriber. Logs go to stderr; machine output owns stdout.
pub fn init(verbose: u8) {
    let default = match verbose {
        // sqlx warns about slow statements (a busy lock, a large plan): noise to an operator.
        0 => "warn,sqlx=error",
        1 => "keyfleet=info",
        2 => "keyfleet=debug",
        _ => "keyfleet=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(IndicatifWriter::<Stderr>::new(bars()))
        .try_init();
}
