//! The `keyfleet` command line: parses arguments, sets up logging, and maps
//! library errors to exit codes. Each subcommand lives in `cli/`.

#![warn(unreachable_pub)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Exit codes: every code keyfleet exits with, one constant each, and the table that
/// `docs/exit-codes.md` and `keyfleet codes --exit` show (a test keeps the three equal).
pub mod exit {
    /// Every valid pair succeeded (and verified gone), none was rejected; or nothing to do.
    pub const OK: u8 = 0;
    /// The run finished with failed, skipped or rejected pairs, or a succeeded pair is not
    /// verified gone; a single call got an error reply; `discover` could not walk a region
    /// (its output is incomplete).
    pub const FAILED: u8 = 1;
    /// Usage error (clap's own too), unreadable input, a `--strict` refusal, or nothing
    /// could be started (another process holds the run).
    pub const USAGE: u8 = 2;
    /// Stopped early and resumable: interrupted (Ctrl-C, SIGTERM, SIGHUP), a fatal API
    /// error, `--max-errors`, the throttle budget, a storage failure.
    pub const STOPPED: u8 = 4;
    /// A live run left instances stopped: their start failed for good (named first in
    /// the summary, in `status` and in the report).
    pub const LEFT_STOPPED: u8 = 5;

    /// The name a person reads for the code an interrupt ends with.
    pub const INTERRUPTED: u8 = STOPPED;
    /// `discover`: a region could not be walked; `discover`/`retire` over several
    /// accounts: an account could not be done (`INCOMPLETE: account NAME: ...`).
    pub const INCOMPLETE: u8 = FAILED;

    /// One row of the exit-code table.
    #[derive(Debug, Clone, Copy, serde::Serialize)]
    pub struct Code {
        pub code: u8,
        pub name: &'static str,
        pub meaning: &'static str,
    }

    /// Every exit code, in order: the source of `docs/exit-codes.md` and `codes --exit`.
    pub const TABLE: &[Code] = &[
        Code {
            code: OK,
            name: "ok",
            meaning: "every valid pair succeeded, no row was rejected, and (unless --no-verify) \
                      every succeeded pair is verified gone and every new key of a rotation \
                      verified bound; also: nothing to do (retry with no failed pairs)",
        },
        Code {
            code: FAILED,
            name: "failed",
            meaning: "the run finished with failed, skipped or rejected pairs, or a succeeded \
                      pair is not verified gone; call: an error reply; discover: a region \
                      could not be walked (incomplete output); discover, retire over \
                      several accounts: an account could not be done (INCOMPLETE: account)",
        },
        Code {
            code: USAGE,
            name: "usage",
            meaning: "usage error, unreadable input, a --strict refusal, or nothing could be \
                      started (another process holds the run)",
        },
        Code {
            code: STOPPED,
            name: "stopped",
            meaning: "stopped early, resumable: interrupted (Ctrl-C, SIGTERM, SIGHUP), a fatal \
                      API error, --max-errors, the throttle budget, a storage failure; \
                      `keyfleet resume` continues",
        },
        Code {
            code: LEFT_STOPPED,
            name: "left-stopped",
            meaning: "a live run (--running stop-start|force-stop) left instances stopped: \
                      their start failed for good; they are named first in the summary, in \
                      `status` and in the report",
        },
    ];
}

/// Unbind SSH key pairs from Tencent Cloud CVM instances across a whole fleet.
#[derive(Debug, Parser)]
#[command(name = "keyfleet", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand shares.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The SQLite database holding runs, jobs and attempts.
    #[arg(long, global = true, env = "KEYFLEET_DB", default_value = keyfleet::store::DEFAULT_DB)]
    pub db: PathBuf,
    /// API endpoint URL: https://, or http:// to localhost/127.0.0.0/8/::1 (the simulator);
    /// `{region}` in the host sends each region's calls to its own endpoint and
    /// `{service}` each service's (cvm, as) to its own host, e.g.
    /// https://{service}.{region}.tencentcloudapi.com; without `{service}` one endpoint
    /// takes every service's calls. Default: https://{service}.tencentcloudapi.com.
    #[arg(long, global = true, env = "KEYFLEET_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Each region's calls to its own access endpoint, https://{service}.{region}.tencentcloudapi.com
    /// (shorthand for that --endpoint; wins over KEYFLEET_ENDPOINT).
    #[arg(long, global = true)]
    pub regional_endpoints: bool,
    /// Connect HOST (or every name under *.SUFFIX) to ADDR, an IP with an optional :PORT,
    /// without changing the Host header or the signature, like curl's; repeatable.
    #[arg(long = "resolve", global = true, value_name = "HOST=ADDR")]
    pub resolve: Vec<keyfleet::api::resolve::ResolveRule>,
    /// Allow an http:// endpoint on another host: credentials and replayable signatures
    /// then travel in clear. For a trusted test network only; a warning is printed.
    #[arg(long, global = true)]
    pub insecure_http: bool,
    /// Region, when the input rows do not carry one.
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// tccli profile to read credentials and region from (~/.tccli/NAME.credential).
    #[arg(long, global = true, env = "TCCLI_PROFILE")]
    pub profile: Option<String>,
    /// The accounts file (TOML, one [accounts.NAME] table each: the base credentials, a
    /// role_arn assumed with them, or a tccli profile); --account picks the one to work as.
    #[arg(long, global = true, value_name = "FILE", env = keyfleet::accounts::ENV_ACCOUNTS)]
    pub accounts: Option<PathBuf>,
    /// The accounts are the Organization's members (DescribeOrganizationMembers, with the
    /// base credentials of its administrator), each named by its UIN and reached by
    /// assuming --member-role in it.
    #[arg(long, global = true, conflicts_with = "accounts")]
    pub organization: bool,
    /// The role assumed in each member with --organization.
    #[arg(long, global = true, value_name = "ROLE", default_value = keyfleet::accounts::DEFAULT_MEMBER_ROLE)]
    pub member_role: String,
    /// Work as this account of --accounts (or --organization): every request signed
    /// with its credentials (a role's temporary ones, refreshed before they expire) and
    /// paced under its own limits.
    #[arg(long, global = true, value_name = "NAME")]
    pub account: Option<String>,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors and the final one-line verdict on stderr (no progress, no summary).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log events as text, or as JSON Lines (one object per event: timestamp, level,
    /// run, job, action, region, endpoint, request_id, code, latency_ms, attempt, message).
    #[arg(long, global = true, value_enum, env = "KEYFLEET_LOG_FORMAT", default_value_t = cli::logging::LogFormat::Text)]
    pub log_format: cli::logging::LogFormat,
    /// Also write log events (info and above; more with -v) to FILE, created owner-only
    /// and appended to; the terminal keeps its progress display.
    #[arg(long, global = true, value_name = "FILE", env = "KEYFLEET_LOG_FILE")]
    pub log_file: Option<PathBuf>,
}

impl GlobalArgs {
    /// The endpoint (or template) API clients are built for: `--regional-endpoints`,
    /// else `--endpoint`/`KEYFLEET_ENDPOINT`, else the global endpoint.
    pub fn endpoint(&self) -> String {
        if self.regional_endpoints {
            return keyfleet::api::REGIONAL_ENDPOINT_TEMPLATE.to_string();
        }
        self.endpoint
            .clone()
            .unwrap_or_else(|| keyfleet::api::DEFAULT_ENDPOINT_TEMPLATE.to_string())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole job on embedded defaults against an in-process simulator: no setup, about a minute.
    Demo(cli::demo::Args),
    /// Find the instances holding leaked keys (DescribeInstances in every region): plan input.
    Discover(cli::discover::Args),
    /// Plan INPUT (or find the run that planned it) and execute it: the fleet job.
    Run(cli::run::RunArgs),
    /// Continue a run where it stopped (crash, kill, Ctrl-C, fatal error); the newest by default.
    Resume(cli::run::ResumeArgs),
    /// Check every pair of a run against the cloud's own state (DescribeInstances): is the key gone?
    Verify(cli::verify::Args),
    /// Requeue a run's failed pairs (all, or those with --code) as fresh jobs and execute them.
    Retry(cli::run::RetryArgs),
    /// Delete leaked key pairs once no instance, default template or launch configuration holds them.
    Retire(cli::retire::Args),
    /// Read an input of (instance, key, region) rows and store a plan of jobs (a run).
    Plan(cli::plan::Args),
    /// Show where a run stands: pairs, jobs, requests, failures.
    Status(cli::status::Args),
    /// Write one row per input pair with its outcome, in input order.
    Report(cli::report::Args),
    /// List the runs in the database, newest first.
    Runs(cli::runs::Args),
    /// One API request by hand: `disassociate` key pairs, or `describe` instances.
    Call(cli::call::Args),
    /// Serve a local CVM simulator (signatures, batch semantics, rate limit, faults) until Ctrl-C.
    Sim(Box<cli::sim::Args>),
    /// Print the error-code table (each API error code, its class, what keyfleet does), or --exit codes.
    Codes(cli::codes::Args),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions(cli::docs::CompletionsArgs),
    /// Print the man page of keyfleet (or of one COMMAND) as roff, or write them all to a directory.
    Man(cli::docs::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::term::init(cli.global.quiet);
    if let Err(err) = cli::logging::init(&cli.global) {
        eprintln!(
            "error: {}",
            keyfleet::display::escape_keeping_newlines(&describe(&err))
        );
        return ExitCode::from(exit::USAGE);
    }
    let db = cli.global.db.clone();
    match try_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let mut text = describe(&err);
            // A storage error deep in a command does not know which file it was about.
            let about_store = err
                .chain()
                .any(|c| c.downcast_ref::<keyfleet::store::StoreError>().is_some());
            let db = db.display().to_string();
            if about_store && !text.contains(&db) {
                text.push_str(&format!(" (database {db})"));
            }
            // Messages carry endpoint replies and input text: nothing raw reaches the terminal.
            eprintln!(
                "error: {}",
                keyfleet::display::escape_keeping_newlines(&text)
            );
            ExitCode::from(exit::USAGE)
        }
    }
}

/// The error and its causes on one line, like `{:#}`, but without a cause that the
/// text already holds: sqlx and thiserror messages often repeat their source, and
/// "file is not a database" three times reads like three problems.
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn try_main(cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Codes(args) => cli::codes::run(args),
            Command::Completions(args) => cli::docs::completions(args),
            Command::Man(args) => cli::docs::man(args),
            Command::Call(args) => cli::call::run(args, &cli.global).await,
            Command::Demo(args) => cli::demo::run(args, &cli.global).await,
            Command::Discover(args) => cli::discover::run(args, &cli.global).await,
            Command::Run(args) => cli::run::run(args, &cli.global).await,
            Command::Retry(args) => cli::run::retry(args, &cli.global).await,
            Command::Retire(args) => cli::retire::run(args, &cli.global).await,
            Command::Resume(args) => cli::run::resume(args, &cli.global).await,
            Command::Verify(args) => cli::verify::run(args, &cli.global).await,
            Command::Plan(args) => cli::plan::run(&cli.global, args).await,
            Command::Runs(args) => cli::runs::run(&cli.global, args).await,
            Command::Status(args) => cli::status::run(&cli.global, args).await,
            Command::Report(args) => cli::report::run(&cli.global, args).await,
            Command::Sim(args) => cli::sim::run(*args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(args: &[&str]) -> GlobalArgs {
        let mut argv = vec!["keyfleet"];
        argv.extend_from_slice(args);
        argv.push("codes");
        Cli::try_parse_from(argv).unwrap().global
    }

    #[test]
    fn the_flag_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_exit_constant_is_one_row_of_the_table() {
        let codes: Vec<u8> = exit::TABLE.iter().map(|c| c.code).collect();
        assert_eq!(
            codes,
            [
                exit::OK,
                exit::FAILED,
                exit::USAGE,
                exit::STOPPED,
                exit::LEFT_STOPPED
            ]
        );
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "in order, once each");
        assert!(codes.contains(&exit::INTERRUPTED) && codes.contains(&exit::INCOMPLETE));
        // clap exits 2 on a usage error: the table's usage code must be that one.
        let err = Cli::try_parse_from(["keyfleet", "--no-such-flag"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn regional_endpoints_and_resolve_rules_are_global_flags() {
        assert_eq!(
            global(&["--regional-endpoints"]).endpoint(),
            keyfleet::api::REGIONAL_ENDPOINT_TEMPLATE
        );
        assert_eq!(
            global(&["--endpoint", "http://cvm.{region}.sim.test:9"]).endpoint(),
            "http://cvm.{region}.sim.test:9"
        );
        let rules = global(&[
            "--resolve",
            "*.sim.test=127.0.0.1",
            "--resolve",
            "a.test=::1",
        ])
        .resolve;
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].to_string(), "a.test=::1");
    }
}
