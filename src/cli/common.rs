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
    let credentials = resolve_credentials(global.profile.as_deref())?;
    let endpoint = global.endpoint();
    tracing::info!(%endpoint, credentials_source = %credentials.source, "API client");
    let client = CvmClient::new(ClientConfig {
        endpoint,
        credentials,
        connect_timeout,
        request_timeout,
        resolve: global.resolve.clone(),
        insecure_http: global.insecure_http,
    })
    .context("cannot set up the API client")?;
    warn_about_transport(&client);
    Ok(client)
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

/// Opens the database named by `--db` (or `path`).
pub(crate) async fn open_store(path: &Path) -> anyhow::Result<Store> {
    Store::open(path)
        .await
        .with_context(|| format!("cannot use database {}", path.display()))
}
