//! One file per subcommand; each exposes `Args` and a `run` function. Shared by them:
//! `flags` (flag groups and value parsers), `common` (client and store setup), `term`
//! (`--quiet`, colour), `logging` (text or JSON events, `--log-file`), `signals`
//! (Ctrl-C, SIGTERM, SIGHUP), `progress`, `rates`, `verdict` (the final line), and
//! `docs` (completions and man pages from the same definitions).

pub(crate) mod call;
pub(crate) mod codes;
pub(crate) mod common;
pub(crate) mod demo;
pub(crate) mod discover;
pub(crate) mod docs;
pub(crate) mod flags;
pub(crate) mod incident;
pub(crate) mod incident_report;
pub(crate) mod live;
pub(crate) mod logging;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod rates;
pub(crate) mod report;
pub(crate) mod retire;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod signals;
pub(crate) mod sim;
pub(crate) mod status;
pub(crate) mod term;
pub(crate) mod verdict;
pub(crate) mod verify;
