//! The operator's terminal conventions, decided once per process: `--quiet`, colour
//! (only on a terminal, never with `NO_COLOR` or `TERM=dumb`), redrawing in place.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Records `--quiet` for the whole process (before anything is printed).
pub(crate) fn init(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// `--quiet`: only errors and the final verdict line are printed.
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints a human line on stderr unless `--quiet`; errors and warnings use `eprintln!`.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::cli::term::quiet() {
            eprintln!($($arg)*);
        }
    };
}

/// What the environment says about a stream that is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Env {
    /// The stream is a terminal.
    pub tty: bool,
    /// `NO_COLOR` is set to a non-empty value (no-color.org).
    pub no_color: bool,
    /// `TERM=dumb`: no colour, no cursor movement.
    pub dumb: bool,
}

impl Env {
    fn read(tty: bool) -> Env {
        Env {
            tty,
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            dumb: std::env::var_os("TERM").is_some_and(|t| t == "dumb"),
        }
    }

    /// The environment for stderr (progress, summaries, the verdict).
    pub(crate) fn stderr() -> Env {
        Env::read(std::io::stderr().is_terminal())
    }

    /// The environment for stdout (`status --watch`).
    pub(crate) fn stdout() -> Env {
        Env::read(std::io::stdout().is_terminal())
    }

    /// Colour escapes may be written.
    pub(crate) fn colour(self) -> bool {
        self.tty && !self.no_color && !self.dumb
    }

    /// The cursor may be moved to redraw in place.
    pub(crate) fn redraw(self) -> bool {
        self.tty && !self.dumb
    }
}

/// `text` in bold `colour` (an SGR code such as 32 for green) when `on`, plain otherwise.
pub(crate) fn paint(text: &str, colour: u8, on: bool) -> String {
    if on {
        format!("\x1b[1;{colour}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color_or_dumb() {
        let tty = Env {
            tty: true,
            no_color: false,
            dumb: false,
        };
        assert!(tty.colour() && tty.redraw());
        assert!(!Env { tty: false, ..tty }.colour());
        assert!(!Env { tty: false, ..tty }.redraw());
        assert!(
            !Env {
                no_color: true,
                ..tty
            }
            .colour()
        );
        assert!(
            Env {
                no_color: true,
                ..tty
            }
            .redraw()
        );
        assert!(!Env { dumb: true, ..tty }.colour());
        assert!(!Env { dumb: true, ..tty }.redraw());
        assert_eq!(paint("ok", 32, false), "ok");
        assert_eq!(paint("ok", 32, true), "\x1b[1;32mok\x1b[0m");
    }
}
