//! Where the API credentials and the region come from, following the conventions of
//! tccli and the official SDKs (reference section 4). First match wins:
//!
//! 1. the environment: `TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY`, `TENCENTCLOUD_TOKEN`;
//! 2. a tccli profile: `~/.tccli/NAME.credential` (JSON `secretId`, `secretKey`, `token`),
//!    NAME from `--profile`, else `TCCLI_PROFILE`, else `default`;
//! 3. the SDKs' INI file, `~/.tencentcloud/credentials` then `/etc/tencentcloud/credentials`,
//!    section `[default]`, keys `secret_id` and `secret_key`.
//!
//! The region: `--region`, else `TENCENTCLOUD_REGION`, else the tccli profile's
//! `~/.tccli/NAME.configure` (`_sys_param.region`).
//!
//! Everything is resolved through [`resolve_credentials_from`] and [`resolve_region_from`],
//! which take the environment and the directories as arguments so tests never touch
//! the real ones. A place that exists but is unusable is an error naming it, never a
//! silent fall-through to the next place: falling through could pick another account.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

use crate::secret::Secret;

/// Environment variable holding the SecretId.
pub const ENV_SECRET_ID: &str = "TENCENTCLOUD_SECRET_ID";
/// Environment variable holding the SecretKey.
pub const ENV_SECRET_KEY: &str = "TENCENTCLOUD_SECRET_KEY";
/// Environment variable holding a temporary credential's session token.
pub const ENV_TOKEN: &str = "TENCENTCLOUD_TOKEN";
/// Environment variable holding the region.
pub const ENV_REGION: &str = "TENCENTCLOUD_REGION";
/// Environment variable naming the tccli profile.
pub const ENV_PROFILE: &str = "TCCLI_PROFILE";
/// The tccli profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";
/// The system-wide directory of the SDKs' INI file.
pub const ETC_DIR: &str = "/etc/tencentcloud";

/// API credentials and where they were found. `Debug` shows the SecretId and the
/// source but prints the SecretKey and token as `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub secret_id: String,
    pub secret_key: Secret,
    /// Session token of temporary credentials, sent as `X-TC-Token`.
    pub token: Option<Secret>,
    /// Where these were found, for messages: `environment`, `tccli profile default (PATH)`, a file path.
    pub source: String,
}

/// Credentials and what the CLI should warn about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub credentials: Credentials,
    /// Problems with the file they came from (readable by others...): the library
    /// never prints, the CLI shows each as a warning, as ssh does for a key file.
    pub warnings: Vec<FileWarning>,
}

/// A credential file, or its directory, that others can read or change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWarning {
    pub path: PathBuf,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for FileWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

/// A region and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    /// `--region`, `TENCENTCLOUD_REGION`, or `tccli profile NAME (PATH)`.
    pub source: String,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why credentials or a region could not be resolved. No variant carries a secret:
/// parse errors report a line or a field name, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// One variable of the environment pair is set and the other is not.
    #[error("{present} is set but {missing} is not: set both, or neither to use a profile or file")]
    HalfSetEnvironment {
        present: &'static str,
        missing: &'static str,
    },
    /// `TENCENTCLOUD_TOKEN` is set without the SecretId and SecretKey it belongs to:
    /// a session token is issued with a temporary key pair and means nothing alone.
    #[error(
        "{token} is set but {id} and {key} are not: a session token works only with the \
         temporary SecretId and SecretKey issued with it; set all three, or unset {token} \
         to use a profile or file"
    )]
    TokenWithoutKeys {
        token: &'static str,
        id: &'static str,
        key: &'static str,
    },
    /// A profile was named (by `--profile` or `TCCLI_PROFILE`) and has no credential file.
    #[error("tccli profile {profile:?} was asked for, but {} does not exist", path.display())]
    ProfileNotFound { profile: String, path: PathBuf },
    /// A profile name that would escape `~/.tccli/`.
    #[error("tccli profile name {0:?} is not a plain name")]
    BadProfileName(String),
    /// A file exists but could not be read.
    #[error("cannot read {}: {detail}", path.display())]
    Unreadable { path: PathBuf, detail: String },
    /// A file was read but does not hold usable credentials or settings.
    #[error("cannot use {}: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
    /// No credentials anywhere.
    #[error("no Tencent Cloud credentials found; looked in:\n  - {}", looked.join("\n  - "))]
    NotFound { looked: Vec<String> },
    /// No region anywhere.
    #[error("no region given; looked in:\n  - {}", looked.join("\n  - "))]
    NoRegion { looked: Vec<String> },
    /// A region that is not a region name.
    #[error("region {value:?} from {source_name} is not a region name such as ap-guangzhou")]
    BadRegion { value: String, source_name: String },
}

/// Resolves credentials from the real environment, `$HOME` and `/etc/tencentcloud`.
pub fn resolve_credentials(profile: Option<&str>) -> Result<Resolved, CredentialsError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    resolve_credentials_from(
        &|name| std::env::var(name).ok(),
        home.as_deref(),
        Path::new(ETC_DIR),
        profile,
    )
}

/// Resolves the region from `flag`, the real environment and `$HOME`.
pub fn resolve_region(
    flag: Option<&str>,
    profile: Option<&str>,
) -> Result<Region, CredentialsError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    resolve_region_from(
        flag,
        &|name| std::env::var(name).ok(),
        home.as_deref(),
        profile,
    )
}

/// Resolves credentials, first match wins (see the module docs). `env` looks up an
/// environment variable, `home` is the user's home directory (`None` when unknown),
/// `etc_dir` stands for `/etc/tencentcloud`, `profile` is the `--profile` flag.
pub fn resolve_credentials_from(
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
    etc_dir: &Path,
    profile: Option<&str>,
) -> Result<Resolved, CredentialsError> {
    // An empty variable counts as unset, as in the shells' `${VAR:-}` idiom.
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut looked = Vec::new();
    let from_file = |credentials: Credentials, path: &Path| Resolved {
        credentials,
        warnings: file_warnings(path),
    };

    match (var(ENV_SECRET_ID), var(ENV_SECRET_KEY)) {
        (Some(secret_id), Some(mut secret_key)) => {
            if profile.is_some() {
                tracing::warn!(
                    "credentials come from the environment ({ENV_SECRET_ID}); the named tccli profile is used only for the region"
                );
            }
            let mut token = var(ENV_TOKEN);
            let credentials = Credentials {
                secret_id: secret_id.trim().to_string(),
                secret_key: Secret::new(secret_key.trim()),
                token: token.as_deref().map(|t| Secret::new(t.trim())),
                source: "environment".to_string(),
            };
            // The untrimmed copies: only the `Secret`s keep the values.
            secret_key.zeroize();
            token.zeroize();
            return Ok(Resolved {
                credentials,
                warnings: Vec::new(),
            });
        }
        (Some(_), None) => {
            return Err(CredentialsError::HalfSetEnvironment {
                present: ENV_SECRET_ID,
                missing: ENV_SECRET_KEY,
            });
        }
        (None, Some(_)) => {
            return Err(CredentialsError::HalfSetEnvironment {
                present: ENV_SECRET_KEY,
                missing: ENV_SECRET_ID,
            });
        }
        // A token alone would otherwise be dropped and the request signed with a
        // profile's long-term key: another identity than the one the user set up.
        (None, None) if var(ENV_TOKEN).is_some() => {
            return Err(CredentialsError::TokenWithoutKeys {
                token: ENV_TOKEN,
                id: ENV_SECRET_ID,
                key: ENV_SECRET_KEY,
            });
        }
        (None, None) => looked.push(format!(
            "environment ({ENV_SECRET_ID}, {ENV_SECRET_KEY}): not set"
        )),
    }

    let (profile_name, named) = profile_name(profile, &var)?;
    match home {
        Some(home) => {
            let path = home
                .join(".tccli")
                .join(format!("{profile_name}.credential"));
            match read_optional(&path)? {
                Some(mut text) => {
                    let parsed = tccli_credentials(&path, &text, &profile_name);
                    text.zeroize();
                    return parsed.map(|credentials| from_file(credentials, &path));
                }
                None if named => {
                    return Err(CredentialsError::ProfileNotFound {
                        profile: profile_name,
                        path,
                    });
                }
                None => looked.push(format!(
                    "tccli profile {profile_name} ({}): not found",
                    path.display()
                )),
            }
        }
        None => looked.push(format!(
            "tccli profile {profile_name} (~/.tccli/{profile_name}.credential): HOME is not set"
        )),
    }

    let mut ini_paths = Vec::new();
    match home {
        Some(home) => ini_paths.push(home.join(".tencentcloud").join("credentials")),
        None => looked.push("~/.tencentcloud/credentials: HOME is not set".to_string()),
    }
    ini_paths.push(etc_dir.join("credentials"));
    for path in ini_paths {
        match read_optional(&path)? {
            Some(mut text) => {
                let parsed = ini_credentials(&path, &text);
                text.zeroize();
                match parsed? {
                    Some(credentials) => return Ok(from_file(credentials, &path)),
                    None => looked.push(format!("{}: no [default] section", path.display())),
                }
            }
            None => looked.push(format!("{}: not found", path.display())),
        }
    }

    Err(CredentialsError::NotFound { looked })
}

/// Resolves the region: `flag` (the `--region` value), else `TENCENTCLOUD_REGION`, else
/// the tccli profile's `.configure` file. The result is checked with [`crate::ids::is_region`].
pub fn resolve_region_from(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
    profile: Option<&str>,
) -> Result<Region, CredentialsError> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let checked = |value: &str, source: String| {
        let name = value.trim().to_string();
        if crate::ids::is_region(&name) {
            Ok(Region { name, source })
        } else {
            Err(CredentialsError::BadRegion {
                value: crate::ids::shorten(value),
                source_name: source,
            })
        }
    };
    let mut looked = Vec::new();

    match flag {
        Some(value) => return checked(value, "--region".to_string()),
        None => looked.push("--region: not given".to_string()),
    }
    match var(ENV_REGION) {
        Some(value) => return checked(&value, ENV_REGION.to_string()),
        None => looked.push(format!("{ENV_REGION}: not set")),
    }

    let (profile_name, _) = profile_name(profile, &var)?;
    match home {
        Some(home) => {
            let path = home
                .join(".tccli")
                .join(format!("{profile_name}.configure"));
            match read_optional(&path)? {
                Some(text) => match tccli_region(&path, &text)? {
                    Some(value) => {
                        let source = format!("tccli profile {profile_name} ({})", path.display());
                        return checked(&value, source);
                    }
                    None => looked.push(format!("{}: no _sys_param.region", path.display())),
                },
                None => looked.push(format!("{}: not found", path.display())),
            }
        }
        None => looked.push(format!(
            "~/.tccli/{profile_name}.configure: HOME is not set"
        )),
    }

    Err(CredentialsError::NoRegion { looked })
}

/// The profile name and whether it was asked for explicitly.
fn profile_name(
    flag: Option<&str>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, bool), CredentialsError> {
    let (name, named) = match flag.filter(|p| !p.trim().is_empty()) {
        Some(name) => (name.trim().to_string(), true),
        None => match var(ENV_PROFILE) {
            Some(name) => (name.trim().to_string(), true),
            None => (DEFAULT_PROFILE.to_string(), false),
        },
    };
    // The name becomes a file name: refuse anything that could walk out of ~/.tccli.
    if name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(CredentialsError::BadProfileName(crate::ids::shorten(&name)));
    }
    Ok((name, named))
}

/// The file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, CredentialsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(CredentialsError::Unreadable {
            path: path.to_path_buf(),
            detail: err.to_string(),
        }),
    }
}

fn malformed(path: &Path, detail: impl Into<String>) -> CredentialsError {
    CredentialsError::Malformed {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Parses a tccli `NAME.credential` file: `{"secretId": .., "secretKey": .., "token": ..}`.
fn tccli_credentials(
    path: &Path,
    text: &str,
    profile: &str,
) -> Result<Credentials, CredentialsError> {
    let mut json = parse_json_object(path, text)?;
    let parsed = tccli_fields(path, &json, profile);
    for value in json.values_mut() {
        scrub(value);
    }
    parsed
}

fn tccli_fields(
    path: &Path,
    json: &serde_json::Map<String, serde_json::Value>,
    profile: &str,
) -> Result<Credentials, CredentialsError> {
    let field = |name: &str| -> Result<Option<String>, CredentialsError> {
        match json.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(malformed(path, format!("{name} is not a string"))),
        }
    };
    let token = field("token")?;
    let missing = |name: &str| {
        let also = if token.is_some() {
            " (a token works only with the temporary secretId and secretKey issued with it)"
        } else {
            ""
        };
        malformed(path, format!("{name} is missing or empty{also}"))
    };
    let secret_id = field("secretId")?.ok_or_else(|| missing("secretId"))?;
    let secret_key = field("secretKey")?.ok_or_else(|| missing("secretKey"))?;
    Ok(Credentials {
        secret_id,
        secret_key: Secret::new(secret_key),
        token: token.map(Secret::new),
        source: format!("tccli profile {profile} ({})", path.display()),
    })
}

/// Overwrites every string in a parsed credential file, which held the SecretKey.
fn scrub(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => text.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
        serde_json::Value::Object(map) => map.values_mut().for_each(scrub),
        _ => {}
    }
}

/// ssh's rule for a private key file, applied to a credential file: warn when group
/// or others may read it, or may replace it through its directory.
fn file_warnings(path: &Path) -> Vec<FileWarning> {
    let mut warnings = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                warnings.push(FileWarning {
                    path: path.to_path_buf(),
                    problem: format!(
                        "readable or writable by group or others (mode {mode:04o}): whoever can \
                         read it holds your SecretKey; chmod 600 {}",
                        path.display()
                    ),
                });
            }
        }
        if let Some(dir) = path.parent()
            && let Ok(meta) = std::fs::metadata(dir)
        {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                warnings.push(FileWarning {
                    path: dir.to_path_buf(),
                    problem: format!(
                        "writable by group or others (mode {mode:04o}): they can replace the \
                         credential file in it; chmod go-w {}",
                        dir.display()
                    ),
                });
            }
        }
    }
    warnings
}

/// Reads `_sys_param.region` from a tccli `NAME.configure` file.
fn tccli_region(path: &Path, text: &str) -> Result<Option<String>, CredentialsError> {
    let json = parse_json_object(path, text)?;
    match json.get("_sys_param").and_then(|p| p.get("region")) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(malformed(path, "_sys_param.region is not a string")),
    }
}

fn parse_json_object(
    path: &Path,
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, CredentialsError> {
    // serde_json's message names a line and column, never the text around it,
    // so a secret in a broken file stays out of the error.
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(path, "not a JSON object")),
        Err(err) => Err(malformed(path, format!("not valid JSON ({err})"))),
    }
}

/// Parses the SDKs' INI file. `Ok(None)` when it has no `[default]` section.
fn ini_credentials(path: &Path, text: &str) -> Result<Option<Credentials>, CredentialsError> {
    let Some(mut section) = ini_section(path, text, "default")? else {
        return Ok(None);
    };
    let parsed = ini_default(path, &section);
    for (key, value) in &mut section {
        key.zeroize();
        value.zeroize();
    }
    parsed
}

fn ini_default(
    path: &Path,
    section: &[(String, String)],
) -> Result<Option<Credentials>, CredentialsError> {
    let get = |key: &str| {
        section
            .iter()
            .rev() // the last assignment wins, as in Python's configparser
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let secret_id =
        get("secret_id").ok_or_else(|| malformed(path, "[default] has no secret_id"))?;
    let secret_key =
        get("secret_key").ok_or_else(|| malformed(path, "[default] has no secret_key"))?;
    Ok(Some(Credentials {
        secret_id,
        secret_key: Secret::new(secret_key),
        token: None,
        source: path.display().to_string(),
    }))
}

/// The `key = value` pairs of one INI section, or `None` when the section is absent.
/// Comments start with `#` or `;`; `:` also separates, as configparser allows.
fn ini_section(
    path: &Path,
    text: &str,
    wanted: &str,
) -> Result<Option<Vec<(String, String)>>, CredentialsError> {
    let mut current: Option<String> = None;
    let mut found: Option<Vec<(String, String)>> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| {
                malformed(path, format!("line {}: unclosed [section]", index + 1))
            })?;
            let name = name.trim().to_string();
            if name == wanted {
                found.get_or_insert_with(Vec::new);
            }
            current = Some(name);
            continue;
        }
        // Never echo the line: it may hold a secret.
        let Some((key, value)) = line.split_once(['=', ':']) else {
            return Err(malformed(
                path,
                format!("line {}: expected key = value", index + 1),
            ));
        };
        match (&current, found.as_mut()) {
            (Some(section), Some(pairs)) if section == wanted => {
                pairs.push((key.trim().to_string(), value.trim().to_string()));
            }
            (None, _) => {
                return Err(malformed(
                    path,
                    format!("line {}: key = value before any [section]", index + 1),
                ));
            }
            _ => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
    const TOKEN: &str = "tokTOKENtok123secret";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    struct Dirs {
        home: tempfile::TempDir,
        etc: tempfile::TempDir,
    }

    impl Dirs {
        fn new() -> Dirs {
            Dirs {
                home: tempfile::tempdir().unwrap(),
                etc: tempfile::tempdir().unwrap(),
            }
        }
        fn write_home(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.home.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
        fn write_etc(&self, text: &str) -> PathBuf {
            let path = self.etc.path().join("credentials");
            std::fs::write(&path, text).unwrap();
            path
        }
        fn resolve(
            &self,
            env: &[(&str, &str)],
            profile: Option<&str>,
        ) -> Result<Credentials, CredentialsError> {
            resolve_credentials_from(
                &env_of(env),
                Some(self.home.path()),
                self.etc.path(),
                profile,
            )
            .map(|resolved| resolved.credentials)
        }
    }

    fn tccli_json(id: &str) -> String {
        format!(r#"{{"secretId": "{id}", "secretKey": "{KEY}", "token": ""}}"#)
    }

    #[test]
    fn environment_wins_over_every_file() {
        let dirs = Dirs::new();
        dirs.write_home(".tccli/default.credential", &tccli_json("AKIDprofile"));
        dirs.write_home(
            ".tencentcloud/credentials",
            "[default]\nsecret_id = AKIDini\nsecret_key = x\n",
        );
        let creds = dirs
            .resolve(
                &[
                    (ENV_SECRET_ID, "AKIDenv"),
                    (ENV_SECRET_KEY, KEY),
                    (ENV_TOKEN, TOKEN),
                ],
                None,
            )
            .unwrap();
        assert_eq!(creds.secret_id, "AKIDenv");
        assert_eq!(creds.secret_key.expose(), KEY);
        assert_eq!(creds.token.as_ref().map(Secret::expose), Some(TOKEN));
        assert_eq!(creds.source, "environment");
    }

    #[test]
    fn half_set_environment_names_the_missing_variable() {
        let dirs = Dirs::new();
        dirs.write_home(".tccli/default.credential", &tccli_json("AKIDprofile"));
        let err = dirs
            .resolve(&[(ENV_SECRET_ID, "AKIDenv")], None)
            .unwrap_err();
        assert_eq!(
            err,
            CredentialsError::HalfSetEnvironment {
                present: ENV_SECRET_ID,
                missing: ENV_SECRET_KEY
            }
        );
        assert!(err.to_string().contains("TENCENTCLOUD_SECRET_KEY is not"));
        let err = dirs.resolve(&[(ENV_SECRET_KEY, KEY)], None).unwrap_err();
        assert!(
            err.to_string().contains("TENCENTCLOUD_SECRET_ID is not"),
            "{err}"
        );
        assert!(!err.to_string().contains(KEY));
    }

    /// The audit's L3: a token alone was dropped without a word and the request
    /// signed with the profile's long-term key. Now it is an error that says so, and
    /// a profile's token without its key pair names the token too.
    #[test]
    fn a_token_without_its_key_pair_is_an_error_not_a_fall_through() {
        let dirs = Dirs::new();
        dirs.write_home(".tccli/default.credential", &tccli_json("AKIDlongterm"));
        let err = dirs.resolve(&[(ENV_TOKEN, TOKEN)], None).unwrap_err();
        assert_eq!(
            err,
            CredentialsError::TokenWithoutKeys {
                token: ENV_TOKEN,
                id: ENV_SECRET_ID,
                key: ENV_SECRET_KEY
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("TENCENTCLOUD_TOKEN is set but TENCENTCLOUD_SECRET_ID"),
            "{text}"
        );
        assert!(!text.contains(TOKEN), "{text}");
        // Whitespace only counts as unset, as for the other variables.
        assert_eq!(
            dirs.resolve(&[(ENV_TOKEN, "  ")], None).unwrap().secret_id,
            "AKIDlongterm"
        );

        let profile = Dirs::new();
        profile.write_home(
            ".tccli/default.credential",
            &format!(r#"{{"token": "{TOKEN}"}}"#),
        );
        let err = profile.resolve(&[], None).unwrap_err().to_string();
        assert!(
            err.contains("secretId is missing or empty (a token works only with"),
            "{err}"
        );
        assert!(!err.contains(TOKEN), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_credential_file_others_can_read_is_warned_about_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let dirs = Dirs::new();
        let path = dirs.write_home(".tccli/default.credential", &tccli_json("AKIDloose"));
        let resolve = || {
            resolve_credentials_from(&env_of(&[]), Some(dirs.home.path()), dirs.etc.path(), None)
                .unwrap()
        };
        chmod(&path, 0o600);
        chmod(path.parent().unwrap(), 0o700);
        assert_eq!(resolve().warnings, Vec::new());

        // The audit's case: a 0666 file in a 0777 directory.
        chmod(&path, 0o666);
        chmod(path.parent().unwrap(), 0o777);
        let resolved = resolve();
        assert_eq!(resolved.credentials.secret_id, "AKIDloose");
        let shown: Vec<String> = resolved.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(resolved.warnings.len(), 2, "{shown:?}");
        assert_eq!(resolved.warnings[0].path, path);
        assert!(
            shown[0].contains("mode 0666") && shown[0].contains("chmod 600"),
            "{shown:?}"
        );
        assert_eq!(resolved.warnings[1].path, path.parent().unwrap());
        assert!(shown[1].contains("mode 0777"), "{shown:?}");
        assert!(!shown.concat().contains(KEY));

        // The INI file gets the same check; the environment has no file to check.
        let ini = dirs.write_etc("[default]\nsecret_id = AKIDetc\nsecret_key = k\n");
        std::fs::remove_file(&path).unwrap();
        chmod(&ini, 0o644);
        let resolved = resolve();
        assert_eq!(resolved.warnings.len(), 1);
        assert_eq!(resolved.warnings[0].path, ini);
        let env = resolve_credentials_from(
            &env_of(&[(ENV_SECRET_ID, "AKIDenv"), (ENV_SECRET_KEY, KEY)]),
            Some(dirs.home.path()),
            dirs.etc.path(),
            None,
        )
        .unwrap();
        assert!(env.warnings.is_empty());
    }

    #[test]
    fn tccli_profile_by_flag_env_or_default() {
        let dirs = Dirs::new();
        dirs.write_home(".tccli/default.credential", &tccli_json("AKIDdefault"));
        dirs.write_home(
            ".tccli/prod.credential",
            &format!(r#"{{"secretId": "AKIDprod", "secretKey": "{KEY}", "token": "{TOKEN}"}}"#),
        );
        dirs.write_home(".tccli/envprof.credential", &tccli_json("AKIDenvprof"));

        let creds = dirs.resolve(&[], None).unwrap();
        assert_eq!(creds.secret_id, "AKIDdefault");
        assert_eq!(creds.token, None, "an empty token is no token");
        assert!(
            creds.source.starts_with("tccli profile default ("),
            "{}",
            creds.source
        );
        assert!(creds.source.ends_with("default.credential)"));

        let creds = dirs.resolve(&[(ENV_PROFILE, "envprof")], None).unwrap();
        assert_eq!(creds.secret_id, "AKIDenvprof");

        let creds = dirs
            .resolve(&[(ENV_PROFILE, "envprof")], Some("prod"))
            .unwrap();
        assert_eq!(creds.secret_id, "AKIDprod");
        assert_eq!(creds.token.as_ref().map(Secret::expose), Some(TOKEN));
    }

    #[test]
    fn a_named_profile_that_is_missing_is_an_error_not_a_fall_through() {
        let dirs = Dirs::new();
        dirs.write_home(
            ".tencentcloud/credentials",
            "[default]\nsecret_id = AKIDini\nsecret_key = x\n",
        );
        let err = dirs.resolve(&[], Some("prod")).unwrap_err();
        assert!(
            matches!(err, CredentialsError::ProfileNotFound { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("prod.credential"), "{err}");
        assert!(matches!(
            dirs.resolve(&[], Some("../etc/passwd")).unwrap_err(),
            CredentialsError::BadProfileName(_)
        ));
    }

    #[test]
    fn ini_file_in_home_then_etc() {
        let dirs = Dirs::new();
        let etc = dirs.write_etc("[default]\nsecret_id = AKIDetc\nsecret_key = etckey\n");
        let creds = dirs.resolve(&[], None).unwrap();
        assert_eq!(creds.secret_id, "AKIDetc");
        assert_eq!(creds.source, etc.display().to_string());

        let home = dirs.write_home(
            ".tencentcloud/credentials",
            "# comment\n[other]\nsecret_id = AKIDother\n\n[default]\n; another\nsecret_id = AKIDhome\nsecret_key: homekey\n",
        );
        let creds = dirs.resolve(&[], None).unwrap();
        assert_eq!(creds.secret_id, "AKIDhome");
        assert_eq!(creds.secret_key.expose(), "homekey");
        assert_eq!(creds.source, home.display().to_string());
    }

    #[test]
    fn ini_without_default_section_falls_through() {
        let dirs = Dirs::new();
        dirs.write_home(
            ".tencentcloud/credentials",
            "[prod]\nsecret_id = a\nsecret_key = b\n",
        );
        dirs.write_etc("[default]\nsecret_id = AKIDetc\nsecret_key = etckey\n");
        assert_eq!(dirs.resolve(&[], None).unwrap().secret_id, "AKIDetc");
    }

    #[test]
    fn broken_files_are_named_and_their_contents_are_not_echoed() {
        let dirs = Dirs::new();
        let path = dirs.write_home(
            ".tccli/default.credential",
            &format!("{{\"secretKey\": \"{KEY}\""),
        );
        let err = dirs.resolve(&[], None).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains(KEY));

        let dirs = Dirs::new();
        dirs.write_home(
            ".tccli/default.credential",
            &format!(r#"{{"secretKey": "{KEY}"}}"#),
        );
        let err = dirs.resolve(&[], None).unwrap_err();
        assert!(err.to_string().contains("secretId is missing"), "{err}");

        let dirs = Dirs::new();
        let path = dirs.write_home(
            ".tencentcloud/credentials",
            &format!("[default]\nsecret_id = AKID\n{KEY}\n"),
        );
        let err = dirs.resolve(&[], None).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains(&path.display().to_string()) && shown.contains("line 3"),
            "{shown}"
        );
        assert!(!shown.contains(KEY));

        let dirs = Dirs::new();
        dirs.write_etc("[default]\nsecret_id = AKID\n");
        let err = dirs.resolve(&[], None).unwrap_err();
        assert!(err.to_string().contains("no secret_key"), "{err}");
    }

    #[test]
    fn nothing_found_names_every_place() {
        let dirs = Dirs::new();
        let err = dirs.resolve(&[], None).unwrap_err();
        let text = err.to_string();
        for place in [
            "TENCENTCLOUD_SECRET_ID",
            "tccli profile default",
            ".tccli/default.credential",
            ".tencentcloud/credentials",
            &dirs.etc.path().join("credentials").display().to_string(),
        ] {
            assert!(text.contains(place), "{place} missing from: {text}");
        }

        let err = resolve_credentials_from(&env_of(&[]), None, dirs.etc.path(), None).unwrap_err();
        assert!(err.to_string().contains("HOME is not set"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let dirs = Dirs::new();
        let creds = dirs
            .resolve(
                &[
                    (ENV_SECRET_ID, "AKIDenv"),
                    (ENV_SECRET_KEY, KEY),
                    (ENV_TOKEN, TOKEN),
                ],
                None,
            )
            .unwrap();
        let shown = format!("{creds:?} {:#?}", creds);
        assert!(
            shown.contains("AKIDenv") && shown.contains("***"),
            "{shown}"
        );
        assert!(!shown.contains(KEY) && !shown.contains(TOKEN), "{shown}");

        // Errors from every path a secret passes through: a half-set pair (also with the
        // key pasted into the SecretId variable by mistake) and broken files holding it.
        let mut errors = vec![
            dirs.resolve(&[(ENV_SECRET_KEY, KEY)], None).unwrap_err(),
            dirs.resolve(&[(ENV_SECRET_ID, KEY)], None).unwrap_err(),
        ];
        dirs.write_home(
            ".tccli/default.credential",
            &format!("{{\"secretKey\": {KEY}}}"),
        );
        errors.push(dirs.resolve(&[], None).unwrap_err());
        dirs.write_home(
            ".tccli/p.credential",
            &format!("{{\"secretId\": 1, \"secretKey\": \"{KEY}\"}}"),
        );
        errors.push(dirs.resolve(&[], Some("p")).unwrap_err());
        assert_eq!(errors.len(), 4);
        for err in errors {
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(KEY), "{shown}");
        }
    }

    #[test]
    fn region_order() {
        let dirs = Dirs::new();
        dirs.write_home(
            ".tccli/default.configure",
            r#"{"_sys_param": {"region": "ap-shanghai", "output": "json"}, "cvm": {}}"#,
        );
        let home = Some(dirs.home.path());
        let env = env_of(&[(ENV_REGION, "ap-beijing")]);

        let region = resolve_region_from(Some("ap-guangzhou"), &env, home, None).unwrap();
        assert_eq!(
            (region.name.as_str(), region.source.as_str()),
            ("ap-guangzhou", "--region")
        );
        let region = resolve_region_from(None, &env, home, None).unwrap();
        assert_eq!(
            (region.name.as_str(), region.source.as_str()),
            ("ap-beijing", ENV_REGION)
        );
        let region = resolve_region_from(None, &env_of(&[]), home, None).unwrap();
        assert_eq!(region.name, "ap-shanghai");
        assert!(
            region.source.starts_with("tccli profile default"),
            "{}",
            region.source
        );

        let err = resolve_region_from(None, &env_of(&[]), home, Some("prod")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--region")
                && text.contains(ENV_REGION)
                && text.contains("prod.configure"),
            "{text}"
        );

        let err = resolve_region_from(Some("Guangzhou"), &env, home, None).unwrap_err();
        assert!(matches!(err, CredentialsError::BadRegion { .. }), "{err:?}");

        dirs.write_home(".tccli/broken.configure", "{");
        let err = resolve_region_from(None, &env_of(&[]), home, Some("broken")).unwrap_err();
        assert!(err.to_string().contains("broken.configure"), "{err}");
    }
}
