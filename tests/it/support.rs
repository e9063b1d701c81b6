//! Shared fixtures for the integration tests: temp databases, the binary's path.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `keyfleet` binary built for these tests.
pub fn keyfleet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keyfleet"))
}

/// A fresh temporary directory with a database path inside it.
pub struct TempDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempDb {
    pub fn new() -> TempDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keyfleet.db");
        TempDb { dir, path }
    }
}
