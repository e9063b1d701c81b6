//! The signals that ask keyfleet to stop: Ctrl-C (SIGINT), and SIGTERM and SIGHUP as a
//! service manager or a closed terminal sends them. All three mean the same: no new
//! request starts, the replies in flight are recorded, the run stays resumable.

use std::sync::atomic::{AtomicBool, Ordering};

static RECEIVED: AtomicBool = AtomicBool::new(false);

/// A stop request was received during this process (the verdict says "interrupted").
pub(crate) fn received() -> bool {
    RECEIVED.load(Ordering::Relaxed)
}

/// Listens for SIGINT, SIGTERM and SIGHUP from now on.
pub(crate) struct Stops {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Stops {
    /// Installs the handlers; from now on these signals no longer end the process at
    /// once (the caller decides). A handler that cannot be installed (only without the
    /// runtime's signal driver, which keyfleet's runtime enables) leaves that signal's
    /// default.
    pub(crate) fn listen() -> Stops {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Stops {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Stops {}
    }

    /// Waits for the next stop request; returns the signal's name (`SIGINT`, ...).
    pub(crate) async fn next(&mut self) -> Option<&'static str> {
        #[cfg(unix)]
        let name = tokio::select! {
            result = tokio::signal::ctrl_c() => result.ok().map(|()| "SIGINT"),
            Some(()) = recv(&mut self.term) => Some("SIGTERM"),
            Some(()) = recv(&mut self.hup) => Some("SIGHUP"),
        };
        #[cfg(not(unix))]
        let name = tokio::signal::ctrl_c().await.ok().map(|()| "SIGINT");
        if name.is_some() {
            RECEIVED.store(true, Ordering::Relaxed);
        }
        name
    }
}

/// The next delivery of `signal`; never, when it has no handler.
#[cfg(unix)]
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}
