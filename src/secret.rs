//! A wrapper for secret strings that never shows its value by accident, and
//! overwrites it when dropped; and the guard that keeps secrets out of core dumps.

use std::fmt;

use zeroize::Zeroize;

/// A secret (SecretKey, session token). `Debug` and `Display` print `***`, so a
/// secret cannot leak through a log line, an error or a `{:?}` of a config struct.
/// The value is reachable only through [`Secret::expose`], which callers use
/// exactly where the bytes are needed (signing, the token header). Dropping it
/// zeroes its bytes (`zeroize`), so a freed SecretKey does not linger in the heap.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Makes this process non-dumpable (Linux `prctl(PR_SET_DUMPABLE, 0)`): no core
/// file, and no other process of the same user can ptrace it or read its memory
/// through `/proc`. Called by the CLI before it reads credentials. Elsewhere on Unix
/// the core size limit is set to zero instead.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's value. Use only to sign or to send it; never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_its_value() {
        let secret = Secret::new("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(***)");
        assert_eq!(secret.expose(), "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE");
    }

    #[test]
    fn dropping_zeroes_the_bytes() {
        // What Drop runs, observed on a value that stays alive (reading freed memory
        // would be undefined behaviour).
        let mut secret = Secret::new("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE");
        let (ptr, len) = (secret.0.as_ptr(), secret.0.len());
        secret.0.zeroize();
        assert!(secret.0.is_empty());
        // SAFETY: zeroize keeps the allocation (it only clears the length), so the
        // `len` bytes at `ptr` are still owned by `secret`.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        assert!(bytes.iter().all(|&b| b == 0), "{bytes:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_becomes_non_dumpable() {
        forbid_core_dumps().unwrap();
        // SAFETY: PR_GET_DUMPABLE takes no argument.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
    }
}
