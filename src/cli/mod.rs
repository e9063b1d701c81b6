//! One file per subcommand; each exposes `Args` and a `run` function.

pub mod codes;
pub mod logging;
pub mod sim;
