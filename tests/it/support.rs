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

/// A simulator on 127.0.0.1 and the `keyfleet` binary pointed at it, with a
/// private HOME (so no real profile is ever read) and a temp database.
pub struct Rehearsal {
    pub sim: keyfleet::sim::SimHandle,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

impl Rehearsal {
    pub async fn start(config: keyfleet::sim::SimConfig, fleet: keyfleet::sim::Fleet) -> Rehearsal {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let sim = keyfleet::sim::start(listener, config, fleet)
            .await
            .expect("start simulator");
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("keyfleet.db");
        Rehearsal { sim, dir, db }
    }

    /// Writes `rows` (instance, key, region) as a CSV input and returns its path.
    pub fn input(&self, name: &str, rows: &[(String, String, String)]) -> PathBuf {
        let mut csv = String::from("instance_id,key_id,region\n");
        for (instance, key, region) in rows {
            csv.push_str(&format!("{instance},{key},{region}\n"));
        }
        let path = self.dir.path().join(name);
        std::fs::write(&path, csv).expect("write input");
        path
    }

    /// `keyfleet --db DB --endpoint SIM ARGS...` with the simulator's test credentials.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(keyfleet_bin());
        command
            .arg("--db")
            .arg(&self.db)
            .arg("--endpoint")
            .arg(self.sim.endpoint())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("TENCENTCLOUD_SECRET_ID", keyfleet::sim::TEST_SECRET_ID)
            .env("TENCENTCLOUD_SECRET_KEY", keyfleet::sim::TEST_SECRET_KEY)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs a command to completion within `limit`, returning (exit code, stdout, stderr).
    pub async fn run(&self, args: &[&str], limit: std::time::Duration) -> (i32, String, String) {
        let output = tokio::time::timeout(limit, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("keyfleet {args:?} did not finish within {limit:?}"))
            .expect("run keyfleet");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "keyfleet panicked:\n{stderr}");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        )
    }

    /// The store, opened read-write alongside (WAL lets a reader in while a run writes).
    pub async fn store(&self) -> keyfleet::store::Store {
        keyfleet::store::Store::open(&self.db)
            .await
            .expect("open store")
    }
}

/// Instance ids `ins-` + 8 hex digits, distinct per `n`.
pub fn ins(n: usize) -> String {
    format!("ins-{n:08x}")
}

/// Key ids `skey-` + 8 hex digits, distinct per `n`.
pub fn key(n: usize) -> String {
    format!("skey-{n:08x}")
}
