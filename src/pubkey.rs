//! OpenSSH public keys: read from a `.pub` file or an `authorized_keys` line (options
//! prefix allowed), compared by type and body only (the comment is anything; the API
//! replaces it by the key id), and fingerprinted as `ssh-keygen -l` does:
//! `SHA256:` and the unpadded base64 of the SHA-256 of the key's wire-format blob.
//!
//! Nothing here echoes the input back in an error beyond a short, escaped token, and
//! a private key given by mistake is refused without a byte of it shown.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// The key types OpenSSH writes in a public key line.
pub const KEY_TYPES: [&str; 8] = [
    "ssh-rsa",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-dss",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The prefix of the fingerprints keyfleet reads and prints.
pub const FINGERPRINT_PREFIX: &str = "SHA256:";

/// A public key: its type and its wire-format blob (the base64 body, decoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    key_type: String,
    blob: Vec<u8>,
}

/// A SHA-256 fingerprint of a public key's blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// Why text is not one OpenSSH public key, or not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("there is no public key in it (an empty file, or only comments)")]
    Empty,
    #[error(
        "it is a private key: give the public half (the .pub file, or `ssh-keygen -y -f KEY`), \
         and keep the private key where it is"
    )]
    PrivateKey,
    #[error("it holds {0} public keys (lines {1}): give one")]
    SeveralKeys(usize, String),
    #[error(
        "line {line}: no OpenSSH key type (ssh-rsa, ssh-ed25519, ecdsa-sha2-nistp256, ...) found"
    )]
    NoKeyType { line: usize },
    #[error("line {line}: the {key_type} key has no base64 body after its type")]
    NoBody { line: usize, key_type: String },
    #[error("line {line}: the {key_type} key's body is not base64")]
    BadBase64 { line: usize, key_type: String },
    #[error("line {line}: the body is not a {key_type} key (it names {inner:?})")]
    TypeMismatch {
        line: usize,
        key_type: String,
        inner: String,
    },
    #[error(
        "{0:?} is not a SHA256 fingerprint: give SHA256: followed by 43 base64 characters, as `ssh-keygen -lf KEY.pub` prints"
    )]
    BadFingerprint(String),
}

impl PublicKey {
    /// The one public key in `text` (a `.pub` file or an `authorized_keys` file or
    /// line); blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<PublicKey, PublicKeyError> {
        if text.contains("PRIVATE KEY-----") {
            return Err(PublicKeyError::PrivateKey);
        }
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(n, l)| (n + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect();
        match lines[..] {
            [] => Err(PublicKeyError::Empty),
            [(line, text)] => PublicKey::parse_line(line, text),
            _ => Err(PublicKeyError::SeveralKeys(
                lines.len(),
                lines
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// One line: `[options] type base64 [comment]`.
    fn parse_line(line: usize, text: &str) -> Result<PublicKey, PublicKeyError> {
        let rest = match first_word(text) {
            word if KEY_TYPES.contains(&word) => text,
            _ => skip_options(text),
        };
        let mut words = rest.split_whitespace();
        let key_type = words
            .next()
            .filter(|w| KEY_TYPES.contains(w))
            .ok_or(PublicKeyError::NoKeyType { line })?
            .to_string();
        let body = words.next().ok_or_else(|| PublicKeyError::NoBody {
            line,
            key_type: key_type.clone(),
        })?;
        let blob = STANDARD
            .decode(body)
            .map_err(|_| PublicKeyError::BadBase64 {
                line,
                key_type: key_type.clone(),
            })?;
        // The blob starts with the type again, as an SSH string (u32 length, bytes).
        let inner = ssh_string(&blob).unwrap_or_default();
        if inner != key_type.as_bytes() {
            return Err(PublicKeyError::TypeMismatch {
                line,
                key_type,
                inner: crate::ids::shorten(&String::from_utf8_lossy(inner)),
            });
        }
        Ok(PublicKey { key_type, blob })
    }

    /// A key from its type and blob (the simulator derives keys this way).
    pub fn from_blob(key_type: &str, blob: Vec<u8>) -> PublicKey {
        PublicKey {
            key_type: key_type.to_string(),
            blob,
        }
    }

    /// `ssh-ed25519`, `ssh-rsa`, ...
    pub fn key_type(&self) -> &str {
        &self.key_type
    }

    /// The base64 body, as it appears in the key's line.
    pub fn body(&self) -> String {
        STANDARD.encode(&self.blob)
    }

    /// `type body comment` (or `type body` without a comment).
    pub fn to_openssh(&self, comment: &str) -> String {
        if comment.is_empty() {
            format!("{} {}", self.key_type, self.body())
        } else {
            format!("{} {} {comment}", self.key_type, self.body())
        }
    }

    /// The SHA-256 fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(Sha256::digest(&self.blob).into())
    }
}

impl Fingerprint {
    /// Reads `SHA256:` followed by the unpadded (or padded) base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Fingerprint, PublicKeyError> {
        let bad = || PublicKeyError::BadFingerprint(crate::ids::shorten(text.trim()));
        let encoded = text
            .trim()
            .strip_prefix(FINGERPRINT_PREFIX)
            .ok_or_else(bad)?
            .trim_end_matches('=');
        let bytes = STANDARD_NO_PAD.decode(encoded).map_err(|_| bad())?;
        let digest: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Fingerprint(digest))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FINGERPRINT_PREFIX}{}", STANDARD_NO_PAD.encode(self.0))
    }
}

/// What a key pair is matched against: the public key itself, or its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMatcher {
    Key(PublicKey),
    Fingerprint(Fingerprint),
}

impl KeyMatcher {
    /// The fingerprint looked for.
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            KeyMatcher::Key(key) => key.fingerprint(),
            KeyMatcher::Fingerprint(fingerprint) => *fingerprint,
        }
    }

    /// True when `public_key` (a line as the API returns it: the comment is the key id)
    /// is the key looked for: same type and body, or same fingerprint. Text that is not
    /// a public key matches nothing.
    pub fn matches(&self, public_key: &str) -> bool {
        let Ok(candidate) = PublicKey::parse(public_key) else {
            return false;
        };
        match self {
            KeyMatcher::Key(key) => *key == candidate,
            KeyMatcher::Fingerprint(fingerprint) => candidate.fingerprint() == *fingerprint,
        }
    }
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or_default()
}

/// The text after an `authorized_keys` options field (`from="a b",no-pty ...`): the
/// field ends at the first blank outside double quotes.
fn skip_options(text: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return text[at..].trim_start(),
            _ => {}
        }
    }
    ""
}

/// The first SSH string of a blob (u32 big-endian length, then the bytes).
fn ssh_string(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    blob.get(4..4usize.checked_add(len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ed25519 public key (generated for these tests; its private half was never kept).
    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdxVnQ5k7mFM0oNdFTQVq3TVqYmyJ6bIj4lUq0BBXJ0";

    #[test]
    fn lines_with_comments_and_options_are_the_same_key() {
        let plain = PublicKey::parse(ED).unwrap();
        assert_eq!(plain.key_type(), "ssh-ed25519");
        for text in [
            format!("{ED} alice@laptop"),
            format!("{ED} skey-1q8j7b93\n"),
            format!("# deploy key\n\n{ED} comment with spaces\n"),
            format!("no-pty,from=\"10.0.0.1 10.0.0.2\",command=\"echo \\\"hi there\\\"\" {ED} x"),
            format!("restrict {ED}"),
        ] {
            assert_eq!(PublicKey::parse(&text).unwrap(), plain, "{text}");
        }
        assert_eq!(plain.to_openssh(""), ED);
        assert!(KeyMatcher::Key(plain.clone()).matches(&format!("{ED} skey-00000001")));
        assert!(!KeyMatcher::Key(plain).matches("ssh-rsa AAAA skey-00000001"));
    }

    #[test]
    fn fingerprints_are_ssh_keygens() {
        let key = PublicKey::parse(ED).unwrap();
        let shown = key.fingerprint().to_string();
        assert!(
            shown.starts_with("SHA256:") && shown.len() == 7 + 43,
            "{shown}"
        );
        assert_eq!(Fingerprint::parse(&shown).unwrap(), key.fingerprint());
        assert_eq!(
            Fingerprint::parse(&format!("{shown}=")).unwrap(),
            key.fingerprint()
        );
        assert!(KeyMatcher::Fingerprint(key.fingerprint()).matches(ED));
        for bad in ["", "MD5:aa:bb", "SHA256:", "SHA256:abc", "sha256:xyz"] {
            assert!(
                matches!(
                    Fingerprint::parse(bad),
                    Err(PublicKeyError::BadFingerprint(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn what_is_not_one_public_key_is_named() {
        let err = |text: &str| PublicKey::parse(text).unwrap_err();
        assert_eq!(err(""), PublicKeyError::Empty);
        assert_eq!(err("# nothing\n"), PublicKeyError::Empty);
        assert_eq!(
            err("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"),
            PublicKeyError::PrivateKey
        );
        assert!(!PublicKeyError::PrivateKey.to_string().contains("b3Bl"));
        assert!(matches!(
            err(&format!("{ED}\n{ED}\n")),
            PublicKeyError::SeveralKeys(2, _)
        ));
        assert_eq!(err("hello world"), PublicKeyError::NoKeyType { line: 1 });
        assert!(matches!(err("ssh-rsa"), PublicKeyError::NoBody { .. }));
        assert!(matches!(
            err("ssh-rsa !!!!"),
            PublicKeyError::BadBase64 { .. }
        ));
        // An ed25519 body under an rsa type.
        let body = ED.split(' ').nth(1).unwrap();
        assert!(matches!(
            err(&format!("ssh-rsa {body}")),
            PublicKeyError::TypeMismatch { .. }
        ));
    }
}
