//! The live display of an execution on stderr: bars on a terminal, a summary
//! line every few seconds elsewhere, or nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keyfleet::executor::Counters;
use tokio::sync::oneshot;

use super::term::Env;

/// `--progress` (`--quiet` means `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Bars when stderr is a terminal (not `TERM=dumb`), plain lines otherwise.
    Auto,
    Bar,
    Plain,
    None,
}

const BAR_REFRESH: Duration = Duration::from_millis(200);
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// A running display; [`Display::finish`] draws the last state and removes it.
pub(crate) struct Display {
    done: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    pub(crate) fn start(mode: Mode, counters: Arc<Counters>) -> Display {
        let terminal = Env::stderr();
        let mode = match mode {
            _ if super::term::quiet() => Mode::None,
            Mode::Auto if terminal.redraw() => Mode::Bar,
            Mode::Auto => Mode::Plain,
            other => other,
        };
        let (done, rx) = oneshot::channel();
        let task = match mode {
            Mode::Bar => Some(tokio::spawn(bars(counters, rx, terminal.colour()))),
            Mode::Plain => Some(tokio::spawn(plain(counters, rx))),
            Mode::None | Mode::Auto => None,
        };
        Display {
            done: Some(done),
            task,
        }
    }

    pub(crate) async fn finish(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

struct Snapshot {
    total: u64,
    done: u64,
    succeeded: u64,
    failed: u64,
    retrying: u64,
    in_flight: u64,
    throttled: u64,
    requests: u64,
}

impl Snapshot {
    fn of(c: &Counters) -> Snapshot {
        let succeeded = Counters::get(&c.succeeded);
        let failed = Counters::get(&c.failed);
        Snapshot {
            total: Counters::get(&c.total_pairs),
            done: succeeded + failed,
            succeeded,
            failed,
            retrying: Counters::get(&c.retrying),
            in_flight: Counters::get(&c.in_flight),
            throttled: Counters::get(&c.throttled),
            requests: Counters::get(&c.requests),
        }
    }

    fn counters_line(&self) -> String {
        format!(
            "succeeded {} · failed {} · retrying {} · in flight {} · throttled {}",
            self.succeeded, self.failed, self.retrying, self.in_flight, self.throttled
        )
    }
}

fn rate(requests: u64, since: Instant) -> f64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 {
        requests as f64 / secs
    } else {
        0.0
    }
}

async fn bars(counters: Arc<Counters>, mut done: oneshot::Receiver<()>, colour: bool) {
    let multi = super::logging::bars();
    multi.set_draw_target(ProgressDrawTarget::stderr());
    let bar = multi.add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template(if colour {
            "{wide_bar:.cyan/blue} {pos}/{len} pairs {percent:>3}% · {msg} · ETA {eta}"
        } else {
            "{wide_bar} {pos}/{len} pairs {percent:>3}% · {msg} · ETA {eta}"
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let line = multi.add(ProgressBar::new_spinner());
    line.set_style(
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let since = Instant::now();
    let mut tick = tokio::time::interval(BAR_REFRESH);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut done => true,
        };
        let now = Snapshot::of(&counters);
        bar.set_length(now.total);
        bar.set_position(now.done);
        bar.set_message(format!("{:.1} req/s", rate(now.requests, since)));
        line.set_message(now.counters_line());
        if last {
            bar.finish();
            line.finish();
            multi.remove(&bar);
            multi.remove(&line);
            eprintln!("{}/{} pairs · {}", now.done, now.total, now.counters_line());
            return;
        }
    }
}

async fn plain(counters: Arc<Counters>, mut done: oneshot::Receiver<()>) {
    let since = Instant::now();
    let mut tick = tokio::time::interval(PLAIN_EVERY);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut done => true,
        };
        let now = Snapshot::of(&counters);
        let percent = if now.total > 0 {
            now.done as f64 * 100.0 / now.total as f64
        } else {
            100.0
        };
        eprintln!(
            "progress: {}/{} pairs ({percent:.1}%) · {} · {:.1} req/s",
            now.done,
            now.total,
            now.counters_line(),
            rate(now.requests, since)
        );
        if last {
            return;
        }
    }
}
