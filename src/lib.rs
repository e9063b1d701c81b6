//! keyfleet: Tencent Cloud CVM key-pair operations across a whole fleet.
//!
//! # Layout
//!
//! Data flows one way: input -> plan -> store -> executor -> api -> Tencent Cloud
//! (or the simulator).
//!
//! - [`input`]: reads CSV, JSON and JSON Lines into rows, streamed, hashed (SHA-256),
//!   with the optional columns a plan reads (`instance_state`, `keys_after`, the
//!   `--max-down-per COLUMN` column); `input/csv_rows.rs` and `input/json_rows.rs` hold
//!   each format's reader, `input/mod.rs` the tap that hashes and checks every byte.
//! - [`plan`]: validates rows, folds duplicates, chunks pairs into <= 100 x 100 jobs, writes the run;
//!   a rotation row's new keys become bind pairs (`bind` jobs) and its unbinds are held
//!   (`plan/write.rs`: the built plan through the store's plan writer).
//! - [`chunk`]: chunking pairs into requests and the packed ids the planner sorts by (a
//!   leaf: the planner and the store both use it).
//! - [`states`]: the words the database stores, one enum each: run, job and item states,
//!   verdicts, a job's kind (`JobKind`: its step in an instance's or a template's
//!   workflow), a live instance's power state, a template change's kind and state (a leaf).
//! - [`rules`]: what follows an outcome, as pure functions of (the outcome, the rows read
//!   in its transaction) returning `Effect`s: `rules::rotation` (bind, confirm, release
//!   or skip the held unbinds), `rules::keep_one_key` (the look: it waits out operations
//!   in progress and other runs' claims), `rules::power` (live fleets: survey, admission
//!   into the downtime budget, stop, settle, start), `rules::template` (a launch
//!   template's new version and default, a launch configuration's key set: look, write,
//!   look again; a write in doubt replaced by a look, never sent twice), and the claims
//!   runs on one database take on the instances they decide on (`rules::Claim`). Tested
//!   without a database; the store applies the effects.
//! - [`cvm`]: the API's vocabulary: each service (`cvm`, `as`, `sts`, `organization`: name,
//!   version, host), each
//!   action's name, service and rate (the key-pair actions, the reads,
//!   StopInstances/StartInstances, the template actions), `StopType`;
//!   [`cvm::Action::ALL`] the queue's actions, [`cvm::Action::INCIDENT`] the ones
//!   `discover` and `retire` send directly.
//! - [`ids`]: the `ins-`/`skey-` id formats and region names, shared by every layer.
//! - [`secret`]: `Secret`, a string whose `Debug`/`Display` print `***`, zeroized on drop.
//! - [`sign`]: TC3-HMAC-SHA256 signing and verification, pure functions.
//! - [`taxonomy`]: every (action, error code) -> `ErrorClass` (Retry, Throttle, Isolate, Fatal)
//!   and `Scope` (instance, key, request), from one table.
//! - [`credentials`]: where the SecretId/SecretKey and the region come from (env, tccli, INI).
//! - [`accounts`]: many accounts (issue 23): the accounts file (`--accounts`, TOML) or the
//!   Organization's members as typed `Accounts`; `accounts::session::AccountClient`, one
//!   account's sender: the base credentials, a profile's, or a role's temporary ones (STS
//!   AssumeRole, held in memory, fetched again before they expire), its limiter identity
//!   (the account and role, never a temporary SecretId); `AccountClient::into_client` makes any
//!   command work as it; `accounts::estate::Estate`, the clients of one run over many
//!   accounts (rows with an `account` column): the executor sends each job as its account
//!   (`Api::call_as`) and paces it under that account's identity (`Api::identity`).
//! - [`api`]: `CvmClient`, the signed HTTP client for every service and its error types:
//!   the key-pair actions, Stop/StartInstances and the reads (DescribeInstances pages,
//!   DescribeKeyPairs, DescribeRegions); each call signed for its action's service;
//!   `{region}` and `{service}` endpoint templates. Its files: `api/endpoint.rs` (where
//!   calls go: URLs, templates, the http/https check, the proxy), `api/error.rs` (why a
//!   call failed), `api/wire.rs` (a reply's envelope, the reads' replies, the power
//!   requests' bodies), `api::resolve` (the `--resolve` rules, `is_loopback_host`),
//!   `api::templates` (the incident's reads: key pairs' public keys, launch templates,
//!   launch configurations).
//! - [`pubkey`]: OpenSSH public keys and `SHA256:` fingerprints, compared by type and body.
//! - [`store`]: the SQLite queue: runs, items (one per input pair), jobs (each of one kind
//!   and its API action, with a payload and prerequisites in `job_deps`), attempts, a live
//!   run's power rows. Every operation is a `Store` method, grouped by file:
//!   `store::states` checks the stored words against the schema; `store::plan` writes a
//!   plan in one transaction (on a rusqlite connection of its own; through a rollback
//!   journal, each page once, when it has the database to itself); `store::report` reads
//!   runs back; `store::rates` the achieved rate and throttles per API and endpoint;
//!   `store::queue` the executor's lease, due jobs and counts; `store::outcome` the
//!   group-committed attempt starts and outcomes (`Store::apply`); `store::follow`
//!   reads what a kind's rules need, calls them and applies their effects in the
//!   outcome's transaction; `store::jobs` the rows every writer shares; `store::requeue`
//!   `JobWriter` and `Store::requeue` (retry, verify --requeue, the run's resend, one
//!   transaction each); `store::verify` verification rounds and their counts;
//!   `store::power` a live run's power rows, admission, its preparation and counts (and
//!   the budget groups of `--max-down-per COLUMN`); `store::claims` which run of the
//!   database may unbind an instance's keys (`--keep-one-key`) or have it down, read,
//!   taken and released in outcomes' transactions (busy, stuck, stale: `rules::Claim`);
//!   `store::templates` a run's template changes (`template_changes`), its leaked and
//!   new keys, and the recorded retirements (`retirements`); `store::incident` what the
//!   incident report reads of a run (where, what was done and skipped, every request);
//!   `store::pacer` the shared send slots; before SQLite opens a file, `store/guard.rs`
//!   checks it is the user's own (ssh's StrictModes), the `-migrate.lock` file included;
//!   a key-pair job whose ids are not its planned pairs fails `KeyFleet.NotPlanned`
//!   unsent, in the transaction that would start it (`store::queue`). The store imports
//!   nothing from the planner, the executor, discovery or the binary.
//! - [`display`]: untrusted text made safe to show: terminal escapes, CSV formula cells.
//! - [`delay`]: the retry backoff policy (exponential, jittered), a pure function.
//! - [`executor`]: drains a run's queue, whatever the jobs' actions: one dispatcher, a lane
//!   per limiter key, one writer, one crash-recovery path (`executor/config.rs` what a run
//!   is given and returns, `executor/shared.rs` the state its tasks share,
//!   `executor/dispatch.rs` the dispatcher and lanes, `executor/send.rs` a wave's attempt
//!   rows, the paced sends and the writer). `executor::action` is the
//!   contract per action (`JobAction`: build the call, read the reply, split a batch, name
//!   the limiter key) and the client's (`Api`); `executor::decide` is what a refusal
//!   means (pure); `executor::pacer` the `Limiter` interface, its implementations (shared
//!   through the database, or in-process) and the adaptive rule (`Adaptive`: hold under
//!   the ceiling the server's window measured, probe with one request).
//!   Adding a step to an instance's workflow: a [`states::JobKind`] (and its word in a
//!   migration's CHECK list), its action's name and rate in [`cvm`] if new, a `JobAction`
//!   and its row in `executor::action::job_action`, its rules in [`rules`] (with what the
//!   store reads for them in `store::follow`), any action-specific codes in
//!   `taxonomy::ACTION_CODES`.
//! - [`lifecycle`]: the run lifecycle as a library: execute, verify, send again what the
//!   cloud reported FAILED, verify again (`Lifecycle::run_to_verified`), a live run's
//!   preparation and drain on interrupt, `retry`; progress through an `Observer`.
//! - [`discover`]: from key ids to plan input: DescribeKeyPairs, DescribeRegions and
//!   DescribeInstances pages through the executor's `Api` and `Limiter`; a region is
//!   complete only when its pages agree with `TotalCount` (else walked again, then
//!   INCOMPLETE), and holders DescribeKeyPairs names that no walk listed are looked up by id.
//! - [`incident`]: closing an incident through discovery's sender: the key ids holding a
//!   public key, the launch template versions and launch configurations handing a key
//!   out (every region), and `retire` (DeleteKeyPairs once nothing holds the key, confirmed
//!   by listing again); `read_templates_csv`, the templates file `run --templates` takes.
//! - [`sim`]: the local CVM simulator (`keyfleet sim`): signatures, validation, batch
//!   semantics, instance states, asynchronous key-pair operations (`LatestOperation*`),
//!   StopInstances/StartInstances and ForceStop with each instance's power timeline
//!   (`sim::power`), zones and tags,
//!   rate limit per (Host, action, SecretId) and seeded faults over a real HTTP server
//!   (`sim/server.rs`; `sim/call.rs` decodes a request and makes the protocol checks,
//!   `sim/request.rs` reads its parameters, `sim/instance.rs` is one instance and its
//!   timed operations, `sim/holdings.rs` an account's key pairs and templates)
//!   with header/body timeouts, a connection cap and a bounded journal; every service on one
//!   port (`sim::incident`: key pairs' public keys and images, launch templates, the `as`
//!   service's launch configurations); `sim::churn` changes the fleet while it is listed
//!   (seeded, counted in pages); `sim::closing` proves templates and the key pair's
//!   deletion (no second version, defaults moved, a key deleted only when free);
//!   `sim::audit` proves a run
//!   against the simulator's fleet and journal, telling accepted from applied, and
//!   (`audit_power`) a live-fleet run against the power timeline: the downtime budget,
//!   final power states, budget use; `sim::accounts` several accounts behind one port
//!   (each a whole simulator of its own) with STS AssumeRole, temporary credentials that
//!   expire, and the Organization's member list.
//!
//! The binary (`src/main.rs`, one file per subcommand in `src/cli/`, flag groups in
//! `cli/flags.rs`) parses flags, draws progress, writes logs (text or JSON Lines) and maps
//! errors to exit codes (the table: `exit` in `main.rs`); nothing in the library prints.
//! `store::watch` is what `status --watch` reads (`Store::open_read_only`, which creates,
//! migrates and writes nothing; `recent_errors`).
//!
//! # Surface
//!
//! `pub` means used from outside the library (the binary, the integration tests, the
//! benchmarks); everything else is `pub(crate)` or private, and the `unreachable_pub`
//! lint (here and in `main.rs`, denied in CI through clippy's `-D warnings`) keeps it so.
//! Modules nothing outside needs are private or `pub(crate)` (`chunk`, `delay`, the
//! executor's parts, the simulator's fleet, journal and power model, the store's pacer,
//! requeue and schema checks), their types re-exported where the outside needs them.

#![warn(unreachable_pub)]

pub mod accounts;
pub mod api;
mod chunk;
pub mod credentials;
pub mod cvm;
mod delay;
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
