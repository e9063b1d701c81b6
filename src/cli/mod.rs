//! One file per subcommand; each exposes `Args` and a `run` function. Shared by them:
//! `flags` (flag groups and value parsers), `common` (client and store setup), `term`
//! (`--quiet`, colour), `logging` (text or JSON events, `--log-file`), `signals`
//! (Ctrl-C, SIGTERM, SIGHUP), `progress`, `rates`, `verdict` (the final line), and
//! `docs` (completions and man pages from the same definitions).

pub mod call;
pub mod codes;
pub mod common;
pub mod demo;
pub mod discover;
pub mod docs;
pub mod flags;
pub mod incident;
pub mod incident_report;
pub mod live;
pub mod logging;
pub mod plan;
pub mod progress;
pub mod rates;
pub mod report;
pub mod retire;
pub mod run;
pub mod runs;
pub mod signals;
pub mod sim;
pub mod status;
pub mod term;
pub mod verdict;
pub mod verify;
