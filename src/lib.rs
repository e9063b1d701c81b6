//! keyfleet: Tencent Cloud CVM key-pair unbinding across a whole fleet.
//!
//! # Layout
//!
//! Data flows one way: input -> plan -> store -> executor -> api -> Tencent Cloud
//! (or the simulator).
//!
//! - [`input`]: reads CSV, JSON and JSON Lines into rows, streamed, hashed (SHA-256).
//! - [`plan`]: validates rows, folds duplicates, chunks pairs into <= 100 x 100 jobs, writes the run.
//! - [`ids`]: the `ins-`/`skey-` id formats and region names, shared by every layer.
//! - [`secret`]: `Secret`, a string whose `Debug`/`Display` print `***`.
//! - [`sign`]: TC3-HMAC-SHA256 signing and verification, pure functions.
//! - [`taxonomy`]: every API error code -> `ErrorClass` (Retry, Throttle, Isolate, Fatal).
//! - [`store`]: the SQLite queue: runs, items (one per input pair), jobs, attempts;
//!   `store::plan` writes a plan in one transaction, `store::report` reads runs back.

pub mod ids;
pub mod input;
pub mod plan;
pub mod secret;
pub mod sign;
pub mod store;
pub mod taxonomy;
