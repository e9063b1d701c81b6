//! keyfleet: Tencent Cloud CVM key-pair operations across a whole fleet.
//!
//! # Layout
//!
//! Data flows one way: input -> plan -> store -> executor -> api -> Tencent Cloud
//! (or the simulator).
//!
//! - [`input`]: reads CSV, JSON and JSON Lines into rows, streamed, hashed (SHA-256).
//! - [`plan`]: validates rows, folds duplicates, chunks pairs into <= 100 x 100 jobs, writes the run;
//!   a rotation row's new keys become bind pairs (Associate jobs) and its unbinds are held.
//! - [`cvm`]: the API's vocabulary: each service (`cvm`, `as`: name, version, host), each
//!   action's name, service and rate (the key-pair actions, the reads,
//!   StopInstances/StartInstances), `StopType`; [`cvm::Action::ALL`] the queue's actions,
//!   [`cvm::Action::INCIDENT`] the ones `discover` and `retire` send directly.
//! - [`ids`]: the `ins-`/`skey-` id formats and region names, shared by every layer.
//! - [`secret`]: `Secret`, a string whose `Debug`/`Display` print `***`, zeroized on drop.
//! - [`sign`]: TC3-HMAC-SHA256 signing and verification, pure functions.
//! - [`taxonomy`]: every (action, error code) -> `ErrorClass` (Retry, Throttle, Isolate, Fatal)
//!   and `Scope` (instance, key, request), from one table.
//! - [`credentials`]: where the SecretId/SecretKey and the region come from (env, tccli, INI).
//! - [`api`]: `CvmClient`, the signed HTTP client for every service and its error types:
//!   the key-pair actions and the reads (DescribeInstances pages, DescribeKeyPairs,
//!   DescribeRegions); each call signed for its action's service; `{region}` and
//!   `{service}` endpoint templates; `api::resolve`, the `--resolve` rules (and
//!   `is_loopback_host` for transport checks); `api::templates`, the replies of the
//!   incident's reads (key pairs' public keys, launch templates, launch configurations).
//! - [`pubkey`]: OpenSSH public keys and `SHA256:` fingerprints, compared by type and body.
//! - [`store`]: the SQLite queue: runs, items (one per input pair), jobs (each of one API
//!   action, with a payload and prerequisites in `job_deps`), attempts;
//!   `store::states` the stored states as enums (checked against the schema),
//!   every operation is a `Store` method, grouped by file:
//!   `store::plan` writes a plan in one transaction (`Store::begin_plan`, on a rusqlite
//!   connection of its own), `store::report` reads runs back (`Store::run_summary`,
//!   `run_status`, `list_runs`, `for_each_report_row`, the last read-only likewise),
//!   `store::rates` the achieved rate and throttles per API and access endpoint
//!   (`Store::achieved_rates`),
//!   `store::queue` holds the executor's lease, due jobs, group-committed outcomes and
//!   the typed writers for jobs added later (`JobWriter`, `RequeueWriter`),
//!   `store::verify` queues verification batches and counts their verdicts;
//!   `store::rotation` writes, in the transaction of an outcome, what follows it in a
//!   rotation or a `--keep-one-key` run (an Associate's confirmation, the unbind jobs a
//!   confirmation releases, the skips a failed bind causes), and `retry` for them;
//!   `store::pacer` the shared send slots (one row per limiter key, `synchronous=NORMAL`);
//!   before SQLite opens a file, `store/guard.rs` checks it is the user's own (ssh's StrictModes).
//! - [`display`]: untrusted text made safe to show: terminal escapes, CSV formula cells.
//! - [`delay`]: the retry backoff policy (exponential, jittered), a pure function.
//! - [`executor`]: drains a run's queue, whatever the jobs' actions: one dispatcher, a lane
//!   per limiter key, one writer, one crash-recovery path. `executor::action` is the
//!   contract per action (`JobAction`: build the call, read the reply, split a batch, name
//!   the limiter key) and the client's (`Api`); `executor::decide` is what a refusal
//!   means (pure); `executor::pacer` the `Limiter` interface, its implementations (shared
//!   through the database, or in-process) and the adaptive rule (`Adaptive`: hold under
//!   the ceiling the server's window measured, probe with one request).
//!   Adding an action to the queue: its name and rate in [`cvm`], a `JobAction`
//!   implementation and its row in `executor::action::job_action`, any action-specific
//!   codes in `taxonomy::ACTION_CODES`.
//! - [`discover`]: from key ids to plan input: DescribeKeyPairs, DescribeRegions and
//!   DescribeInstances pages through the executor's `Api` and `Limiter`.
//! - [`incident`]: closing an incident through discovery's sender: the key ids holding a
//!   public key, the launch template versions and launch configurations handing a key
//!   out (every region), and `retire` (DeleteKeyPairs once nothing holds the key, confirmed
//!   by listing again).
//! - [`sim`]: the local CVM simulator (`keyfleet sim`): signatures, validation, batch
//!   semantics, instance states, asynchronous key-pair operations (`LatestOperation*`),
//!   StopInstances/StartInstances and ForceStop with each instance's power timeline
//!   (`sim::power`), zones and tags,
//!   rate limit per (Host, action, SecretId) and seeded faults over a real HTTP server
//!   with header/body timeouts, a connection cap and a bounded journal; every service on one
//!   port (`sim::incident`: key pairs' public keys and images, launch templates, the `as`
//!   service's launch configurations); `sim::audit` proves a run
//!   against the simulator's fleet and journal, telling accepted from applied, and
//!   (`audit_power`) a live-fleet run against the power timeline: the downtime budget,
//!   final power states, budget use.
//!
//! The binary (`src/main.rs`, one file per subcommand in `src/cli/`) parses flags,
//! draws progress and maps errors to exit codes; nothing in the library prints.

pub mod api;
pub mod chunk;
pub mod credentials;
pub mod cvm;
pub mod delay;
pub mod discover;
pub mod display;
pub mod executor;
pub mod ids;
pub mod incident;
pub mod input;
pub mod lifecycle;
pub mod plan;
pub mod pubkey;
pub mod rules;
pub mod secret;
pub mod sign;
pub mod sim;
pub mod states;
pub mod store;
pub mod taxonomy;
