//! What every command that talks to the API or the database sets up the same way:
//! credentials, the client, the store. One place, so that every command reads
//! credentials, warns and refuses alike.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use keyfleet::api::{self, ClientConfig, CvmClient};
use keyfleet::display::escape;
use keyfleet::store::Store;

use crate::GlobalArgs;

/// Reads the credentials the way every command that sends requests does: the process
/// is made non-dumpable first (no core file, no ptrace, holding the SecretKey), and
/// each warning about the credential file is printed, as ssh does for a key file.
pub(crate) fn resolve_credentials(
    profile: Option<&str>,
) -> Result<keyfleet::credentials::Credentials, keyfleet::credentials::CredentialsError> {
    if let Err(err) = keyfleet::secret::forbid_core_dumps() {
        eprintln!("warning: cannot keep the credentials out of core dumps: {err}");
    }
    let resolved = keyfleet::credentials::resolve_credentials(profile)?;
    for warning in &resolved.warnings {
        eprintln!(
            "warning: {}",
            keyfleet::display::escape(&warning.to_string())
        );
    }
    Ok(resolved.credentials)
}

/// The API client the global flags describe (endpoint or template, `--resolve`,
/// `--insecure-http`), with these timeouts and the resolved credentials.
pub(crate) fn client(
    global: &GlobalArgs,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<CvmClient> {
    let client = base_client(
        global,
        global.profile.as_deref(),
        connect_timeout,
        request_timeout,
    )?;
    warn_about_transport(&client);
    match &global.account {
        None => Ok(client),
        Some(name) => account_client(global, client, name, connect_timeout, request_timeout),
    }
}

/// The client of the base credentials (or a tccli `profile`'s).
fn base_client(
    global: &GlobalArgs,
    profile: Option<&str>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<CvmClient> {
    let credentials = resolve_credentials(profile)?;
    let endpoint = global.endpoint();
    tracing::info!(%endpoint, credentials_source = %credentials.source, "API client");
    CvmClient::new(ClientConfig {
        endpoint,
        credentials,
        connect_timeout,
        request_timeout,
        resolve: global.resolve.clone(),
        insecure_http: global.insecure_http,
    })
    .context("cannot set up the API client")
}

/// `--account NAME`: a client sending every call as that account of `--accounts` (or
/// of the Organization's members), built on the base client.
fn account_client(
    global: &GlobalArgs,
    base: CvmClient,
    name: &str,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<CvmClient> {
    let Some(accounts) = load_accounts(global, &base)? else {
        anyhow::bail!(
            "--account {} needs --accounts FILE (or KEYFLEET_ACCOUNTS) or --organization",
            escape(name)
        )
    };
    let account = accounts.get(name, "--account")?;
    tracing::info!(account = %account.name, source = %account.source, "working as one account");
    client_of(global, &base, account, connect_timeout, request_timeout)
}

/// The accounts of `--accounts FILE`, or of the Organization's members
/// (`--organization`, listed with the base credentials); `None` without either.
pub(crate) fn load_accounts(
    global: &GlobalArgs,
    base: &CvmClient,
) -> anyhow::Result<Option<keyfleet::accounts::Accounts>> {
    Ok(match &global.accounts {
        Some(path) => Some(keyfleet::accounts::Accounts::load(path)?),
        None if global.organization => {
            let members = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(keyfleet::accounts::session::organization_members(base))
            })
            .context("--organization: cannot list the Organization's members")?;
            Some(keyfleet::accounts::Accounts::from_members(
                &members,
                &global.member_role,
            )?)
        }
        None => None,
    })
}

/// The base client (the base credentials, or `--profile`'s) and the accounts of
/// `--accounts`/`--organization` (`None` without either).
fn base_and_accounts(
    global: &GlobalArgs,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<(CvmClient, Option<keyfleet::accounts::Accounts>)> {
    let base = base_client(
        global,
        global.profile.as_deref(),
        connect_timeout,
        request_timeout,
    )?;
    let accounts = load_accounts(global, &base)?;
    Ok((base, accounts))
}

/// A client sending every call as `account`, on the base client's endpoint.
fn client_of(
    global: &GlobalArgs,
    base: &CvmClient,
    account: &keyfleet::accounts::Account,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<CvmClient> {
    session_of(global, base, account, connect_timeout, request_timeout)
        .map(keyfleet::accounts::session::AccountClient::into_client)
}

/// `account`'s session on the base client (a profile's credentials read as the
/// global flags say; nothing sent yet).
fn session_of(
    global: &GlobalArgs,
    base: &CvmClient,
    account: &keyfleet::accounts::Account,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<keyfleet::accounts::session::AccountClient> {
    let profile = |profile: &str| {
        base_client(global, Some(profile), connect_timeout, request_timeout)
            .map_err(|err| format!("{err:#}"))
    };
    keyfleet::accounts::session::AccountClient::new(account, base, &profile)
        .map_err(|err| anyhow::anyhow!("account {}: {err}", escape(&account.name)))
}

/// The clients a run over several accounts sends through: the run's own (the base
/// credentials, or `--account`'s) and one per account its rows name (`named`, from
/// `runs.options.accounts`), each from `--accounts FILE` or `--organization`. A run
/// naming no account gets its own client only, exactly as before accounts.
pub(crate) fn estate(
    global: &GlobalArgs,
    run_id: i64,
    named: &[String],
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<keyfleet::accounts::estate::Estate> {
    let own = client(global, connect_timeout, request_timeout)?;
    if named.is_empty() {
        return Ok(keyfleet::accounts::estate::Estate::single(own));
    }
    let (base, accounts) = base_and_accounts(global, connect_timeout, request_timeout)?;
    let Some(accounts) = accounts else {
        anyhow::bail!(
            "run {run_id}'s rows name accounts ({}): give --accounts FILE (or KEYFLEET_ACCOUNTS) \
             or --organization to work on it",
            named
                .iter()
                .map(|n| escape(n).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut clients = std::collections::BTreeMap::new();
    for name in named {
        let account = accounts.get(name, &format!("run {run_id}'s rows"))?;
        clients.insert(
            name.clone(),
            client_of(global, &base, account, connect_timeout, request_timeout)?,
        );
    }
    tracing::info!(
        run_id,
        accounts = clients.len(),
        "working as the accounts the run's rows name"
    );
    Ok(keyfleet::accounts::estate::Estate::new(own, clients))
}

/// The warning `--insecure-http` promises, on stderr, before anything is sent.
pub(crate) fn warn_about_transport(client: &CvmClient) {
    if client.transport() == api::Transport::InsecureHttp {
        eprintln!(
            "warning: --insecure-http: requests to {} travel in clear; anyone on the way can read \
             the SecretId and token and replay a signed request for about 5 minutes",
            escape(client.endpoint())
        );
    }
}

/// A run planned for one account (`--account`) is worked on only as that account, and a
/// run of the base credentials only without `--account`: another account's credentials
/// would send its rows where they do not exist, or worse, where the same ids mean
/// something else.
pub(crate) async fn check_run_account(
    store: &Store,
    run_id: i64,
    global: &GlobalArgs,
) -> anyhow::Result<()> {
    let planned = store.run_account(run_id).await?;
    match (planned.as_deref(), global.account.as_deref()) {
        (None, None) => Ok(()),
        (Some(planned), Some(given)) if planned == given => Ok(()),
        (Some(planned), None) => anyhow::bail!(
            "run {run_id} was planned for account {}: give --accounts FILE (or --organization) \
             and --account {} to work on it",
            escape(planned),
            escape(planned)
        ),
        (None, Some(given)) => anyhow::bail!(
            "run {run_id} was planned with the base credentials, not for account {}: leave \
             --account out to work on it",
            escape(given)
        ),
        (Some(planned), Some(given)) => anyhow::bail!(
            "run {run_id} was planned for account {}, not {}",
            escape(planned),
            escape(given)
        ),
    }
}

/// Opens the database named by `--db` (or `path`).
pub(crate) async fn open_store(path: &Path) -> anyhow::Result<Store> {
    Store::open(path)
        .await
        .with_context(|| format!("cannot use database {}", path.display()))
}

/// One account of a command that works in every account (`discover`, `retire`): the
/// account as the file (or the Organization) describes it, and its sender.
#[derive(Debug, Clone)]
pub(crate) struct AccountSender {
    pub(crate) account: keyfleet::accounts::Account,
    pub(crate) session: keyfleet::accounts::session::AccountClient,
}

impl AccountSender {
    /// A client that sends every call as the account, paced under its identity.
    pub(crate) fn client(&self) -> std::sync::Arc<CvmClient> {
        std::sync::Arc::new(self.session.clone().into_client())
    }
}

/// Every account of `--accounts FILE` (or of the Organization's members), each with
/// its sender, when the command names no `--account`; `None` when it works as one
/// account (no accounts, or `--account NAME`), as before accounts existed. Nothing is
/// assumed yet: a role that cannot be is found by the account's first call.
pub(crate) fn every_account(
    global: &GlobalArgs,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<Option<Vec<AccountSender>>> {
    if global.account.is_some() || !(global.accounts.is_some() || global.organization) {
        return Ok(None);
    }
    account_senders(global, connect_timeout, request_timeout).map(Some)
}

/// Every account of `--accounts FILE` (or of the Organization's members), each with
/// its sender, whatever `--account` says (a run's rows name their accounts); an
/// error when the command has no accounts.
pub(crate) fn account_senders(
    global: &GlobalArgs,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> anyhow::Result<Vec<AccountSender>> {
    let (base, accounts) = base_and_accounts(global, connect_timeout, request_timeout)?;
    warn_about_transport(&base);
    let Some(accounts) = accounts else {
        anyhow::bail!(
            "the work names accounts: give --accounts FILE (or KEYFLEET_ACCOUNTS) or --organization"
        )
    };
    let mut senders = Vec::with_capacity(accounts.len());
    for account in accounts.iter() {
        let session = session_of(global, &base, account, connect_timeout, request_timeout)?;
        senders.push(AccountSender {
            account: account.clone(),
            session,
        });
    }
    tracing::info!(accounts = senders.len(), origin = %accounts.origin(), "working in every account");
    Ok(senders)
}
