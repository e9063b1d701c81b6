//! `keyfleet sim`: serve the local CVM simulator until Ctrl-C.
//!
//! Prints one JSON line on stdout (endpoint, credentials, seed) for scripts, and
//! the same as `export` lines on stderr for people.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use keyfleet::secret::Secret;
use keyfleet::sim::{self, Faults, Fleet, Mix, SimConfig};
use rand::Rng;
use rand::distr::Alphanumeric;

/// Instances generated when neither `--fleet` nor `--generate` is given.
const DEFAULT_GENERATED: usize = 100;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Allow a --listen address that is not loopback (exposes the simulator to the network).
    #[arg(long)]
    allow_non_loopback: bool,
    /// Fleet file (format: samples/README.md, "Simulator fleet").
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    fleet: Option<PathBuf>,
    /// Generate a fleet of N instances (100 when neither --fleet nor --generate is given).
    #[arg(long, value_name = "N")]
    generate: Option<usize>,
    /// Seed for the generated fleet, faults, jitter and latency; random (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// The SecretId to accept (generated, with the SecretKey, when absent). Needs a
    /// SecretKey from KEYFLEET_SIM_SECRET_KEY or --secret-key-file.
    #[arg(long, env = "KEYFLEET_SIM_SECRET_ID")]
    secret_id: Option<String>,
    /// Read the SecretKey to accept from FILE (one line; a trailing newline is ignored).
    /// Without it, KEYFLEET_SIM_SECRET_KEY is used.
    #[arg(long, value_name = "FILE", conflicts_with = "secret_key")]
    secret_key_file: Option<PathBuf>,
    /// Deprecated: a key on the command line is visible to every local user (ps,
    /// /proc); use KEYFLEET_SIM_SECRET_KEY or --secret-key-file.
    #[arg(long, hide = true)]
    secret_key: Option<String>,
    /// Admitted requests per (Host header, action, SecretId) in any sliding second
    /// (0: unlimited); POST /_sim/rate changes it while running.
    #[arg(long, default_value_t = sim::DEFAULT_RATE_PER_SECOND)]
    rate: u32,
    /// Time a connection has to send a request head (also ends idle keep-alive connections).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    header_timeout: Duration,
    /// Time a request body has to arrive once its head has.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    body_timeout: Duration,
    /// Connections open at once; past it new ones wait (in the kernel's backlog).
    #[arg(long, value_name = "N", default_value_t = sim::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Journal entries kept; the oldest are dropped (and counted in the stats) past it.
    #[arg(long, value_name = "N", default_value_t = sim::DEFAULT_JOURNAL_CAPACITY as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    journal_capacity: u32,
    /// Random delay 0..J before the rate limiter sees a request (e.g. 20ms).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    jitter: Duration,
    /// Processing time after admission: a duration or a range such as 50ms..300ms.
    #[arg(long, value_parser = parse_range, default_value = "0ms")]
    latency: LatencyRange,
    /// How long transitional states (STOPPING, PENDING, ...) last unless the fleet says.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    settle_after: Duration,
    /// How long an accepted Associate/Disassociate stays OPERATING before the keys change
    /// (0: at once, the reply's instant).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    operation_time: Duration,
    /// Probability that an accepted Associate/Disassociate ends FAILED, keys unchanged
    /// (the reply still succeeds: a RequestId means accepted, not applied).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_async_fail: f64,
    /// An action this SecretId may not call (repeatable): answered UnauthorizedOperation,
    /// like a sub-account allowed to unbind but not to describe.
    #[arg(long = "deny-action", value_name = "ACTION", value_parser = parse_action)]
    deny_actions: Vec<keyfleet::cvm::Action>,
    /// Probability of MutexOperation.TaskRunning per request.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_mutex: f64,
    /// Probability of OperationDenied.InstanceOperationInProgress per request.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_in_progress: f64,
    /// Probability of InternalServerError per request.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_internal: f64,
    /// Probability of closing the connection without a reply, nothing applied.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_drop_before: f64,
    /// Probability of applying the request, then closing the connection without a reply.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_drop_after: f64,
    /// How long an accepted StopInstances (and a ForceStop's hard stop) stays STOPPING.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    stop_time: Duration,
    /// How long an accepted StartInstances (and a ForceStop's restart) stays STARTING.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    start_time: Duration,
    /// What a key-pair request with ForceStop=true does to a RUNNING instance after the
    /// change: restart (the current documentation) or left-stopped (the older one).
    #[arg(long, value_name = "READING", default_value = "restart")]
    force_stop_reading: sim::ForceStopReading,
    /// Probability, per instance of an accepted SOFT stop, that its OS does not shut down:
    /// the stop ends FAILED and the instance is RUNNING again.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_soft_stop_fail: f64,
    /// Probability, per instance of an accepted start, that it ends FAILED, still STOPPED.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_start_fail: f64,
    /// Probability, per StartInstances request, of the reply ResourceInsufficient
    /// (nothing started).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fault_start_error: f64,
    /// The generated fleet's make-up: `default` (mostly STOPPED, two regions) or `live`
    /// (80% RUNNING over three zones of ap-guangzhou, tagged with a service).
    #[arg(long, value_enum, default_value_t = MixName::Default, conflicts_with = "fleet")]
    mix: MixName,
    /// Change the fleet while it is listed, as Auto Scaling does: before every Nth
    /// DescribeInstances listing page of a region, create an instance there (with
    /// another's keys) or terminate one, on a schedule seeded by --seed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    churn_every: Option<u32>,
    /// Stop changing the fleet after this many changes (with --churn-every).
    #[arg(long, value_name = "N", requires = "churn_every")]
    churn_limit: Option<u32>,
    /// Write the starting fleet to FILE (to build input rows from a generated fleet).
    #[arg(long, value_name = "FILE")]
    write_fleet: Option<PathBuf>,
    /// Another account behind the same port (repeatable): NAME=UIN, or NAME=UIN:FLEET
    /// with its own fleet file (generated from --seed otherwise). Each gets its own
    /// SecretId, limits and journal, and the roles of --role, which the first account
    /// (`main`, --main-uin, the credentials above) may assume with STS AssumeRole; the
    /// Organization lists them as its members.
    #[arg(long = "add-account", value_name = "NAME=UIN[:FLEET]", value_parser = parse_account)]
    add_accounts: Vec<AccountSpec>,
    /// The UIN of the first account (the one --secret-id signs for), with --add-account.
    #[arg(
        long,
        value_name = "UIN",
        default_value = "100000000001",
        requires = "add_accounts"
    )]
    main_uin: String,
    /// A role every --add-account holds, assumable by the first account (repeatable;
    /// default KeyRotation and OrganizationAccessControlRole).
    #[arg(long = "role", value_name = "NAME", requires = "add_accounts")]
    roles: Vec<String>,
    /// The lifetime AssumeRole grants, whatever DurationSeconds asks (e.g. 30s, to see
    /// temporary credentials refreshed in a rehearsal); as asked when absent.
    #[arg(long, value_parser = parse_duration, requires = "add_accounts")]
    credential_lifetime: Option<Duration>,
}

/// One `--add-account NAME=UIN[:FLEET]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountSpec {
    name: String,
    uin: String,
    fleet: Option<PathBuf>,
}

fn parse_account(text: &str) -> Result<AccountSpec, String> {
    let bad = || format!("{text:?} is not NAME=UIN or NAME=UIN:FLEET (UIN: digits)");
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let (uin, fleet) = match rest.split_once(':') {
        Some((uin, fleet)) if !fleet.is_empty() => (uin, Some(PathBuf::from(fleet))),
        Some(_) => return Err(bad()),
        None => (rest, None),
    };
    if !keyfleet::accounts::is_account_name(name)
        || uin.is_empty()
        || !uin.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    Ok(AccountSpec {
        name: name.to_string(),
        uin: uin.to_string(),
        fleet,
    })
}

/// The generated fleets `--mix` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MixName {
    /// Mostly STOPPED Linux instances in two regions (`Mix::default`).
    Default,
    /// A production fleet: most RUNNING, three zones (`Mix::live`).
    Live,
}

/// A latency range, `low..high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LatencyRange(Duration, Duration);

/// The simulator's time flags: a bare number is milliseconds (`cli::flags::duration`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    super::flags::millis(text)
}

/// Parses `50ms..300ms`, or one duration for a fixed latency.
fn parse_range(text: &str) -> Result<LatencyRange, String> {
    let (low, high) = match text.split_once("..") {
        Some((low, high)) => (parse_duration(low)?, parse_duration(high)?),
        None => {
            let fixed = parse_duration(text)?;
            (fixed, fixed)
        }
    };
    if low > high {
        return Err(format!("the range {text:?} ends before it starts"));
    }
    Ok(LatencyRange(low, high))
}

/// The environment variable holding the SecretKey to accept.
const SECRET_KEY_ENV: &str = "KEYFLEET_SIM_SECRET_KEY";

/// The SecretKey to accept: `--secret-key-file`, else the deprecated `--secret-key`
/// (with a warning), else `KEYFLEET_SIM_SECRET_KEY`; `None` when none is given.
fn given_secret_key(
    file: Option<&std::path::Path>,
    flag: Option<String>,
    env: Option<String>,
) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --secret-key-file {}", path.display()))?;
        let key = text.strip_suffix('\n').unwrap_or(&text);
        let key = key.strip_suffix('\r').unwrap_or(key);
        if key.is_empty() || key.contains(['\n', '\r']) {
            bail!(
                "--secret-key-file {}: expected one line holding the SecretKey",
                path.display()
            );
        }
        return Ok(Some(key.to_string()));
    }
    if let Some(key) = flag {
        eprintln!(
            "warning: --secret-key is deprecated (other local users can read a command line): \
             set {SECRET_KEY_ENV} or pass --secret-key-file FILE instead"
        );
        return Ok(Some(key));
    }
    Ok(env.filter(|key| !key.is_empty()))
}

fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub(crate) async fn run(args: Args) -> anyhow::Result<u8> {
    if !args.listen.ip().is_loopback() && !args.allow_non_loopback {
        bail!(
            "--listen {} is not a loopback address; the simulator accepts anyone who knows its \
             printed key, so pass --allow-non-loopback if you really mean to expose it",
            args.listen
        );
    }
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let fleet = match &args.fleet {
        Some(path) => Fleet::load(path)?,
        None => Fleet::generate(
            args.generate.unwrap_or(DEFAULT_GENERATED),
            seed,
            &match args.mix {
                MixName::Default => Mix::default(),
                MixName::Live => Mix::live(),
            },
        ),
    };
    if let Some(path) = &args.write_fleet {
        std::fs::write(path, fleet.to_json_pretty() + "\n")
            .with_context(|| format!("cannot write the fleet to {}", path.display()))?;
    }
    // A given key is not echoed: it might be a real one by mistake.
    let given_key = given_secret_key(
        args.secret_key_file.as_deref(),
        args.secret_key.clone(),
        std::env::var(SECRET_KEY_ENV).ok(),
    )?;
    let (secret_id, secret_key, generated) = match (args.secret_id.clone(), given_key) {
        (Some(id), Some(key)) => (id, key, false),
        (None, None) => (
            format!("AKIDsim{}", random_token(29)),
            random_token(32),
            true,
        ),
        (Some(_), None) => bail!(
            "--secret-id (or KEYFLEET_SIM_SECRET_ID) needs a SecretKey: set {SECRET_KEY_ENV} \
             or pass --secret-key-file FILE"
        ),
        (None, Some(_)) => bail!(
            "a SecretKey was given without a SecretId: pass --secret-id or set KEYFLEET_SIM_SECRET_ID"
        ),
    };
    let shown_key = generated.then(|| secret_key.clone());
    let config = SimConfig {
        secret_id: secret_id.clone(),
        secret_key: Secret::new(secret_key.clone()),
        rate: args.rate,
        jitter: args.jitter,
        latency: (args.latency.0, args.latency.1),
        faults: Faults {
            mutex: args.fault_mutex,
            in_progress: args.fault_in_progress,
            internal: args.fault_internal,
            drop_before: args.fault_drop_before,
            drop_after: args.fault_drop_after,
        },
        seed,
        settle_after: args.settle_after,
        operation_time: args.operation_time,
        async_fail: args.fault_async_fail,
        denied_actions: args.deny_actions.clone(),
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        max_connections: args.max_connections as usize,
        journal_capacity: args.journal_capacity as usize,
        power: sim::Power {
            stop_time: args.stop_time,
            start_time: args.start_time,
            force_stop: args.force_stop_reading,
            soft_stop_fail: args.fault_soft_stop_fail,
            start_fail: args.fault_start_fail,
            start_error: args.fault_start_error,
        },
        churn: args.churn_every.map(|every| sim::Churn {
            every,
            limit: args.churn_limit,
        }),
    };
    let instances = fleet.instances().len();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if !args.add_accounts.is_empty() {
        let main = Main {
            uin: args.main_uin.clone(),
            config,
            fleet,
            shown_key,
        };
        return serve_accounts(listener, main, &args).await;
    }
    let handle = sim::start(listener, config, fleet).await?;
    let endpoint = handle.endpoint();
    // Generated credentials are printed on purpose: they exist only to be used against the simulator.
    println!(
        "{}",
        serde_json::json!({
            "endpoint": endpoint,
            "secret_id": secret_id,
            "secret_key": shown_key,
            "seed": seed,
            "instances": instances,
        })
    );
    eprintln!("keyfleet sim: {instances} instances, seed {seed}, listening on {endpoint}");
    eprintln!("  export TENCENTCLOUD_SECRET_ID={secret_id}");
    match &shown_key {
        Some(key) => eprintln!("  export TENCENTCLOUD_SECRET_KEY={key}"),
        None => eprintln!("  (SecretKey as given)"),
    }
    eprintln!("  export KEYFLEET_ENDPOINT={endpoint}");
    eprintln!(
        "  state: {endpoint}/_sim/state  journal: {endpoint}/_sim/journal?after=0  power: {endpoint}/_sim/power?after=0  stats: {endpoint}/_sim/stats  rate: {endpoint}/_sim/rate"
    );
    eprintln!("Ctrl-C stops.");
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    let stats = handle.stats();
    handle.shutdown().await;
    eprintln!(
        "keyfleet sim: stopped; {} admitted, {} throttled, {} dropped, at most {} per second",
        stats.admitted, stats.throttled, stats.dropped, stats.max_in_any_second
    );
    Ok(crate::exit::OK)
}

/// The first account of `keyfleet sim --add-account`: the one the printed credentials sign for.
struct Main {
    uin: String,
    config: SimConfig,
    fleet: Fleet,
    shown_key: Option<String>,
}

/// `keyfleet sim --add-account ...`: every account behind one port (`sim::accounts`).
async fn serve_accounts(
    listener: tokio::net::TcpListener,
    main: Main,
    args: &Args,
) -> anyhow::Result<u8> {
    let roles: Vec<String> = if args.roles.is_empty() {
        vec![
            "KeyRotation".to_string(),
            keyfleet::accounts::DEFAULT_MEMBER_ROLE.to_string(),
        ]
    } else {
        args.roles.clone()
    };
    let trusted = vec![main.uin.clone()];
    let mut accounts = vec![sim::accounts::SimAccount {
        name: "main".to_string(),
        uin: main.uin.clone(),
        config: main.config.clone(),
        fleet: main.fleet,
        roles: Vec::new(),
    }];
    let mut shown = Vec::new();
    for (n, spec) in args.add_accounts.iter().enumerate() {
        let fleet = match &spec.fleet {
            Some(path) => Fleet::load(path)?,
            None => Fleet::generate(
                args.generate.unwrap_or(DEFAULT_GENERATED),
                main.config.seed.wrapping_add(n as u64 + 1),
                &Mix::default(),
            ),
        };
        let secret_id = format!("AKIDsim{}", random_token(29));
        let secret_key = random_token(32);
        shown.push(serde_json::json!({
            "name": spec.name,
            "uin": spec.uin,
            "secret_id": secret_id,
            "secret_key": secret_key,
            "instances": fleet.instances().len(),
            "roles": roles.iter().map(|r| format!("qcs::cam::uin/{}:roleName/{r}", spec.uin)).collect::<Vec<_>>(),
        }));
        accounts.push(sim::accounts::SimAccount {
            name: spec.name.clone(),
            uin: spec.uin.clone(),
            config: SimConfig {
                secret_id,
                secret_key: Secret::new(secret_key),
                seed: main.config.seed.wrapping_add(n as u64 + 1),
                ..main.config.clone()
            },
            fleet,
            roles: roles
                .iter()
                .map(|name| sim::accounts::SimRole {
                    name: name.clone(),
                    trusted: trusted.clone(),
                })
                .collect(),
        });
    }
    let handle = sim::accounts::start_accounts(listener, accounts, Some("main")).await?;
    handle.set_credential_lifetime(args.credential_lifetime);
    let endpoint = handle.endpoint();
    // Every account's credentials exist only to be used against this simulator.
    println!(
        "{}",
        serde_json::json!({
            "endpoint": endpoint,
            "secret_id": main.config.secret_id,
            "secret_key": main.shown_key,
            "uin": main.uin,
            "seed": main.config.seed,
            "accounts": shown,
        })
    );
    eprintln!(
        "keyfleet sim: {} accounts (main + {}), listening on {endpoint}",
        args.add_accounts.len() + 1,
        args.add_accounts
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("  export TENCENTCLOUD_SECRET_ID={}", main.config.secret_id);
    match &main.shown_key {
        Some(key) => eprintln!("  export TENCENTCLOUD_SECRET_KEY={key}"),
        None => eprintln!("  (SecretKey as given)"),
    }
    eprintln!("  export KEYFLEET_ENDPOINT={endpoint}");
    for spec in &args.add_accounts {
        eprintln!(
            "  [accounts.{}] role_arn = \"qcs::cam::uin/{}:roleName/{}\"",
            spec.name, spec.uin, roles[0]
        );
    }
    eprintln!("Ctrl-C stops.");
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    for name in handle.names() {
        if let Some(account) = handle.account(name) {
            let stats = account.stats();
            eprintln!(
                "keyfleet sim: account {name}: {} admitted, {} throttled, at most {} per second",
                stats.admitted, stats.throttled, stats.max_in_any_second
            );
        }
    }
    eprintln!(
        "keyfleet sim: {} AssumeRole answered",
        handle.assumed().len()
    );
    handle.shutdown().await;
    Ok(crate::exit::OK)
}

fn parse_action(name: &str) -> Result<keyfleet::cvm::Action, String> {
    keyfleet::cvm::Action::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = keyfleet::cvm::Action::ALL
            .iter()
            .map(|a| a.name())
            .collect();
        format!("{name:?} is not an action; one of {}", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_key_comes_from_the_file_the_flag_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "fromfile\n").unwrap();
        let env = || Some("fromenv".to_string());
        let key = given_secret_key(Some(&file), None, env()).unwrap();
        assert_eq!(key.as_deref(), Some("fromfile"));
        let key = given_secret_key(None, Some("fromflag".into()), env()).unwrap();
        assert_eq!(key.as_deref(), Some("fromflag"));
        assert_eq!(
            given_secret_key(None, None, env()).unwrap().as_deref(),
            Some("fromenv")
        );
        assert_eq!(given_secret_key(None, None, None).unwrap(), None);
        std::fs::write(&file, "two\nlines\n").unwrap();
        let err = given_secret_key(Some(&file), None, None).unwrap_err();
        assert!(err.to_string().contains("one line"), "{err}");
        let missing = dir.path().join("missing");
        let err = given_secret_key(Some(&missing), None, None).unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
    }

    #[test]
    fn account_flags() {
        assert_eq!(
            parse_account("prod=200000000002"),
            Ok(AccountSpec {
                name: "prod".into(),
                uin: "200000000002".into(),
                fleet: None
            })
        );
        let spec = parse_account("dev=3:fleets/dev.json").unwrap();
        assert_eq!(spec.fleet, Some(PathBuf::from("fleets/dev.json")));
        for bad in ["prod", "prod=", "prod=12a", "=1", "bad name=1", "x=1:"] {
            assert!(parse_account(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_ranges() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").unwrap_err().contains("unit"));
        assert_eq!(
            parse_range("50ms..300ms"),
            Ok(LatencyRange(
                Duration::from_millis(50),
                Duration::from_millis(300)
            ))
        );
        assert_eq!(
            parse_range("10ms"),
            Ok(LatencyRange(
                Duration::from_millis(10),
                Duration::from_millis(10)
            ))
        );
        assert!(parse_range("300ms..50ms").is_err());
    }
}
