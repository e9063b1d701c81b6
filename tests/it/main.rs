//! Integration tests, compiled into one binary (one link instead of one per file).
//! Each area has its own module; shared fixtures live in `support`.

mod accounts;
mod accounts_discover;
mod accounts_run;
mod claims;
mod client;
mod database;
mod fuzz;
mod hardening;
mod hostile;
mod incident;
mod incident_report;
mod live;
mod pacing;
mod plan;
mod power;
mod regional;
mod report;
mod rotation;
mod run;
mod runbook;
mod security;
mod sim;
mod support;
mod templates;
mod terminal;
mod torture;
mod upgrade;
