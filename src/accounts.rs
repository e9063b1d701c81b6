//! The accounts of a many-account run (issue 23): the `--accounts FILE`
//! (`KEYFLEET_ACCOUNTS`), TOML, one table per account:
//!
//! ```toml
//! [accounts.main]                 # no source: the base credentials (env, --profile, INI)
//! [accounts.prod-eu]
//! role_arn = "qcs::cam::uin/200000000002:roleName/KeyRotation"
//! session_name = "keyfleet"       # optional, as are duration = "2h" and external_id
//! regions = ["eu-frankfurt"]      # optional: the regions discover walks for this account
//! [accounts.dev]
//! profile = "dev"                 # a tccli profile
//! ```
//!
//! or the Organization's members (`--organization`, [`Accounts::from_members`]), each
//! reached by assuming one role. This module only reads and checks: it holds no
//! credential and sends nothing ([`session`] turns an account into credentials).
//! Every error names the file and the table, never a value that could be a secret
//! (an `external_id` is shown as `***`).

pub mod estate;
pub mod session;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;

/// Environment variable naming the accounts file (`--accounts`).
pub const ENV_ACCOUNTS: &str = "KEYFLEET_ACCOUNTS";
/// The `RoleSessionName` sent when the file names none.
pub const DEFAULT_SESSION_NAME: &str = "keyfleet";
/// The role the Organization's administrator assumes in each member by default.
pub const DEFAULT_MEMBER_ROLE: &str = "OrganizationAccessControlRole";
/// AssumeRole's `DurationSeconds` when the file names none (the API's default).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(7200);
/// The longest `DurationSeconds` AssumeRole accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(43_200);
/// Longest account name: it is stored with every row of a run and printed in reports.
pub const MAX_NAME_LEN: usize = 64;
/// Largest accounts file read: a few thousand accounts fit many times over.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Every account of a run, by name (sorted), and where they were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    /// The file, or `--organization`, for messages.
    origin: String,
    accounts: BTreeMap<String, Account>,
}

/// One account: its name (the `account` column of the rows), how its credentials
/// are obtained, and the regions `discover` walks in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub source: Source,
    /// `None`: every region the account's DescribeRegions lists.
    pub regions: Option<Vec<String>>,
}

/// Where an account's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The base credentials (environment, `--profile`, the SDKs' INI file).
    Base,
    /// A role assumed (STS AssumeRole) with the base credentials.
    Role(Role),
    /// A tccli profile of its own (`~/.tccli/NAME.credential`).
    Profile(String),
}

/// A role to assume: AssumeRole's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// `qcs::cam::uin/<uin>:roleName/<name>` (or `:role/<id>`).
    pub arn: String,
    /// `RoleSessionName`: 2-128 characters of `[A-Za-z0-9_+=,.@-]`.
    pub session_name: String,
    /// `DurationSeconds`, at most [`MAX_DURATION`].
    pub duration: Duration,
    /// `ExternalId`, when the role's trust policy asks for one; never shown.
    pub external_id: Option<Secret>,
}

impl Role {
    /// A role with the default session name and duration.
    pub fn new(arn: impl Into<String>) -> Role {
        Role {
            arn: arn.into(),
            session_name: DEFAULT_SESSION_NAME.to_string(),
            duration: DEFAULT_DURATION,
            external_id: None,
        }
    }

    /// The UIN of the account that owns the role (the digits after `uin/`).
    pub fn owner_uin(&self) -> Option<&str> {
        role_arn_parts(&self.arn).map(|(uin, _)| uin)
    }
}

/// One member of the Organization (`DescribeOrganizationMembers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub uin: String,
    pub name: String,
}

/// Why the accounts could not be read. Every variant names the file (or
/// `--organization`) and, where it applies, the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read the accounts file {}: {detail}", path.display())]
    Unreadable { path: PathBuf, detail: String },
    #[error("accounts file {}: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
    #[error("accounts file {}: [accounts.{account}]: {detail}", path.display())]
    BadAccount {
        path: PathBuf,
        account: String,
        detail: String,
    },
    /// A run's rows name an account the file does not have.
    #[error(
        "account {account:?} is used by {used_by} but {origin} has no [accounts.{account}] \
         (it has: {known})"
    )]
    Missing {
        account: String,
        used_by: String,
        origin: String,
        known: String,
    },
    #[error("--organization: {0}")]
    Organization(String),
}

impl Accounts {
    /// Reads and checks the accounts file at `path`.
    pub fn load(path: &Path) -> Result<Accounts, AccountsError> {
        let unreadable = |detail: String| AccountsError::Unreadable {
            path: path.to_path_buf(),
            detail,
        };
        let meta = std::fs::metadata(path).map_err(|err| unreadable(err.to_string()))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(unreadable(format!(
                "larger than {} MiB",
                MAX_FILE_BYTES / 1024 / 1024
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|err| unreadable(err.to_string()))?;
        Accounts::parse(path, &text)
    }

    /// Parses the text of an accounts file; `path` is only for messages.
    pub fn parse(path: &Path, text: &str) -> Result<Accounts, AccountsError> {
        let malformed = |detail: String| AccountsError::Malformed {
            path: path.to_path_buf(),
            detail,
        };
        // toml's own Display quotes the offending line; the line number and the
        // message are enough, and keep an external_id out of the error.
        let table: toml::Table = toml::from_str(text).map_err(|err| {
            let line = err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = err.message().trim().to_string();
            malformed(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        })?;
        let mut accounts = BTreeMap::new();
        for (key, value) in &table {
            if key != "accounts" {
                return Err(malformed(format!(
                    "unknown top-level key {:?}: the file holds [accounts.NAME] tables only",
                    crate::ids::shorten(key)
                )));
            }
            let toml::Value::Table(tables) = value else {
                return Err(malformed(
                    "`accounts` must be tables: [accounts.NAME]".to_string(),
                ));
            };
            for (name, body) in tables {
                let account = parse_account(path, name, body)?;
                accounts.insert(name.clone(), account);
            }
        }
        if accounts.is_empty() {
            return Err(malformed(
                "no account: add at least one [accounts.NAME] table".to_string(),
            ));
        }
        Ok(Accounts {
            origin: format!("accounts file {}", path.display()),
            accounts,
        })
    }

    /// The Organization's members as accounts, each reached by assuming `role` in
    /// it (`qcs::cam::uin/<member uin>:roleName/<role>`), named by its UIN.
    pub fn from_members(members: &[Member], role: &str) -> Result<Accounts, AccountsError> {
        if !is_role_name(role) {
            return Err(AccountsError::Organization(format!(
                "--member-role {:?} is not a role name",
                crate::ids::shorten(role)
            )));
        }
        let mut accounts = BTreeMap::new();
        for member in members {
            if member.uin.is_empty() || !member.uin.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AccountsError::Organization(format!(
                    "a member's UIN {:?} is not a number",
                    crate::ids::shorten(&member.uin)
                )));
            }
            let name = member.uin.clone();
            let arn = format!("qcs::cam::uin/{}:roleName/{role}", member.uin);
            accounts.insert(
                name.clone(),
                Account {
                    name,
                    source: Source::Role(Role::new(arn)),
                    regions: None,
                },
            );
        }
        if accounts.is_empty() {
            return Err(AccountsError::Organization(
                "the Organization lists no member".to_string(),
            ));
        }
        Ok(Accounts {
            origin: "--organization".to_string(),
            accounts,
        })
    }

    /// Where the accounts were read from: `accounts file PATH` or `--organization`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Every account, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Never true for a parsed file (an empty one is refused).
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// The account called `name`; `used_by` (a run, an input file) is named when
    /// it is missing.
    pub fn get(&self, name: &str, used_by: &str) -> Result<&Account, AccountsError> {
        self.accounts
            .get(name)
            .ok_or_else(|| AccountsError::Missing {
                account: crate::ids::shorten(name),
                used_by: used_by.to_string(),
                origin: self.origin.clone(),
                known: self.names().join(", "),
            })
    }

    /// Checks that every name in `used` is an account of the file.
    pub fn require<'a>(
        &self,
        used: impl IntoIterator<Item = &'a str>,
        used_by: &str,
    ) -> Result<(), AccountsError> {
        for name in used {
            self.get(name, used_by)?;
        }
        Ok(())
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.accounts.keys().cloned().collect()
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Base => f.write_str("the base credentials"),
            Source::Role(role) => write!(f, "role {}", role.arn),
            Source::Profile(name) => write!(f, "tccli profile {name}"),
        }
    }
}

/// True when `name` may name an account: 1-64 of `[A-Za-z0-9_.-]`, not starting
/// with `-` or `.` (it becomes part of messages, reports and file names).
pub fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `(uin, role)` of `qcs::cam::uin/<digits>:roleName/<name>` or `...:role/<id>`.
fn role_arn_parts(arn: &str) -> Option<(&str, &str)> {
    let rest = arn.strip_prefix("qcs::cam::uin/")?;
    let (uin, role) = rest.split_once(':')?;
    let role = role
        .strip_prefix("roleName/")
        .or_else(|| role.strip_prefix("role/"))?;
    (!uin.is_empty() && uin.bytes().all(|b| b.is_ascii_digit()) && is_role_name(role))
        .then_some((uin, role))
}

fn is_role_name(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 128
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

fn is_session_name(name: &str) -> bool {
    (2..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

/// AssumeRole's lifetime: seconds as an integer, or a number with `s`, `m` or `h`
/// (`"2h"`, `"90m"`, `"3600s"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"2h\", \"90m\" or 3600"))?;
    let seconds = match unit.trim() {
        "" | "s" => Some(value),
        "m" => value.checked_mul(60),
        "h" => value.checked_mul(3600),
        other => {
            return Err(format!("unknown unit {other:?} in {text:?}: use s, m or h"));
        }
    };
    check_duration(seconds, text)
}

fn check_duration(seconds: Option<u64>, shown: &str) -> Result<Duration, String> {
    match seconds {
        Some(0) => Err(format!("{shown:?} must be more than 0")),
        Some(s) if s <= MAX_DURATION.as_secs() => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "{shown:?} is longer than AssumeRole allows ({} s, 12 h)",
            MAX_DURATION.as_secs()
        )),
    }
}

const ACCOUNT_KEYS: [&str; 6] = [
    "role_arn",
    "session_name",
    "duration",
    "external_id",
    "profile",
    "regions",
];

fn parse_account(path: &Path, name: &str, body: &toml::Value) -> Result<Account, AccountsError> {
    let bad = |detail: String| AccountsError::BadAccount {
        path: path.to_path_buf(),
        account: crate::ids::shorten(name),
        detail,
    };
    if !is_account_name(name) {
        return Err(bad(format!(
            "the name must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . - \
             (not starting with - or .)"
        )));
    }
    let toml::Value::Table(table) = body else {
        return Err(bad("must be a table".to_string()));
    };
    for key in table.keys() {
        if !ACCOUNT_KEYS.contains(&key.as_str()) {
            return Err(bad(format!(
                "unknown key {:?} (known: {})",
                crate::ids::shorten(key),
                ACCOUNT_KEYS.join(", ")
            )));
        }
    }
    let string = |key: &str| -> Result<Option<String>, AccountsError> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if s.trim().is_empty() => {
                Err(bad(format!("{key} is empty")))
            }
            Some(toml::Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(bad(format!("{key} must be a string"))),
        }
    };
    let role_arn = string("role_arn")?;
    let profile = string("profile")?;
    let session_name = string("session_name")?;
    let external_id = string("external_id")?;
    let duration = match table.get("duration") {
        None => None,
        Some(toml::Value::String(s)) => {
            Some(parse_duration(s).map_err(|e| bad(format!("duration {e}")))?)
        }
        Some(toml::Value::Integer(n)) => Some(
            check_duration(u64::try_from(*n).ok(), &n.to_string())
                .map_err(|e| bad(format!("duration {e}")))?,
        ),
        Some(_) => {
            return Err(bad(
                "duration must be seconds or a string such as \"2h\"".to_string()
            ));
        }
    };
    let regions = match table.get("regions") {
        None => None,
        Some(toml::Value::Array(items)) => {
            let mut regions = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    toml::Value::String(r) if crate::ids::is_region(r.trim()) => {
                        regions.push(r.trim().to_string())
                    }
                    toml::Value::String(r) => {
                        return Err(bad(format!(
                            "regions: {:?} is not a region name such as ap-guangzhou",
                            crate::ids::shorten(r)
                        )));
                    }
                    _ => return Err(bad("regions must be strings".to_string())),
                }
            }
            if regions.is_empty() {
                return Err(bad(
                    "regions is empty: leave it out to walk every region".to_string()
                ));
            }
            regions.sort();
            regions.dedup();
            Some(regions)
        }
        Some(_) => {
            return Err(bad(
                "regions must be a list such as [\"ap-guangzhou\"]".to_string()
            ));
        }
    };
    let source = match (role_arn, profile) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "both role_arn and profile: an account has one source of credentials".to_string(),
            ));
        }
        (Some(arn), None) => {
            if role_arn_parts(&arn).is_none() {
                return Err(bad(format!(
                    "role_arn {:?} is not qcs::cam::uin/<uin>:roleName/<name>",
                    crate::ids::shorten(&arn)
                )));
            }
            let session_name = session_name.unwrap_or_else(|| DEFAULT_SESSION_NAME.to_string());
            if !is_session_name(&session_name) {
                return Err(bad(format!(
                    "session_name {:?} must be 2-128 characters of A-Z a-z 0-9 _ + = , . @ -",
                    crate::ids::shorten(&session_name)
                )));
            }
            Source::Role(Role {
                arn,
                session_name,
                duration: duration.unwrap_or(DEFAULT_DURATION),
                external_id: external_id.map(Secret::new),
            })
        }
        (None, profile) => {
            for (key, given) in [
                ("session_name", session_name.is_some()),
                ("duration", duration.is_some()),
                ("external_id", external_id.is_some()),
            ] {
                if given {
                    return Err(bad(format!("{key} is given without role_arn")));
                }
            }
            match profile {
                Some(p) if p.contains(['/', '\\']) || p.starts_with('.') => {
                    return Err(bad(format!(
                        "profile {:?} is not a plain name",
                        crate::ids::shorten(&p)
                    )));
                }
                Some(p) => Source::Profile(p),
                None => Source::Base,
            }
        }
    };
    Ok(Account {
        name: name.to_string(),
        source,
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[accounts.main]                 # no source: the base credentials
[accounts.prod-eu]
role_arn = "qcs::cam::uin/200000000002:roleName/KeyRotation"
session_name = "keyfleet"
duration = "2h"
external_id = "shh-external"
regions = ["eu-frankfurt"]
[accounts.dev]
profile = "dev"
"#;

    fn parse(text: &str) -> Result<Accounts, AccountsError> {
        Accounts::parse(Path::new("/etc/accounts.toml"), text)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_issue_example_parses_into_three_typed_accounts() {
        let accounts = parse(EXAMPLE).unwrap();
        assert_eq!(accounts.names(), ["dev", "main", "prod-eu"]);
        assert_eq!(accounts.get("main", "t").unwrap().source, Source::Base);
        assert_eq!(
            accounts.get("dev", "t").unwrap().source,
            Source::Profile("dev".into())
        );
        let prod = accounts.get("prod-eu", "t").unwrap();
        let Source::Role(role) = &prod.source else {
            panic!("{prod:?}")
        };
        assert_eq!(role.arn, "qcs::cam::uin/200000000002:roleName/KeyRotation");
        assert_eq!(role.owner_uin(), Some("200000000002"));
        assert_eq!(role.session_name, "keyfleet");
        assert_eq!(role.duration, Duration::from_secs(7200));
        assert_eq!(
            role.external_id.as_ref().map(Secret::expose),
            Some("shh-external")
        );
        assert_eq!(
            prod.regions.as_deref(),
            Some(&["eu-frankfurt".to_string()][..])
        );
        // The external id never shows, not even through Debug.
        assert!(!format!("{accounts:?}").contains("shh-external"));
    }

    #[test]
    fn defaults_of_a_role() {
        let accounts =
            parse("[accounts.a]\nrole_arn = \"qcs::cam::uin/1:role/4611686018427397919\"\n")
                .unwrap();
        let Source::Role(role) = &accounts.get("a", "t").unwrap().source else {
            panic!()
        };
        assert_eq!(role.session_name, DEFAULT_SESSION_NAME);
        assert_eq!(role.duration, DEFAULT_DURATION);
        assert_eq!(role.external_id, None);
    }

    #[test]
    fn an_unknown_key_names_the_file_the_table_and_the_key() {
        let err =
            error("[accounts.prod]\nrole_arn = \"qcs::cam::uin/2:roleName/R\"\nrgions = []\n");
        assert!(err.contains("/etc/accounts.toml"), "{err}");
        assert!(err.contains("[accounts.prod]"), "{err}");
        assert!(err.contains("unknown key \"rgions\""), "{err}");
        let err = error("[account.prod]\n");
        assert!(err.contains("unknown top-level key \"account\""), "{err}");
    }

    #[test]
    fn two_sources_in_one_table_are_refused() {
        let err =
            error("[accounts.x]\nrole_arn = \"qcs::cam::uin/2:roleName/R\"\nprofile = \"dev\"\n");
        assert!(err.contains("[accounts.x]"), "{err}");
        assert!(err.contains("both role_arn and profile"), "{err}");
    }

    #[test]
    fn durations_past_twelve_hours_or_zero_are_refused() {
        for bad in ["\"13h\"", "43201", "\"0s\"", "-5", "\"2d\"", "\"soon\""] {
            let err = error(&format!(
                "[accounts.x]\nrole_arn = \"qcs::cam::uin/2:roleName/R\"\nduration = {bad}\n"
            ));
            assert!(err.contains("[accounts.x]: duration"), "{bad}: {err}");
        }
        for (good, secs) in [("\"12h\"", 43_200), ("900", 900), ("\"90m\"", 5400)] {
            let accounts = parse(&format!(
                "[accounts.x]\nrole_arn = \"qcs::cam::uin/2:roleName/R\"\nduration = {good}\n"
            ))
            .unwrap();
            let Source::Role(role) = &accounts.get("x", "t").unwrap().source else {
                panic!()
            };
            assert_eq!(role.duration, Duration::from_secs(secs), "{good}");
        }
    }

    #[test]
    fn role_options_without_a_role_and_bad_values_are_refused() {
        let err = error("[accounts.x]\nsession_name = \"s1\"\n");
        assert!(
            err.contains("session_name is given without role_arn"),
            "{err}"
        );
        let err = error("[accounts.x]\nexternal_id = \"shh\"\n");
        assert!(!err.contains("shh"), "{err}");
        let err = error("[accounts.x]\nrole_arn = \"arn:aws:iam::1:role/R\"\n");
        assert!(err.contains("not qcs::cam::uin"), "{err}");
        let err = error("[accounts.x]\nregions = [\"Mars\"]\n");
        assert!(err.contains("not a region name"), "{err}");
        let err = error("[accounts.x]\nprofile = \"../x\"\n");
        assert!(err.contains("not a plain name"), "{err}");
        let err = error("[accounts.\"bad name\"]\n");
        assert!(err.contains("the name must be"), "{err}");
        let err = error("");
        assert!(err.contains("no account"), "{err}");
    }

    #[test]
    fn broken_toml_names_a_line_and_quotes_no_value() {
        let err =
            error("[accounts.x]\nrole_arn = \"qcs::cam::uin/2:roleName/R\"\nexternal_id = \"sec\n");
        assert!(err.contains("/etc/accounts.toml: line 3"), "{err}");
        assert!(!err.contains("sec\""), "{err}");
    }

    #[test]
    fn a_name_the_file_lacks_is_an_error_naming_the_user_and_the_file() {
        let accounts = parse(EXAMPLE).unwrap();
        let err = accounts
            .require(["main", "staging"], "run 7")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"staging\" is used by run 7"), "{err}");
        assert!(err.contains("/etc/accounts.toml"), "{err}");
        assert!(err.contains("dev, main, prod-eu"), "{err}");
    }

    #[test]
    fn organization_members_become_roles_named_by_uin() {
        let members = [
            Member {
                uin: "200000000002".into(),
                name: "prod".into(),
            },
            Member {
                uin: "200000000003".into(),
                name: "dev".into(),
            },
        ];
        let accounts = Accounts::from_members(&members, DEFAULT_MEMBER_ROLE).unwrap();
        assert_eq!(accounts.names(), ["200000000002", "200000000003"]);
        let Source::Role(role) = &accounts.get("200000000003", "t").unwrap().source else {
            panic!()
        };
        assert_eq!(
            role.arn,
            "qcs::cam::uin/200000000003:roleName/OrganizationAccessControlRole"
        );
        assert!(Accounts::from_members(&members, "bad role").is_err());
        assert!(Accounts::from_members(&[], DEFAULT_MEMBER_ROLE).is_err());
    }
}
