//! One file per subcommand; each exposes `Args` and a `run` function.

pub mod call;
pub mod codes;
pub mod common;
pub mod demo;
pub mod discover;
pub mod incident;
pub mod live;
pub mod logging;
pub mod plan;
pub mod progress;
pub mod rates;
pub mod report;
pub mod retire;
pub mod run;
pub mod runs;
pub mod sim;
pub mod status;
pub mod verify;
