//! One file per subcommand; each exposes `Args` and a `run` function.

pub mod call;
pub mod codes;
pub mod demo;
pub mod discover;
pub mod logging;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod runs;
pub mod sim;
pub mod status;
pub mod verify;

/// Reads the credentials the way every command that sends requests does: the process
/// is made non-dumpable first (no core file, no ptrace, holding the SecretKey), and
/// each warning about the credential file is printed, as ssh does for a key file.
pub fn resolve_credentials(
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
