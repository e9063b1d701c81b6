//! keyfleet: Tencent Cloud CVM key-pair unbinding across a whole fleet.
//!
//! # Layout
//!
//! Data flows one way: input -> plan -> store -> executor -> api -> Tencent Cloud
//! (or the simulator).
//!
//! - [`ids`]: the `ins-`/`skey-` id formats and region names, shared by every layer.
//! - [`secret`]: `Secret`, a string whose `Debug`/`Display` print `***`.
//! - [`sign`]: TC3-HMAC-SHA256 signing and verification, pure functions.
//! - [`taxonomy`]: every API error code -> `ErrorClass` (Retry, Throttle, Isolate, Fatal).
//! - [`store`]: the SQLite queue: runs, items (one per input pair), jobs, attempts.
//! - [`sim`]: the local CVM simulator (`keyfleet sim`): signatures, validation, batch
//!   semantics, instance states, rate limit and seeded faults over a real HTTP server.

pub mod ids;
pub mod secret;
pub mod sign;
pub mod sim;
pub mod store;
pub mod taxonomy;
