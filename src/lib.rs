//! keyfleet: Tencent Cloud CVM key-pair unbinding across a whole fleet.
//!
//! # Layout
//!
//! Data flows one way: input -> plan -> store -> executor -> api -> Tencent Cloud
//! (or the simulator).
//!
//! - [`input`]: reads CSV, JSON and JSON Lines into rows, streamed, hashed (SHA-256).
//! - [`plan`]: validates rows, folds duplicates, chunks pairs into <= 100 x 100 jobs, writes the run.
//! - [`cvm`]: the API's vocabulary: service, version, endpoint, each action's name and rate.
//! - [`ids`]: the `ins-`/`skey-` id formats and region names, shared by every layer.
//! - [`secret`]: `Secret`, a string whose `Debug`/`Display` print `***`, zeroized on drop.
//! - [`sign`]: TC3-HMAC-SHA256 signing and verification, pure functions.
//! - [`taxonomy`]: every API error code -> `ErrorClass` (Retry, Throttle, Isolate, Fatal).
//! - [`credentials`]: where the SecretId/SecretKey and the region come from (env, tccli, INI).
//! - [`api`]: `CvmClient`, the signed HTTP client for the CVM API and its error types:
//!   the key-pair actions and the reads (DescribeInstances pages, DescribeKeyPairs,
//!   DescribeRegions).
//! - [`store`]: the SQLite queue: runs, items (one per input pair), jobs, attempts;
//!   `store::plan` writes a plan in one transaction, `store::report` reads runs back,
//!   `store::queue` holds the executor's lease, claims and group-committed outcomes;
//!   `store::pacer` the shared send slots (one row per limiter key, `synchronous=NORMAL`);
//!   before SQLite opens a file, `store/guard.rs` checks it is the user's own (ssh's StrictModes).
//! - [`display`]: untrusted text made safe to show: terminal escapes, CSV formula cells.
//! - [`delay`]: the retry backoff policy (exponential, jittered), a pure function.
//! - [`executor`]: the paced worker pool that drains a run: retries, isolation, stop, resume;
//!   `executor::pacer` the limiters (shared through the database, or in-process) and the
//!   adaptive rule.
//! - [`sim`]: the local CVM simulator (`keyfleet sim`): signatures, validation, batch
//!   semantics, instance states, asynchronous key-pair operations (`LatestOperation*`),
//!   rate limit and seeded faults over a real HTTP server; `sim::audit` proves a run
//!   against the simulator's fleet and journal, telling accepted from applied.
//!
//! The binary (`src/main.rs`, one file per subcommand in `src/cli/`) parses flags,
//! draws progress and maps errors to exit codes; nothing in the library prints.

pub mod api;
pub mod credentials;
pub mod cvm;
pub mod delay;
pub mod discover;
pub mod display;
pub mod executor;
pub mod ids;
pub mod input;
pub mod plan;
pub mod secret;
pub mod sign;
pub mod sim;
pub mod store;
pub mod taxonomy;
