//! One file per subcommand; each exposes `Args` and a `run` function.

pub mod call;
pub mod codes;
pub mod logging;
pub mod progress;
pub mod run;
pub mod sim;
pub mod plan;
pub mod report;
pub mod runs;
pub mod status;
