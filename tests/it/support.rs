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
        self.command_at(&self.sim.endpoint(), args)
    }

    /// The same with another `--endpoint` (a `{region}` template, say).
    pub fn command_at(&self, endpoint: &str, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(keyfleet_bin());
        command
            .arg("--db")
            .arg(&self.db)
            .arg("--endpoint")
            .arg(endpoint)
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

/// A [`keyfleet::api::CvmClient`] for the simulator at `sim`, with its test credentials
/// and a 10 s request timeout.
pub fn sim_client(sim: &keyfleet::sim::SimHandle) -> keyfleet::api::CvmClient {
    let credentials = keyfleet::credentials::Credentials {
        secret_id: keyfleet::sim::TEST_SECRET_ID.to_string(),
        secret_key: keyfleet::secret::Secret::new(keyfleet::sim::TEST_SECRET_KEY),
        token: None,
        source: "test".to_string(),
    };
    let mut config = keyfleet::api::ClientConfig::new(sim.endpoint(), credentials);
    config.request_timeout = std::time::Duration::from_secs(10);
    keyfleet::api::CvmClient::new(config).expect("client for the simulator")
}

/// Instance ids `ins-` + 8 hex digits, distinct per `n`.
pub fn ins(n: usize) -> String {
    format!("ins-{n:08x}")
}

/// Key ids `skey-` + 8 hex digits, distinct per `n`.
pub fn key(n: usize) -> String {
    format!("skey-{n:08x}")
}

/// Environment variables that would make a test depend on the machine it runs on.
const AMBIENT_ENV: [&str; 9] = [
    "KEYFLEET_DB",
    "KEYFLEET_ENDPOINT",
    "TENCENTCLOUD_SECRET_ID",
    "TENCENTCLOUD_SECRET_KEY",
    "TENCENTCLOUD_TOKEN",
    "TENCENTCLOUD_REGION",
    "TCCLI_PROFILE",
    "RUST_LOG",
    "KEYFLEET_SIM_SECRET_KEY",
];

/// One invocation of the binary, built up and then run with a time limit.
pub struct Cmd {
    command: std::process::Command,
    stdin: Option<Vec<u8>>,
    timeout: std::time::Duration,
}

/// What a finished invocation left behind.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: std::time::Duration,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout_text(),
                self.stderr_text()
            )
        })
    }
}

/// A process started by [`Cmd::spawn`], still running.
pub struct Running {
    child: std::process::Child,
    started: std::time::Instant,
    timeout: std::time::Duration,
    readers: Vec<std::thread::JoinHandle<Vec<u8>>>,
    label: String,
}

impl Cmd {
    /// `keyfleet ARGS...`, with the machine's keyfleet/Tencent settings and HOME removed, and a 20 s limit.
    pub fn new<I, S>(args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = std::process::Command::new(keyfleet_bin());
        command.args(args);
        for name in AMBIENT_ENV {
            command.env_remove(name);
        }
        // No real ~/.tccli profile may lend its region or credentials; tests that want a HOME set one.
        command.env("HOME", "/nonexistent/keyfleet-test-home");
        Cmd {
            command,
            stdin: None,
            timeout: std::time::Duration::from_secs(20),
        }
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.command.env(name, value);
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<std::path::Path>) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn timeout(mut self, timeout: std::time::Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    pub fn spawn(mut self) -> Running {
        use std::io::{Read, Write};
        use std::process::Stdio;
        let label = format!("{:?}", self.command);
        self.command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = std::time::Instant::now();
        let mut child = self.command.spawn().expect("start keyfleet");
        if let (Some(bytes), Some(mut pipe)) = (self.stdin.take(), child.stdin.take()) {
            // A process that exits early closes the pipe: that broken pipe is not the test's failure.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let readers = vec![
            drain(Box::new(child.stdout.take().expect("stdout"))),
            drain(Box::new(child.stderr.take().expect("stderr"))),
        ];
        Running {
            child,
            started,
            timeout: self.timeout,
            readers,
            label,
        }
    }

    /// Runs to the end; see [`Running::wait`].
    pub fn run(self) -> Output {
        self.spawn().wait()
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit, killing the process and failing the test past the time limit;
    /// fails the test too if the process panicked.
    pub fn wait(mut self) -> Output {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for keyfleet") {
                break status;
            }
            if self.started.elapsed() > self.timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.readers.pop().map(|r| r.join().unwrap_or_default());
                panic!(
                    "{} did not finish within {:?}; stderr:\n{}",
                    self.label,
                    self.timeout,
                    String::from_utf8_lossy(&stderr.unwrap_or_default())
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        let mut outputs = self
            .readers
            .into_iter()
            .map(|r| r.join().unwrap_or_default());
        let output = Output {
            code: status.code(),
            stdout: outputs.next().unwrap_or_default(),
            stderr: outputs.next().unwrap_or_default(),
            elapsed,
        };
        let stderr = output.stderr_text();
        assert!(
            !stderr.contains("panicked"),
            "{} panicked:\n{stderr}",
            self.label
        );
        output
    }
}

/// A run's reported outcomes as the simulator's audit takes them (its own row type).
pub fn audit_rows(
    outcomes: Vec<keyfleet::store::queue::PairOutcome>,
) -> Vec<keyfleet::sim::audit::PairOutcome> {
    outcomes
        .into_iter()
        .map(|o| keyfleet::sim::audit::PairOutcome {
            region: o.region,
            instance_id: o.instance_id,
            key_id: o.key_id,
            status: o.status,
            request_id: o.request_id,
            error_code: o.error_code,
        })
        .collect()
}
