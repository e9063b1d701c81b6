//! Integration tests, compiled into one binary (one link instead of one per file).
//! Each area has its own module; shared fixtures live in `support`.

mod client;
mod plan;
mod run;
mod sim;
mod support;
mod torture;
