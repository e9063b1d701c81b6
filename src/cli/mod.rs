//! One file per subcommand; each exposes `Args` and a `run` function.

pub mod codes;
pub mod logging;
pub mod plan;
pub mod report;
pub mod runs;
pub mod status;
